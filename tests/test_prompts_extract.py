"""Answer extraction from free text: a table of the forms models write, and the ambiguous ones."""

from __future__ import annotations

import pytest

from prompts.extract import extract_answer
from tests.testing_utils import read_fixture_expected, read_fixture_records

OPTIONS = {"A": "Insulinoma", "B": "Factitious disorder", "C": "Insulin", "D": "Somatization disorder"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("C", "C"),
        ("C.", "C"),
        ("(B)", "B"),
        ("B) Factitious disorder", "B"),
        ("D: Somatization disorder", "D"),
        ("Answer: D", "D"),
        ("**Answer:** B", "B"),
        ("The answer is (A).", "A"),
        ("The answer is: D", "D"),
        ("The correct answer is B, not A.", "B"),
        ("Option A is wrong. The answer is C", "C"),
        ("The correct option is D because ...", "D"),
        ("The answer is A. On reflection, the answer is B.", None),  # contradicts itself
        ("The answer is E", None),  # not an option
        ("factitious disorder", "B"),
        ("I think it is an insulinoma.", "A"),  # "Insulin" inside "Insulinoma" does not compete
        ("Insulin", "C"),
        ("Either insulinoma or factitious disorder.", None),
        ("A 35-year-old woman", None),  # the article, not a letter
        ("the answer is a tumour", None),
        ("", None),
        ("blah blah", None),
        ("A. Insulinoma\nB. Factitious disorder\nC. Insulin", None),  # the options copied back
        ("A. Insulinoma\nB. Factitious disorder\nAnswer: B", "B"),  # ... then an explicit answer
        ("A. Insulinoma", "A"),
        # A letter followed by another option's text commits to nothing (real SmolLM2 habit).
        ("B. Insulinoma", None),
        ("A. Insulin", None),  # exactly option C, though it starts A's text
        ("A. Insulin", None),
        ("C. Insulin", "C"),
        ("A. Insulinoma of the pancreas", "A"),  # its own text, continued
        ("B. Factitious", "B"),  # its own text, cut short
        ("B. A made-up diagnosis", "B"),  # matches no option: the letter stands
        ("The answer is B. Somatization disorder", None),
        ("The answer is D. Somatization disorder", "D"),
        ("D. Insulinoma type 2", None),  # another option's text, continued
    ],
)
def test_extraction_table(text, expected):
    assert extract_answer(text, OPTIONS) == expected


def test_short_options_match_whole_words_only():
    yes_no = {"A": "yes", "B": "no", "C": "maybe"}
    assert extract_answer("No.", yes_no) == "B"
    assert extract_answer("I do not know", yes_no) is None
    assert extract_answer("yes, or maybe", yes_no) is None


def test_stated_option_text_decides_over_a_worked_solution():
    """A worked solution mentions other options' numbers; the closing statement is the answer."""
    numbers = {"A": "75", "B": "85", "C": "715", "D": "8"}
    assert extract_answer("47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8. 47 + 38 = 85. The answer is 85.", numbers) == "B"
    assert extract_answer("The answer is 8.", numbers) == "D"  # a one-digit option, stated
    assert extract_answer("The answer is 85. The answer is 75.", numbers) is None
    assert extract_answer("75 or 85: the answer is 90.", numbers) is None  # states no option; mentions two
    assert extract_answer("The answer is Factitious disorder.", OPTIONS) == "B"
    assert extract_answer("Answer: insulin", OPTIONS) == "C"


def test_non_text_is_unparsed():
    assert extract_answer(None, OPTIONS) is None  # type: ignore[arg-type]


def test_real_smollm2_replies():
    """60 replies of the real SmolLM2-135M-Instruct to the eval prompt (make_answer_fixtures.py), with the
    letter each commits to read by hand (answer_expected.json). One reply is read differently by the
    option-text rule than by a person ("person" in the file): it is listed, and must stay the only one."""
    records = read_fixture_records("answer_outputs.jsonl")
    expected = read_fixture_expected("answer_expected.json")
    assert len(records) == 60 and set(expected) == {r["id"] for r in records}
    got = {r["id"]: extract_answer(r["completion"], r["options"]) for r in records}
    wrong = {i: (got[i], expected[i]["letter"], expected[i].get("note", "")) for i in got if got[i] != expected[i]["letter"]}
    assert not wrong, wrong
    assert [i for i, e in expected.items() if "person" in e and e["person"] != e["letter"]] == ["answer-medmcqa-2038"]
    # What the fixtures show: 13 of 60 replies commit to no single letter (most name one option's letter
    # with another option's text), and 1-shot replies follow the example's form ("The answer is C.").
    assert sum(v is None for v in got.values()) == 13
    assert all(got[r["id"]] is not None for r in records if r["kind"] == "answer1shot" and r["completion"].startswith("The answer is"))
