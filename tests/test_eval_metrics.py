"""Metrics: Wilson intervals against a known case, per-source and per-node aggregation, files."""

from __future__ import annotations

import csv
import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from data.records import MCQItem
from eval.metrics import (
    MetricsConfig,
    bootstrap_interval,
    mcnemar_exact_p,
    node_results,
    outcomes,
    accuracy_interval,
    paired_bootstrap,
    paired_difference,
    paired_summary,
    summarize,
    summarize_outcomes,
    wilson_interval,
    write_metrics,
)
from data.records import Reply
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
    # Thousands of discordant items (two models on 5,626 questions): no float overflow, and the exact
    # test meets the continuity-corrected normal approximation.
    normal = 2 * (1 - NormalDist().cdf((100 - 1) / math.sqrt(1100)))
    assert mcnemar_exact_p(600, 500) == pytest.approx(normal, rel=0.05)
    assert mcnemar_exact_p(3000, 1000) == 0.0 or mcnemar_exact_p(3000, 1000) < 1e-200


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
    assert s["accuracy"] == 0.5 and s["ci95"] == pytest.approx(list(wilson_interval(5, 10)))  # 10 items: too few to bootstrap
    assert s["ci_method"] == "wilson"
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


# ---------------------------------------------------------------------------- bootstrap and paired tests


def binomial_quantile(n: int, p: float, q: float) -> int:
    """Smallest k with P(Binomial(n, p) <= k) >= q, from the exact pmf."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if cdf >= q - 1e-12:
            return k
    return n


@pytest.mark.parametrize("k, n", [(30, 100), (7, 40), (1, 25), (12, 12)])
def test_bootstrap_interval_is_the_binomial_quantiles_of_the_observed_rate(k, n):
    """Resampling n items of which k are right gives Binomial(n, k/n) right answers: the percentile
    interval must be that distribution's 2.5% and 97.5% quantiles (within one item: Monte Carlo)."""
    lo, hi = bootstrap_interval(k, n, MetricsConfig(resamples=200_000))
    exact = binomial_quantile(n, k / n, 0.025) / n, binomial_quantile(n, k / n, 0.975) / n
    assert lo == pytest.approx(exact[0], abs=1.01 / n) and hi == pytest.approx(exact[1], abs=1.01 / n)
    # ... and an explicit resampling of the 0/1 outcomes agrees with the drawn counts.
    rng = np.random.default_rng(1)
    values = np.array([1] * k + [0] * (n - k))
    means = values[rng.integers(0, n, size=(20_000, n))].mean(axis=1)
    explicit = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
    assert lo == pytest.approx(explicit[0], abs=1.01 / n) and hi == pytest.approx(explicit[1], abs=1.01 / n)


def test_bootstrap_interval_approaches_wilson_for_large_n_and_is_reproducible():
    boot = bootstrap_interval(600, 2000)
    assert boot == pytest.approx(wilson_interval(600, 2000), abs=0.003)
    assert bootstrap_interval(600, 2000) == bootstrap_interval(600, 2000) != bootstrap_interval(600, 2000, MetricsConfig(seed=1))
    assert bootstrap_interval(0, 0) == (0.0, 1.0)
    assert bootstrap_interval(0, 10) == (0.0, 0.0)  # the percentile bootstrap cannot see beyond the data
    assert wilson_interval(0, 10)[1] > 0.25  # which is why --interval wilson exists
    with pytest.raises(ValueError):
        bootstrap_interval(11, 10)
    with pytest.raises(ValueError, match="interval"):
        MetricsConfig(interval="normal")
    with pytest.raises(ValueError, match="resamples"):
        MetricsConfig(resamples=10)


def constructed_pair(n: int = 100, gained: int = 15, lost: int = 5, both: int = 30) -> tuple[list[bool], list[bool]]:
    before = [False] * gained + [True] * lost + [True] * both + [False] * (n - gained - lost - both)
    after = [True] * gained + [False] * lost + [True] * both + [False] * (n - gained - lost - both)
    return before, after


def test_paired_bootstrap_on_a_constructed_pair():
    before, after = constructed_pair()
    r = paired_bootstrap(before, after, MetricsConfig(resamples=100_000))
    assert (r["n"], r["gained"], r["lost"], r["delta"]) == (100, 15, 5, pytest.approx(0.10))
    # Exact McNemar: 2 * P(Binomial(20, 1/2) <= 5).
    assert r["mcnemar_p"] == pytest.approx(2 * sum(math.comb(20, i) for i in range(6)) / 2**20)
    # Paired bootstrap: the difference's standard error is sqrt((g + l)/n - delta^2) / sqrt(n) = 0.0436.
    se = math.sqrt(0.20 - 0.01) / 10
    assert r["delta_ci95"] == pytest.approx([0.10 - 1.96 * se, 0.10 + 1.96 * se], abs=0.011)
    assert 0.01 < r["bootstrap_p"] < 0.04  # normal approximation: 0.022
    # Explicit resampling of the pairs gives the same distribution.
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 100, size=(20_000, 100))
    deltas = np.array(after, float)[idx].mean(1) - np.array(before, float)[idx].mean(1)
    assert r["delta_ci95"] == pytest.approx(np.quantile(deltas, [0.025, 0.975]), abs=0.011)
    assert r["bootstrap_p"] == pytest.approx(2 * np.mean(deltas <= 0), abs=0.01)
    # Direction: swapping the two sides flips the difference, not the p-values.
    s = paired_bootstrap(after, before, MetricsConfig(resamples=100_000))
    assert s["delta"] == pytest.approx(-0.10) and s["mcnemar_p"] == r["mcnemar_p"]
    assert s["bootstrap_p"] == pytest.approx(r["bootstrap_p"], abs=0.01)


