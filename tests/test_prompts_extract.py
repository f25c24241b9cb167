"""Answer extraction from free text: a table of the forms models write, and the ambiguous ones."""

from __future__ import annotations

import pytest

from prompts.extract import extract_answer

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
    ],
)
def test_extraction_table(text, expected):
    assert extract_answer(text, OPTIONS) == expected


def test_short_options_match_whole_words_only():
    yes_no = {"A": "yes", "B": "no", "C": "maybe"}
    assert extract_answer("No.", yes_no) == "B"
    assert extract_answer("I do not know", yes_no) is None
    assert extract_answer("yes, or maybe", yes_no) is None


def test_non_text_is_unparsed():
    assert extract_answer(None, OPTIONS) is None  # type: ignore[arg-type]
