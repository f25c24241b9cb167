"""Metrics: Wilson intervals against a known case, per-source and per-node aggregation, files."""

from __future__ import annotations

import csv
import json

import pytest

from data.records import MCQItem
from eval.metrics import bootstrap_interval, mcnemar_exact_p, node_results, paired_summary, summarize, wilson_interval, write_metrics
from eval.records import Reply
from tree import AbilityTree


def item(i: int, source: str, path: list[str] | None, n_options: int = 4) -> MCQItem:
    options = {chr(65 + k): f"o{k}" for k in range(n_options)}
    return MCQItem(id=f"{source}-{i}", question="Q?", options=options, answer_idx="A", meta_info=f"{source}:x",
                   ability_path=path)


def reply(it: MCQItem, correct: bool, parsed: str | None = "A") -> Reply:
    return Reply(id=it.id, prompt="p", output="o", parsed_answer=parsed if correct else (parsed and "B"),
                 key=it.answer_idx, correct=correct)


@pytest.mark.parametrize(
    "k, n, expected",
    # Newcombe (1998), Statistics in Medicine 17:857, Table II, method 3 (score interval, no correction).
    [(81, 263, (0.2553, 0.3662)), (15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)), (1, 29, (0.0061, 0.1718))],
)
def test_wilson_published_cases(k, n, expected):
    assert wilson_interval(k, n) == pytest.approx(expected, abs=5e-5)


def test_wilson_by_hand_and_edges():
    # 8 of 10, z = 1.96: centre (0.8 + z^2/20) / (1 + z^2/10), half-width z*sqrt(0.016 + z^2/400) / (1 + z^2/10).
    assert wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mcnemar_exact():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(3, 3) == 1.0


@pytest.fixture()
def data():
    items = [item(i, "mmlu", ["clinical medicine", "anatomy"]) for i in range(4)]
    items += [item(i, "mmlu", ["clinical medicine", "college biology"]) for i in range(4, 6)]
    items += [item(i, "pubmedqa", None, n_options=3) for i in range(4)]
    tree = AbilityTree.from_items(items)
    correct = [True, True, False, False, True, True, False, False, False, True]
    replies = [reply(it, c) for it, c in zip(items, correct)]
    replies[6] = Reply(id=items[6].id, prompt="p", output="??", parsed_answer=None, key="A", correct=False)
    return items, tree, replies


def test_summarize_per_source_and_node(data):
    items, tree, replies = data
    s = summarize(replies, items, tree)
    assert (s["n"], s["correct"], s["unparsed"]) == (10, 5, 1)
    assert s["accuracy"] == 0.5 and s["ci95"] == pytest.approx(list(bootstrap_interval(5, 10, key="all")))
    assert s["chance"] == pytest.approx((6 * 0.25 + 4 / 3) / 10)
    assert s["by_source"]["pubmedqa"]["chance"] == pytest.approx(1 / 3)
    assert (s["by_source"]["mmlu"]["n"], s["by_source"]["mmlu"]["correct"]) == (6, 4)
    nodes = s["by_node"]
    assert (nodes["clinical medicine/anatomy"]["n"], nodes["clinical medicine/anatomy"]["correct"]) == (4, 2)
    assert nodes["clinical medicine/college biology"]["accuracy"] == 1.0
    assert nodes["clinical medicine"]["n"] == 10 and nodes["clinical medicine"]["depth"] == 0
    json.dumps(s)  # JSON-serialisable as is
    assert "by_node" not in summarize(replies, items)


def test_node_results_feed_the_tree(data):
    items, tree, replies = data
    tree.record(node_results(replies, items, tree), iteration=1)
    assert tree.counts("clinical medicine", 1) == (10, 5)


def test_unknown_reply_is_an_error(data):
    items, tree, replies = data
    with pytest.raises(ValueError, match="no matching item"):
        summarize(replies, items[:-1], tree)


def test_paired_summary_and_files(data, tmp_path):
    items, tree, before = data
    after = [reply(it, True) for it in items]
    p = paired_summary(before, after, items, tree)
    assert p["before"]["accuracy"] == 0.5 and p["after"]["accuracy"] == 1.0 and p["delta"] == 0.5
    assert (p["gained"], p["lost"]) == (5, 0) and p["mcnemar_p"] == pytest.approx(2 / 32)
    metrics, per_node = write_metrics(tmp_path / "G_eval", p)
    assert json.loads(metrics.read_text()) == json.loads(json.dumps(p))
    rows = list(csv.DictReader(per_node.open()))
    root = next(r for r in rows if r["node"] == "clinical medicine")
    assert (root["before_n"], root["after_correct"], float(root["delta"])) == ("10", "10", 0.5)
    with pytest.raises(ValueError, match="different items"):
        paired_summary(before[:-1], after, items, tree)


def test_single_summary_csv(data, tmp_path):
    items, tree, replies = data
    _, per_node = write_metrics(tmp_path, summarize(replies, items, tree))
    rows = list(csv.DictReader(per_node.open()))
    assert [r["node"] for r in rows][0] == "clinical medicine"
    assert {r["node"]: int(r["n"]) for r in rows}["clinical medicine/pubmedqa"] == 4
