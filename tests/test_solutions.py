"""Worked solutions of a generate-mode domain: the teacher's replies that reach the key are kept."""

from __future__ import annotations

from data.records import GeneratedItem, MCQItem
from synth.solutions import attach_solutions
from tests.fixtures.scripted_engine import ScriptedEngine, user_text
from training.mcq_data import mcq_conversation


def item(i: int, key: str) -> GeneratedItem:
    options = {"A": str(i + i), "B": str(i + i + 1), "C": str(i + i + 10), "D": str(i + i + 100)}
    return GeneratedItem(id=f"g{i}", question=f"What is {i} plus {i}?", options=options, answer_idx=key, target_node="arithmetic/addition")


def test_replies_that_reach_the_key_become_solutions_the_rest_are_set_aside():
    items = [item(1, "A"), item(2, "B"), item(3, "A")]

    def reply(prompt):
        i = next(k for k in (1, 2, 3) if f"What is {k} plus {k}?" in user_text(prompt))
        return f" {i} + {i} = {2 * i}. The answer is {2 * i}.\n" if i != 3 else "The answer is 7."

    teacher = ScriptedEngine(reply=reply)
    solved, unsolved = attach_solutions(teacher, items, max_new_tokens=50)
    assert [it.id for it in solved] == ["g1"] and [it.id for it in unsolved] == ["g2", "g3"]
    assert solved[0].solution == "1 + 1 = 2. The answer is 2." and isinstance(solved[0], GeneratedItem)
    assert unsolved[0].solution is None
    assert len(teacher.calls) == 1 and teacher.calls[0][2].max_new_tokens == 50
    assert attach_solutions(teacher, [], 50) == ([], [])


def test_the_conversation_trains_on_the_solution_when_there_is_one():
    plain = MCQItem(id="q", question="What is 1 plus 1?", options={"A": "2", "B": "3"}, answer_idx="A")
    assert mcq_conversation(plain)[-1] == {"role": "assistant", "content": "The answer is A."}
    worked = plain.model_copy(update={"solution": "1 + 1 = 2. The answer is 2."})
    assert mcq_conversation(worked)[-1]["content"] == "1 + 1 = 2. The answer is 2."
    assert mcq_conversation(worked)[0] == mcq_conversation(plain)[0]
    assert "solution" not in plain.model_dump(exclude_none=True)  # files without solutions stay as they were


def test_an_item_that_carries_its_solution_keeps_it_and_is_not_asked():
    """The oracle's items (synth.oracle) come with their worked solution; only the others go to the teacher."""
    own = item(4, "A").model_copy(update={"solution": "4 + 4 = 8. The answer is 8."})
    teacher = ScriptedEngine(reply=lambda prompt: " 1 + 1 = 2. The answer is 2.")
    solved, unsolved = attach_solutions(teacher, [item(1, "A"), own, item(2, "B")], max_new_tokens=50)
    assert [it.id for it in solved] == ["g1", "g4"] and [it.id for it in unsolved] == ["g2"]
    assert solved[1].solution == "4 + 4 = 8. The answer is 8."
    assert len(teacher.calls) == 1 and len(teacher.calls[0][1]) == 2  # one call, for the two items without a solution
    silent = ScriptedEngine(reply=lambda prompt: "")
    assert attach_solutions(silent, [own], 50) == ([own], []) and silent.calls == []
