"""synth.generate: batching, rounds, ids, provenance and parse failures (scripted teacher replies)."""

from __future__ import annotations

import json

import pytest

from data.records import GeneratedItem, MCQItem
from prompts.parse import MCQDraft, parse_json_object
from synth.generate import (
    NodeBrief,
    SynthConfig,
    example_json,
    generate_items,
    generation_messages,
    item_id,
    plan_requests,
)
from tests.fixtures.scripted_engine import ScriptedEngine, user_text


def _seed(i: int, node: str, n_options: int = 4, key: str = "A", question: str | None = None) -> MCQItem:
    letters = "ABCDEFGHIJ"[:n_options]
    return MCQItem(
        id=f"seed-{node}-{i}",
        question=question or f"Seed question {i} about {node}?",
        options={k: f"{node} option {k}{i}" for k in letters},
        answer_idx=key,
        ability_path=["root", node],
    )


NODES = {
    "root/anatomy": NodeBrief("root/anatomy", "anatomy", "Gross anatomy", ("confuses nerves", "mixes arteries"), ("root", "anatomy")),
    "root/virology": NodeBrief("root/virology", "virology", "", ("confuses DNA and RNA viruses",), ("root", "virology")),
}
EXEMPLARS = {
    "root/anatomy": [_seed(0, "anatomy"), _seed(1, "anatomy"), _seed(2, "anatomy", n_options=3)],
    "root/virology": [_seed(0, "virology")],
}


def _draft_reply(prompt) -> str:
    """A well-formed reply continuing the prefill, about the node named in the prompt."""
    topic = "virology" if "about virology" in user_text(prompt) else "anatomy"
    body = {
        "options": {"A": f"{topic} answer", "B": "wrong one", "C": "wrong two", "D": "wrong three"},
        "answer_idx": "A",
        "explanation": "Because.",
    }
    return f"New question on {topic}?\",\n" + json.dumps(body)[1:]


def test_one_batched_call_per_round_and_deterministic_ids():
    engine = ScriptedEngine(reply=_draft_reply, name="teacher-spec")
    config = SynthConfig(seed=7)
    result = generate_items(engine, {"root/anatomy": 3, "root/virology": 2}, NODES, EXEMPLARS, config, iteration=4)
    assert [c[0] for c in engine.calls] == ["generate"]
    _, prompts, params = engine.calls[0]
    assert len(prompts) == 5
    assert params.seed == 7 and params.temperature == config.temperature and params.top_p == config.top_p
    assert params.max_new_tokens == config.max_new_tokens
    assert params.json_schema["properties"]["answer_idx"]["enum"] == list("ABCD")
    assert [it.id for it in result.items] == [item_id(4, "root/anatomy", s) for s in range(3)] + [
        item_id(4, "root/virology", s) for s in range(2)
    ]
    assert item_id(4, "root/anatomy", 0).startswith("gen-4-") and item_id(4, "root/anatomy", 0) == item_id(4, "root/anatomy", 0)
    first = result.items[0]
    assert isinstance(first, GeneratedItem)
    assert first.question == "New question on anatomy?"
    assert (first.target_node, first.generator, first.seed) == ("root/anatomy", "teacher-spec", 7)
    assert first.ability_path == ["root", "anatomy"] and first.meta_info == "generated:anatomy"
    assert first.exemplar_ids == ["seed-anatomy-0"]
    assert result.rejected == []
    assert result.report["requested"] == 5 and result.report["parsed"] == 5 and result.report["parse_rate"] == 1.0


def test_failed_parses_are_rejected_records_and_only_they_are_retried():
    replies = iter(["no json at all", '{"oops": ', "Q?\", \"options\": [\"a\"], \"answer_idx\": \"A\"}"])

    def reply(prompt):
        # Round 1: the anatomy slot 0 answers well, the other three fail; round 2: all answer well.
        if "question 1 of 2" in user_text(prompt) and "anatomy" in user_text(prompt):
            return _draft_reply(prompt)
        try:
            return next(replies)
        except StopIteration:
            return _draft_reply(prompt)

    engine = ScriptedEngine(reply=reply)
    result = generate_items(engine, {"root/anatomy": 2, "root/virology": 2}, NODES, EXEMPLARS, SynthConfig(seed=3, rounds=2))
    assert [len(c[1]) for c in engine.calls] == [4, 3]  # round 2 re-asks only the failures
    assert [c[2].seed for c in engine.calls] == [3, 4]  # with the next seed
    assert len(result.items) == 4
    assert [r["stage"] for r in result.rejected] == ["parse"] * 3
    assert [r["code"] for r in result.rejected] == ["truncated", "truncated", "schema"]
    assert all(r["round"] == 1 and r["raw"].startswith('{\n  "question": "') for r in result.rejected)
    assert result.rejected[0]["id"] == item_id(0, "root/anatomy", 1)
    retried = {it.id: it.seed for it in result.items}
    assert retried[item_id(0, "root/anatomy", 0)] == 3 and retried[item_id(0, "root/anatomy", 1)] == 4
    assert result.report["failure_reasons"] == {"truncated": 2, "schema": 1}
    assert result.report["attempts"] == 7 and result.report["rounds"] == 2


def test_rounds_are_bounded_and_junk_never_raises():
    engine = ScriptedEngine(reply=lambda p: "I cannot write JSON {")
    result = generate_items(engine, {"root/virology": 2}, NODES, EXEMPLARS, SynthConfig(rounds=3))
    assert len(engine.calls) == 3
    assert result.items == [] and len(result.rejected) == 6
    assert result.report["per_node"]["root/virology"] == {"requested": 2, "parsed": 0, "failed_attempts": 6}


