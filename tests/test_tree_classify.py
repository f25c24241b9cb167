"""Teacher classification of items without an ability path: level by level, batched, never off the list."""

from __future__ import annotations

import pytest

from data.records import MCQItem
from engines.base import EngineCapabilityError
from tests.fixtures.scripted_engine import ScriptedEngine, user_text
from tree import AbilityTree
from tree.classify import NONE_OF_THESE, ClassifyConfig, classify_items


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


def test_engines_without_letter_scores_fall_back_to_the_source_node():
    class NoScores(ScriptedEngine):
        def choice_logprobs(self, prompts, choices):
            raise EngineCapabilityError("no logprobs over this endpoint")

    tree = make_tree()
    result = classify_items(NoScores(), tree, [item("a", "x?", meta="medqa:usmle"), item("b", "y?", meta="other:1")])
    assert result.nodes == {"a": "med/medqa", "b": "med"}
    assert set(result.fallbacks) == {"a", "b"} and "cannot score" in result.fallbacks["a"]


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
