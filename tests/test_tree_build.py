"""Building a run's tree (paths + teacher placement) and the init / build / record commands."""

from __future__ import annotations

import json

import pytest

from data.records import MCQItem, write_jsonl
from engines.base import EngineCapabilityError
from tests.fixtures.scripted_engine import ScriptedEngine, user_text
from tree import AbilityTree, TreeError
from tree.__main__ import main
from tree.build import build_tree


def item(id_: str, question: str, path: list[str] | None = None, meta: str = "medqa:x") -> MCQItem:
    return MCQItem(id=id_, question=question, options={"A": "yes", "B": "no"}, answer_idx="A", meta_info=meta,
                   ability_path=path)


ITEMS = [
    item("p1", "Which nerve supplies the deltoid?", ["med", "anatomy"]),
    item("p2", "ST elevation in II, III, aVF means?", ["med", "cardiology"]),
    item("u1", "Which artery is blocked in an inferior MI?"),
    item("u2", "What is the cause of this rash?", meta="medmcqa:x"),
]


def pick(prompt) -> str:
    return "cardiology" if "inferior MI" in user_text(prompt) else "none of these (a more general question)"


def test_without_a_teacher_pathless_items_sit_under_their_source():
    result = build_tree(ITEMS, root="med")
    assert result.tree.node_of(ITEMS[2]) == "med/medqa" and result.tree.node_of(ITEMS[3]) == "med/medmcqa"
    assert not result.classified and result.calls == 0


def test_the_teacher_places_pathless_items_and_the_file_keeps_them(tmp_path):
    result = build_tree(ITEMS, root="med", engine=ScriptedEngine(pick=pick))
    tree = result.tree
    assert result.classified == {"u1": "med/cardiology", "u2": "med"} and result.calls == 1
    assert sorted(tree.nodes()) == ["med", "med/anatomy", "med/cardiology"]  # no source nodes were needed
    again = AbilityTree.load(tree.save(tmp_path / "t.json"))
    assert [again.node_of(i) for i in ITEMS] == ["med/anatomy", "med/cardiology", "med/cardiology", "med"]
    assert again.info("med/cardiology")["examples"] == ["p2", "u1"]


def test_fallbacks_go_under_the_source_node():
    class Mute(ScriptedEngine):
        def choice_logprobs(self, prompts, choices):
            raise EngineCapabilityError("no logprobs")

    result = build_tree(ITEMS, root="med", engine=Mute(reply=lambda p: "I cannot tell."))
    assert set(result.fallbacks) == {"u1", "u2"} and not result.classified
    assert result.tree.node_of(ITEMS[2]) == "med/medqa" and "med/medqa" in result.tree


def test_place_moves_an_item_and_a_file_listing_it_twice_is_refused(tmp_path):
    tree = AbilityTree.from_items(ITEMS[:2], root="med")
    tree.place("p1", "med/cardiology")
    assert tree.info("med/anatomy")["examples"] == [] and tree.placed_at("p1") == "med/cardiology"
    data = tree.to_dict()
    data["nodes"][1]["examples"].append("p2")  # p2 also listed at another node
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TreeError, match=r"bad.json: item 'p2' is an example of two nodes"):
        AbilityTree.load(path)


def test_build_and_record_commands(tmp_path, capsys):
    data = tmp_path / "items.jsonl"
    write_jsonl(data, ITEMS)
    out = tmp_path / "tree.json"
    assert main(["build", "--data", str(data), "--root", "med", "-o", str(out)]) == 0
    assert "4 items (2 with an ability path) → 5 nodes" in capsys.readouterr().out
    assert main(["build", "--data", str(data), "--root", "med", "-o", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err

    replies = tmp_path / "replies.jsonl"
    rows = [{"id": i.id, "prompt": "", "output": "", "parsed_answer": "A", "key": "A", "correct": i.id != "p2"} for i in ITEMS]
    write_jsonl(replies, rows)
    assert main(["record", str(out), "--replies", str(replies), "--data", str(data)]) == 0
    assert "as iteration 1" in capsys.readouterr().out
    tree = AbilityTree.load(out)
    assert tree.counts("med", 1) == (4, 3) and tree.counts("med/cardiology", 1) == (1, 0)
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "cardiology  acc 0.333" in shown and "n=4" in shown

    write_jsonl(replies, [*rows, {**rows[0], "id": "ghost"}])
    assert main(["record", str(out), "--replies", str(replies), "--data", str(data)]) == 2
    assert "replies.jsonl: 1 replies answer items not in --data (first: 'ghost')" in capsys.readouterr().err
    assert AbilityTree.load(out).iterations == [1], "a refused record must leave the file alone"


def test_init_command_with_a_tiny_teacher(tiny_teacher_path, tmp_path, capsys):
    out = tmp_path / "init.json"
    code = main(["init", "--root", "med", "--teacher", f"hf:{tiny_teacher_path}", "--engine", "transformers",
                 "--max-depth", "1", "--samples", "2", "--max-new-tokens", "16", "-o", str(out)])
    assert code == 0 and AbilityTree.load(out).root == "med"
    printed = capsys.readouterr()
    assert "teacher replies in 2 engine calls" in printed.out
    assert main(["init", "--domain", "nosuch", "--teacher", "smollm2", "-o", str(tmp_path / "x.json")]) == 2
    assert "unknown domain 'nosuch'" in capsys.readouterr().err