def test_greedy_decoding_is_not_retried():
    engine = ScriptedEngine(reply=lambda p: "junk")
    result = generate_items(engine, {"root/virology": 1}, NODES, EXEMPLARS, SynthConfig(rounds=3, temperature=0.0))
    assert len(engine.calls) == 1 and result.report["rounds"] == 1 and len(result.rejected) == 1


def test_a_draft_that_is_not_a_valid_mcq_is_a_parse_rejection():
    # Parses as JSON and fits MCQDraft, but the key is not an option: the MCQItem check rejects it.
    engine = ScriptedEngine(reply=lambda p: 'Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "F"}')
    result = generate_items(engine, {"root/virology": 1}, NODES, EXEMPLARS, SynthConfig(rounds=1))
    assert result.items == []
    assert result.rejected[0]["code"] == "schema" and "answer_idx" in result.rejected[0]["reason"]


def test_structured_decoding_engines_and_no_prefill():
    whole = json.dumps({"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "B", "explanation": ""})
    engine = ScriptedEngine(reply=lambda p: whole)
    with_prefill = generate_items(engine, {"root/virology": 1}, NODES, EXEMPLARS, SynthConfig())
    assert with_prefill.items[0].answer_idx == "B"
    without = generate_items(engine, {"root/virology": 1}, NODES, EXEMPLARS, SynthConfig(prefill=False))
    assert without.items[0].answer_idx == "B"
    assert engine.calls[-1][1][0][-1]["role"] == "user"  # no assistant prefix was sent


def test_prompts_show_node_diagnoses_and_one_valid_json_example():
    config = SynthConfig()
    requests = plan_requests({"root/anatomy": 3}, NODES, EXEMPLARS, config, iteration=0)
    texts = [generation_messages(r, config)[0]["content"] for r in requests]
    assert all("anatomy" in t and "Gross anatomy" in t for t in texts)
    # Exemplars and diagnoses rotate over slots, so the requests of one node differ.
    assert [r.exemplars[0].id for r in requests] == ["seed-anatomy-0", "seed-anatomy-1", "seed-anatomy-0"]
    assert texts[0].index("confuses nerves") < texts[0].index("mixes arteries")
    assert texts[1].index("mixes arteries") < texts[1].index("confuses nerves")
    assert len(set(texts)) == 3
    example = texts[0][texts[0].index("{") : texts[0].rindex("}") + 1]
    draft = parse_json_object(example, MCQDraft)
    assert draft.ok and draft.value.question == "Seed question 0 about anatomy?"
    messages = generation_messages(requests[0], config)
    assert messages[-1] == {"role": "assistant", "content": config.prefill_text}


def test_example_json_keeps_the_key_when_cutting_options():
    wide = _seed(5, "anatomy", n_options=10, key="H")
    draft = parse_json_object(example_json(wide, "ABCD"), MCQDraft).value
    assert list(draft.options) == list("ABCD")
    assert draft.options[draft.answer_idx] == wide.options["H"]
    assert "explanation" not in json.loads(example_json(wide, "ABCD", with_explanation=False))
    assert list(json.loads(example_json(wide, "ABCD", first=True))) == ["question", "explanation", "options", "answer_idx"]
    worked = wide.model_copy(update={"solution": "3 + 4 = 7. The answer is 7."})
    assert json.loads(example_json(worked, "ABCD", first=True))["explanation"] == "3 + 4 = 7. The answer is 7."


def test_explanation_first_implies_the_explanation_and_reaches_the_schema():
    config = SynthConfig(explanation_first=True)
    assert config.explanation
    engine = ScriptedEngine(reply=_draft_reply)
    generate_items(engine, {"root/anatomy": 1}, NODES, EXEMPLARS, config)
    schema = engine.calls[0][2].json_schema
    assert list(schema["properties"])[:2] == ["question", "explanation"]


def test_exemplar_choice_prefers_short_and_borrows_when_a_node_has_none():
    long_q = _seed(9, "anatomy", question="x" * 500)
    config = SynthConfig(max_exemplar_chars=100)
    reqs = plan_requests({"root/anatomy": 2}, NODES, {"root/anatomy": [long_q, _seed(1, "anatomy")]}, config, 0)
    assert {r.exemplars[0].id for r in reqs} == {"seed-anatomy-1"}
    reqs = plan_requests({"root/anatomy": 1, "root/virology": 1}, NODES, {"root/anatomy": EXEMPLARS["root/anatomy"]}, config, 0)
    assert reqs[1].exemplars[0].id == "seed-anatomy-0"  # virology has none of its own


@pytest.mark.parametrize(
    "allocation, exemplars, message",
    [
        ({"root/missing": 1}, EXEMPLARS, "no NodeBrief"),
        ({"root/anatomy": -1}, EXEMPLARS, "negative"),
        ({"root/anatomy": 1}, {"root/anatomy": [_seed(0, "anatomy", n_options=3)]}, "no seed exemplar"),
    ],
)
def test_bad_requests_fail_clearly(allocation, exemplars, message):
    with pytest.raises(ValueError, match=message):
        plan_requests(allocation, NODES, exemplars, SynthConfig(), 0)


def test_zero_allocation_makes_no_call():
    engine = ScriptedEngine(reply=_draft_reply)
    result = generate_items(engine, {"root/anatomy": 0}, NODES, EXEMPLARS)
    assert engine.calls == [] and result.items == [] and result.report["requested"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 4}, {"rounds": 0}, {"rounds": 11}, {"num_options": 3}, {"exemplars_per_item": 0}],
)
def test_config_range_checks(kwargs):
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)
