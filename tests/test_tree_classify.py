"""Teacher classification of items without an ability path: level by level, batched, never off the list."""

from __future__ import annotations

import pytest

from data.records import MCQItem
from engines.base import EngineCapabilityError
from tests.fixtures.scripted_engine import ScriptedEngine, user_text
from tree import AbilityTree
from tests.testing_utils import read_fixture_expected, read_fixture_records
from data.records import read_items
from tree.classify import NONE_OF_THESE, ClassifyConfig, classify_items, read_topic


def make_tree() -> AbilityTree:
    t = AbilityTree("med")
    for node in ("med/cardiology/acute coronary syndrome", "med/cardiology/heart failure", "med/nephrology", "med/medqa"):
        t.add_ability(node)
    return t


def item(id_: str, question: str, meta: str = "pubmedqa:x") -> MCQItem:
    return MCQItem(id=id_, question=question, options={"A": "yes", "B": "no"}, answer_idx="A", meta_info=meta)


ITEMS = [
    item("q1", "Troponin rises 3 h after chest pain: what is the diagnosis?"),
    item("q2", "Creatinine doubles after contrast: what is the cause?"),
    item("q3", "Which statistic summarises a skewed distribution best?"),
    item("q4", "A swollen ankle and a third heart sound suggest what?"),
]


def pick(prompt) -> str:
    text = user_text(prompt)
    level_one = "Topics:\nA. cardiology" in text
    if "Troponin" in text:
        return "cardiology" if level_one else "acute coronary syndrome"
    if "Creatinine" in text:
        return "nephrology"
    if "third heart sound" in text:
        return "cardiology" if level_one else NONE_OF_THESE
    return NONE_OF_THESE


def test_items_descend_level_by_level_in_batched_calls():
    tree = make_tree()
    engine = ScriptedEngine(pick=pick)
    result = classify_items(engine, tree, ITEMS)
    assert result.nodes == {
        "q1": "med/cardiology/acute coronary syndrome",
        "q2": "med/nephrology",
        "q3": "med",  # none of the topics: stays at the root
        "q4": "med/cardiology",  # a cardiology question more general than both children
    }
    assert not result.fallbacks and result.calls == 2
    assert [len(prompts) for kind, prompts, _ in engine.calls] == [4, 2]  # all items, then the two in cardiology
    assert engine.calls[0][2] == tuple("ABCD")  # 3 children of the root + "none of these"


class NoScores(ScriptedEngine):
    """An endpoint without logprobs: classification must go through generated replies."""

    def choice_logprobs(self, prompts, choices):
        raise EngineCapabilityError("no logprobs over this endpoint")


def test_engines_without_letter_scores_classify_by_generation():
    def reply(prompt) -> str:
        text = user_text(prompt)
        if "Troponin" in text:
            return "Answer: A" if "Topics:\nA. cardiology" in text else "A. acute coronary syndrome"
        if "Creatinine" in text:
            return "The topic is nephrology."
        if "third heart sound" in text:
            return "A. cardiology\nB. medqa\nC. nephrology"  # copies the list back: commits to nothing
        return "I am not sure."

    tree = make_tree()
    engine = NoScores(reply=reply)
    result = classify_items(engine, tree, ITEMS)
    assert result.nodes == {"q1": "med/cardiology/acute coronary syndrome", "q2": "med/nephrology", "q3": "med", "q4": "med"}
    assert set(result.fallbacks) == {"q3", "q4"} and "names no listed topic of 'med'" in result.fallbacks["q4"]
    assert [kind for kind, _, _ in engine.calls] == ["generate", "generate"]  # still one batched call per level
    assert all(p[-1]["role"] == "user" for p in engine.calls[0][1]), "generate mode must not prefill 'The answer is'"
    assert engine.calls[0][2].temperature == 0.0


def test_fallback_goes_to_the_source_node_and_logprob_mode_is_strict():
    tree = make_tree()
    result = classify_items(NoScores(reply=lambda p: "??"), tree, [item("a", "x?", meta="medqa:usmle"), item("b", "y?", meta="other:1")])
    assert result.nodes == {"a": "med/medqa", "b": "med"}
    assert set(result.fallbacks) == {"a", "b"}
    with pytest.raises(EngineCapabilityError):
        classify_items(NoScores(reply=lambda p: "A"), tree, ITEMS, ClassifyConfig(mode="logprob"))
    with pytest.raises(ValueError, match="mode"):
        ClassifyConfig(mode="vote")


def test_real_smollm2_classification_replies(shared_data_dir):
    """Greedy SmolLM2-135M replies to the classification prompt (fixtures): most copy the topic list back,
    which must count as no answer (a leading "A." would otherwise read as topic A)."""
    records = [r for r in read_fixture_records("tree_outputs.jsonl") if r["kind"] == "classify"]
    expected = read_fixture_expected("tree_expected.json")
    tree = AbilityTree.from_items(read_items([shared_data_dir / "mmlu_dev.jsonl"]))
    assert [tree.info(c)["name"] for c in sorted(tree.children(tree.root), key=lambda c: tree.info(c)["name"])] == records[0]["topics"]
    assert len(records) == 12
    for r in records:
        assert read_topic(r["completion"], tree, tree.root) == expected[r["id"]]["letter"], r["completion"]
    echoes = sum(r["completion"].startswith("A. anatomy\nB.") for r in records)
    assert echoes >= 6 and sum(expected[r["id"]]["letter"] is None for r in records) == 10


def test_a_node_wider_than_the_letters_falls_back():
    tree = AbilityTree("med")
    for i in range(26):
        tree.add_ability(f"med/topic {i:02d}")
    result = classify_items(ScriptedEngine(pick=lambda p: "topic 00"), tree, [item("a", "q?", meta="medqa:1")])
    assert result.nodes["a"] == "med" and "more than 25 children" in result.fallbacks["a"]


def test_long_questions_are_clipped_and_config_checked():
    tree = make_tree()
    engine = ScriptedEngine(pick=lambda p: NONE_OF_THESE)
    classify_items(engine, tree, [item("a", "word " * 500)], ClassifyConfig(max_question_chars=100))
    assert len(user_text(engine.calls[0][1][0])) < 600
    with pytest.raises(ValueError, match="max_question_chars"):
        ClassifyConfig(max_question_chars=5)