def test_paired_bootstrap_edges():
    same = [True, False, True]
    r = paired_bootstrap(same, same)
    assert (r["delta"], r["delta_ci95"], r["bootstrap_p"], r["mcnemar_p"]) == (0.0, [0.0, 0.0], 1.0, 1.0)
    balanced = paired_bootstrap(*constructed_pair(gained=5, lost=5))
    assert balanced["delta"] == 0.0 and balanced["bootstrap_p"] == 1.0
    assert paired_bootstrap([], [])["delta"] is None
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([True], [True, False])


def test_paired_summary_blocks_per_source_and_node(data):
    items, tree, before = data
    after = [reply(it, True) for it in items]
    p = paired_summary(before, after, items, tree)
    assert p["by_source"]["pubmedqa"]["gained"] == 3 and p["by_source"]["pubmedqa"]["chance"] == pytest.approx(1 / 3)
    anatomy = p["by_node"]["clinical medicine/anatomy"]
    assert (anatomy["n"], anatomy["gained"], anatomy["lost"], anatomy["delta"]) == (4, 2, 0, 0.5)
    assert p["by_node"]["clinical medicine"]["n"] == 10 and p["intervals"]["interval"] == "bootstrap"
    # Outcomes carry everything: the replies' own fields give the same summary as joining the items.
    from_items = summarize(after, items, tree)
    tagged = [r.model_copy(update={"source": it.source, "n_options": len(it.options), "node": tree.node_of(it)})
              for r, it in zip(after, items)]
    assert summarize_outcomes(outcomes(tagged), tree=tree) == from_items


def test_small_or_extreme_blocks_fall_back_to_exact_methods():
    """The percentile bootstrap collapses where the data cannot vary: 0 of 8 right would read [0%, 0%]
    and one changed item p = 0. There the Wilson interval and McNemar's exact test are used instead."""
    assert accuracy_interval(25, 50)[2] == "bootstrap"
    for k, n in [(5, 10), (0, 50), (50, 50)]:
        lo, hi, method = accuracy_interval(k, n)
        assert method == "wilson" and (lo, hi) == pytest.approx(wilson_interval(k, n))
    assert accuracy_interval(25, 50, MetricsConfig(interval="wilson"))[2] == "wilson"
    lo90, hi90, _ = accuracy_interval(5, 10, MetricsConfig(confidence=0.90))
    assert (lo90, hi90) == pytest.approx(wilson_interval(5, 10, z=1.6448536269514722))

    one_changed = paired_difference([True, True, False], [False, True, False])
    assert one_changed["bootstrap_p"] is None and one_changed["mcnemar_p"] == 1.0
    assert one_changed["delta_ci_method"] == "newcombe" and one_changed["delta"] == pytest.approx(-1 / 3)
    lo, hi = one_changed["delta_ci95"]
    assert -1 < lo < -1 / 3 < 0 < hi < 1  # contains the estimate and no change; not a point
    assert paired_difference([True, False], [True, False])["delta_ci95"][0] < 0 < paired_difference([True, False], [True, False])["delta_ci95"][1]
    many = paired_difference(*constructed_pair())
    assert many["delta_ci_method"] == "bootstrap" and many["bootstrap_p"] is not None


def test_newcombe_paired_interval_by_hand_and_coverage():
    # (both, gained, lost, neither) = (1, 1, 7, 12): the formula worked through with the Wilson limits.
    n, z = 21, 1.959963984540054
    l1, u1 = wilson_interval(2, n)
    l2, u2 = wilson_interval(8, n)
    p1, p2 = 2 / n, 8 / n
    phi = (1 * 12 - 1 * 7 - n / 2) / math.sqrt(2 * 19 * 8 * 13) if 1 * 12 - 7 > n / 2 else 0.0
    expected = (p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2),
                p1 - p2 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    from eval.metrics import newcombe_paired_interval

    assert newcombe_paired_interval(1, 1, 7, 12, z) == pytest.approx(expected)
    # Coverage: pairs drawn with known cell probabilities; the 95% interval holds the true difference
    # in about 95% of samples even at n = 25 (Newcombe reports 0.93-0.97 for this method).
    rng = np.random.default_rng(0)
    probs = [0.3, 0.15, 0.05, 0.5]  # both, gained, lost, neither: true difference +0.10
    hits = 0
    for cells in rng.multinomial(25, probs, size=2000):
        lo, hi = newcombe_paired_interval(*map(int, cells))
        hits += lo <= 0.10 <= hi
    assert 0.93 <= hits / 2000 <= 0.985
