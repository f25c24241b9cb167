"""The ability tree: building from real items, refusing duplicates and cycles, statistics, files, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from data.records import GeneratedItem, MCQItem, read_items
import tree as tree_pkg
from tree import AbilityTree, TreeError, write_graphml
from tree.__main__ import find_tree_file, main
from tree.posterior import beta_posterior

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def items(shared_data_dir) -> list[MCQItem]:
    return read_items([shared_data_dir / "mmlu_dev.jsonl", shared_data_dir / "medqa_dev.jsonl"])


@pytest.fixture()
def built(items) -> AbilityTree:
    return AbilityTree.from_items(items)


def item(id_: str, path: list[str] | None = None, meta: str = "medqa:x") -> MCQItem:
    return MCQItem(id=id_, question="Q?", options={"A": "a", "B": "b"}, answer_idx="A", meta_info=meta, ability_path=path)


def test_import_tree_is_ours():
    assert Path(tree_pkg.__file__).resolve().parent == ROOT / "tree"


def test_from_real_items(built, items):
    subjects = {tuple(it.ability_path) for it in items if it.ability_path}
    expected = {"/".join(p) for p in subjects} | {"clinical medicine/medqa"}
    assert built.root == "clinical medicine"
    assert set(built.leaves()) == expected
    assert set(built.children("clinical medicine")) == expected
    for it in items:
        node = built.node_of(it)
        assert it.id in built.info(node)["examples"]
        assert node == ("/".join(it.ability_path) if it.ability_path else "clinical medicine/medqa")
    assert sum(len(built.info(n)["examples"]) for n in built.nodes()) == len(items)


def test_add_ability_creates_ancestors_and_refuses_duplicates(built):
    leaf = built.add_ability("clinical medicine/cardiology/acute coronary syndrome", "ACS: STEMI, NSTEMI, UA")
    assert leaf == "clinical medicine/cardiology/acute coronary syndrome"
    assert built.parent(leaf) == "clinical medicine/cardiology"
    assert built.ancestors(leaf) == ["clinical medicine", "clinical medicine/cardiology"]
    assert built.info(leaf)["name"] == "acute coronary syndrome"
    with pytest.raises(TreeError, match="already exists"):
        built.add_ability("clinical medicine/cardiology/acute coronary syndrome")
    with pytest.raises(TreeError, match="already exists"):
        built.add_ability(["clinical medicine", "Cardiology", "Acute  coronary syndrome"])  # case/space variant
    assert built.add_ability("clinical medicine/Cardiology/acute coronary syndrome", exist_ok=True) == leaf
    with pytest.raises(TreeError, match="start at the root"):
        built.add_ability("cardiology/heart failure")
    with pytest.raises(TreeError, match="empty component"):
        built.add_ability("clinical medicine//x")


def test_link_refuses_cycles(built):
    a = built.add_ability("clinical medicine/pharmacology/antiarrhythmics")
    b = built.add_ability("clinical medicine/cardiology/arrhythmia")
    built.link(b, a)  # a shared sub-ability: a DAG, not a cycle
    assert set(built.ancestors(a)) == {"clinical medicine", "clinical medicine/pharmacology", "clinical medicine/cardiology", b}
    with pytest.raises(TreeError, match="cycle"):
        built.link(a, "clinical medicine/cardiology")
    with pytest.raises(TreeError, match="cycle"):
        built.link(a, a)
    assert nx.is_directed_acyclic_graph(built.graph)


def test_node_of_falls_back_to_existing_ancestor(built):
    deep = item("x-1", ["clinical medicine", "anatomy", "brachial plexus"])
    assert built.node_of(deep) == "clinical medicine/anatomy"
    assert built.node_of(item("x-2", ["unknown field"])) == "clinical medicine"
    target = built.add_ability("clinical medicine/medqa/endocrine")
    gen = GeneratedItem(id="g-1", question="Q?", options={"A": "a", "B": "b"}, answer_idx="B", meta_info="gen:x",
                        target_node=target)
    assert built.node_of(gen) == target


def test_record_aggregates_up_the_tree_with_posterior_and_trend():
    t = AbilityTree("root")
    a, b = t.add_ability("root/a"), t.add_ability("root/b/c")
    t.record([("1", a, True), ("2", a, True), ("3", a, False), ("4", b, False)], iteration=1)
    t.record([("1", a, True), ("2", a, True), ("3", a, True), ("4", b, True), ("5", b, False)], iteration=2)
    assert t.counts("root", 1) == (4, 2)
    assert t.counts("root/b", 2) == (2, 1)
    assert t.counts("root", 2, subtree=False) == (0, 0)
    st = t.stats("root", 2)
    assert (st.posterior.n, st.posterior.correct) == (5, 4)
    assert st.posterior.mean == pytest.approx(5 / 7)  # Beta(1 + 4, 1 + 1)
    assert st.trend == pytest.approx(5 / 7 - 3 / 6)  # iteration 1: Beta(3, 3)
    ref = beta_posterior(4, 5)
    assert (st.posterior.lo, st.posterior.hi) == pytest.approx((ref.lo, ref.hi))
    assert t.stats(a, 1).trend is None
    assert t.stats("root/b").iteration == 2  # latest by default
    assert t.weakest(1, iteration=2) == [("root/b/c", pytest.approx(0.5))]
    assert [n for n, _ in t.weakest(None, iteration=1)] == ["root/b/c", "root/a"]


def test_record_replaces_the_iteration_and_refuses_bad_results():
    t = AbilityTree("root")
    a = t.add_ability("root/a")
    t.record([("1", a, True), ("2", a, False)], iteration=1)
    t.record([("1", a, True)], iteration=1)  # a re-run of the stage
    assert t.counts(a, 1) == (1, 1)
    with pytest.raises(TreeError, match="twice"):
        t.record([("1", a, True), ("1", a, False)], iteration=2)
    with pytest.raises(TreeError, match="no node"):
        t.record([("1", "root/zzz", True)], iteration=2)


def test_json_round_trip(built, items, tmp_path):
    built.record([(it.id, built.node_of(it), i % 3 == 0) for i, it in enumerate(items[:50])], iteration=1)
    built.set_diagnoses("clinical medicine/anatomy", ["Confuses the brachial plexus cords with its trunks."])
    built.link("clinical medicine/anatomy", built.add_ability("clinical medicine/college biology/neuroanatomy"))
    path = built.save(tmp_path / "t" / "tree.json")
    loaded = AbilityTree.load(path)
    assert loaded.to_dict() == built.to_dict()
    assert list(loaded.graph.edges) == list(built.graph.edges)
    assert loaded.stats("clinical medicine", 1) == built.stats("clinical medicine", 1)
    assert not list(path.parent.glob(".*.tmp"))


def test_graphml_reads_back_with_networkx(built, items, tmp_path):
    built.record([(it.id, built.node_of(it), True) for it in items[:10]], iteration=1)
    built.set_diagnoses("clinical medicine/medqa", ["Misses the classic \"<b>\" & 'quoted' presentations."])
    path = write_graphml(built, tmp_path / "tree.graphml")
    g = nx.read_graphml(path)
    assert set(g.nodes) == set(built.nodes())
    assert set(g.edges) == set(built.graph.edges)
    medqa = g.nodes["clinical medicine/medqa"]
    assert json.loads(medqa["diagnoses"]) == built.info("clinical medicine/medqa")["diagnoses"]
    assert json.loads(medqa["examples"]) == built.info("clinical medicine/medqa")["examples"]
    assert g.nodes["clinical medicine"]["n"] == 10


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other", "version": 1, "root": "r", "nodes": [{"id": "r", "name": "r"}], "edges": []}',
         "not an ability tree file"),
        ('{"format": "atkd.ability_tree", "version": 1, "root": "r", "nodes": [{"id": "r"}], "edges": []}',
         "field 'nodes.0.name'"),
        ('{"format": "atkd.ability_tree", "version": 1, "root": "r", "nodes": [{"id": "r", "name": "r"}, '
         '{"id": "r/a", "name": "a"}, {"id": "r/a/b", "name": "b"}], "edges": [["r", "r/a"], ["r/a", "r/a/b"], '
         '["r/a/b", "r/a"]]}', "cycle"),
        ('{"format": "atkd.ability_tree", "version": 1, "root": "r", "nodes": [{"id": "r", "name": "r"}, '
         '{"id": "r/a", "name": "a", "stats": {"1": {"n": 1, "correct": 2}}}], "edges": [["r", "r/a"]]}',
         "correct"),
        ('{"format": "atkd.ability_tree", "version": 1, "root": "r", "nodes": [{"id": "r", "name": "r"}, '
         '{"id": "r/a", "name": "a"}], "edges": []}', "not linked to its parent"),
    ],
)
def test_bad_tree_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(TreeError, match=message) as err:
        AbilityTree.load(path)
    assert str(path) in str(err.value)


def test_missing_tree_file(tmp_path):
    with pytest.raises(TreeError, match="not found"):
        AbilityTree.load(tmp_path / "nope.json")


def test_find_newest_tree_in_run_dir(tmp_path):
    t = AbilityTree("r")
    t.save(tmp_path / "tree" / "initial.json")
    assert find_tree_file(tmp_path) == tmp_path / "tree" / "initial.json"
    for it in (2, 10, 1):
        t.save(tmp_path / f"iteration_{it}" / "B_student_tree" / "tree.json")
    assert find_tree_file(tmp_path) == tmp_path / "iteration_10" / "B_student_tree" / "tree.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TreeError, match="no tree.json"):
        find_tree_file(empty)


def test_cli_show_and_export(built, items, tmp_path, capsys):
    built.record([(it.id, built.node_of(it), i % 2 == 0) for i, it in enumerate(items[:40])], iteration=1)
    built.record([(it.id, built.node_of(it), i % 4 != 0) for i, it in enumerate(items[:40])], iteration=2)
    built.set_diagnoses("clinical medicine/medqa", ["Mixes up [bold] markup-like text."])
    built.save(tmp_path / "run" / "iteration_2" / "B_student_tree" / "tree.json")
    assert main(["show", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    root = built.stats("clinical medicine", 2)
    assert f"acc {root.posterior.mean:.3f} [{root.posterior.lo:.3f}, {root.posterior.hi:.3f}]" in out
    assert "n=40" in out and "▲" in out and "[bold] markup-like" in out
    assert main(["export", str(tmp_path / "run"), "--format", "graphml", "-o", str(tmp_path / "t.graphml")]) == 0
    assert set(nx.read_graphml(tmp_path / "t.graphml").nodes) == set(built.nodes())
    assert main(["export", str(tmp_path / "run"), "--format", "json", "-o", str(tmp_path / "t.json")]) == 0
    assert AbilityTree.load(tmp_path / "t.json").to_dict() == built.to_dict()


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    p = subprocess.run([sys.executable, "-m", "tree", "show", str(bad)], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and str(bad) in p.stderr and "Traceback" not in p.stderr
