"""prompts.parse: strict JSON extraction on hand-made edge cases and on real SmolLM2 outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prompts import render
from prompts.parse import (
    CriticVerdict,
    MCQDraft,
    critic_json_schema,
    extract_json_object,
    mcq_json_schema,
    parse_completion,
    parse_json_object,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "smollm2_outputs"

GOOD = {"question": "Which vitamin is fat-soluble?", "options": {"A": "C", "B": "B12", "C": "D", "D": "B1"}, "answer_idx": "C", "explanation": "Vitamin D is fat-soluble."}
GOOD_TEXT = json.dumps(GOOD)


@pytest.mark.parametrize(
    "text, repairs",
    [
        (GOOD_TEXT, ()),
        (f"```json\n{GOOD_TEXT}\n```", ("fences",)),
        (f"```\n{json.dumps(GOOD, indent=2)}\n```\nHope this helps!", ("fences", "surrounding_text")),
        (f"Sure! Here is the question:\n{GOOD_TEXT}\nLet me know if you need more.", ("surrounding_text",)),
        (GOOD_TEXT[:-1] + ",}", ("trailing_commas",)),
        (GOOD_TEXT.replace('"B1"}', '"B1",}'), ("trailing_commas",)),
        (f"Format: [A-D] and {{answer}}. {GOOD_TEXT}", ("surrounding_text",)),  # bracketed prose skipped
    ],
)
def test_repairs_that_are_safe(text, repairs):
    result = parse_json_object(text, MCQDraft)
    assert result.ok, result.reason
    assert result.value == MCQDraft(**GOOD)
    assert result.repairs == repairs
    assert result.raw == text and result.code == ""


def test_braces_and_quotes_inside_strings_are_not_structure():
    obj = {**GOOD, "question": 'In {x} and "y}", which [one] is }{ fat-soluble?', "explanation": "a, } b ,]"}
    result = parse_json_object("noise " + json.dumps(obj) + " } trailing", MCQDraft)
    assert result.ok, result.reason
    assert result.value.question == obj["question"]
    assert result.value.explanation == "a, } b ,]"  # commas inside strings are never touched


@pytest.mark.parametrize(
    "text, code, reason_part",
    [
        ("", "no_json", "no JSON object"),
        ("I think the answer is B because of the liver.", "no_json", "no JSON object"),
        (GOOD_TEXT[:60], "truncated", "truncated"),
        ('{"question": "x", "options": {"A": "a", "B": "b"', "truncated", "truncated"),
        ('{"question": "a\\"b}', "truncated", "truncated"),  # an escaped quote keeps the string open
        ("[" + GOOD_TEXT + "]", "array", "array"),
        ('["A", "B"]', "array", "array"),
        ("{'question': 'single quotes'}", "invalid_json", "invalid JSON"),
        ('{question: "unquoted key"}', "invalid_json", "invalid JSON"),
        ('{"a": 1 /* comment */}', "invalid_json", "invalid JSON"),
        ('{"a": NaN}', "invalid_json", "NaN"),
        ('{"a": 1, "a": 2}', "invalid_json", "duplicate key"),
        ('{"a": [1, 2}', "mismatched", "mismatched bracket"),
        ('{"question": "x", "options": ["a", "b"], "answer_idx": "A"}', "schema", "options"),
        ('{"question": "x", "options": {"A": "a"}}', "schema", "answer_idx"),
        ('{"question": "x", "options": {"A": "a"}, "answer_idx": "A", "difficulty": 3}', "schema", "difficulty"),
    ],
)
def test_rejections_carry_a_code_and_reason(text, code, reason_part):
    result = parse_json_object(text, MCQDraft)
    assert not result.ok and result.value is None
    assert result.code == code
    assert reason_part in result.reason
    assert result.raw == text


def test_the_first_complete_object_wins():
    second = {**GOOD, "question": "second"}
    result = parse_json_object(GOOD_TEXT + "\n" + json.dumps(second), MCQDraft)
    assert result.value.question == GOOD["question"]


def test_invalid_object_is_skipped_whole_and_a_later_valid_one_is_taken():
    # The inner {"A": "a"} of the broken object must not be taken; the later complete object is.
    text = "{'broken': {\"A\": \"a\"}} then " + GOOD_TEXT
    obj, code, reason, repairs = extract_json_object(text)
    assert obj == GOOD and code == "" and reason == ""
    assert "surrounding_text" in repairs


def test_truncation_is_reported_even_after_other_junk():
    result = parse_json_object("{answer} " + GOOD_TEXT[:50], MCQDraft)
    assert result.code == "truncated"


def test_explanation_is_optional_but_extra_fields_are_not():
    no_expl = {k: v for k, v in GOOD.items() if k != "explanation"}
    assert parse_json_object(json.dumps(no_expl), MCQDraft).value.explanation == ""


def test_critic_verdict_schema():
    assert parse_json_object('{"verdict": "accept", "reason": "fine"}', CriticVerdict).value.verdict == "accept"
    bad = parse_json_object('{"verdict": "maybe", "reason": "unsure"}', CriticVerdict)
    assert bad.code == "schema" and "verdict" in bad.reason
    assert parse_json_object('{"verdict": "reject", "reason": ""}', CriticVerdict).code == "schema"


def test_parse_completion_joins_the_prefill_or_takes_a_structured_object():
    prefill = '{"question": "'
    tail = GOOD_TEXT[len(prefill) :]
    joined = parse_completion(tail, MCQDraft, prefill)
    assert joined.ok and joined.raw == GOOD_TEXT
    # An engine that enforces the JSON schema writes a whole object after the prefill.
    structured = parse_completion(GOOD_TEXT, MCQDraft, prefill)
    assert structured.ok and structured.value == MCQDraft(**GOOD)
    assert structured.raw == prefill + GOOD_TEXT
    failed = parse_completion("nothing useful", MCQDraft, prefill)
    assert not failed.ok and failed.code == "truncated"


def test_json_schemas_describe_what_the_parser_accepts():
    schema = mcq_json_schema("ABCDE")
    assert schema["properties"]["options"]["required"] == list("ABCDE")
    assert schema["properties"]["answer_idx"]["enum"] == list("ABCDE")
    assert "explanation" not in mcq_json_schema("ABCD", explanation=False)["properties"]
    assert critic_json_schema()["properties"]["verdict"]["enum"] == ["accept", "reject"]
    first = mcq_json_schema("ABCD", explanation=False, explanation_first=True)  # the decoder writes properties in order
    assert list(first["properties"]) == first["required"] == ["question", "explanation", "options", "answer_idx"]
    assert first["properties"]["explanation"]["minLength"] == 1


def test_generate_template_asks_for_the_work_first_when_told():
    common = dict(topic="addition", description="", domain="arithmetic", diagnoses=[], examples=["{}"], letters="ABCD", number=1, total=2)
    first = render("generate_mcq", **common, explanation=True, explanation_first=True)
    assert '"explanation" works the answer out first.' in first and "says why" not in first
    last = render("generate_mcq", **common, explanation=True, explanation_first=False)
    assert "works the answer out" not in last and '"explanation" says why' in last


def test_templates_render_with_every_variable():
    gen = render(
        "generate_mcq", topic="anatomy", description="Gross anatomy", domain="clinical medicine",
        diagnoses=["confuses nerves"], examples=[json.dumps(GOOD, indent=2)], letters="ABCD",
        number=2, total=3, explanation=True, explanation_first=False,
    )
    assert "anatomy" in gen and "confuses nerves" in gen and "question 2 of 3" in gen
    assert json.loads(gen[gen.index("{") : gen.rindex("}") + 1]) == GOOD  # the filled-in example is valid JSON
    crit = render("critique_mcq", question="Q?", options={"A": "a", "B": "b"}, answer_idx="B", explanation="why", domain="")
    assert "Key: B" in crit and "B. b" in crit and '"verdict"' in crit


# ------------------------------------------------------------------ real SmolLM2 outputs (fixtures)


def _fixture_records() -> list[dict]:
    records = []
    for path in sorted(FIXTURES.glob("outputs*.jsonl")):
        with path.open(encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def test_every_real_output_has_a_checked_expectation():
    records = _fixture_records()
    expected = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
    assert len(records) >= 16
    assert sorted(r["id"] for r in records) == sorted(expected)
    codes = {e["code"] for e in expected.values()}
    assert {"", "truncated", "schema", "no_json", "mismatched", "invalid_json"} <= codes  # real failures of each kind


@pytest.mark.parametrize("record", _fixture_records(), ids=lambda r: r["id"])
def test_real_smollm2_output_parses_as_checked(record):
    expected = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))[record["id"]]
    schema = MCQDraft if record["kind"] == "generate" else CriticVerdict
    result = parse_completion(record["completion"], schema, record["prefill"])
    assert (result.ok, result.code) == (expected["ok"], expected["code"]), result.reason
    if result.ok and "value" in expected:
        assert result.value.model_dump() == expected["value"]
