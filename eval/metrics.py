"""Accuracy with 95% intervals: overall, per source, per tree node (a node counts its whole subtree).

Intervals are percentile bootstrap intervals by default (``MetricsConfig.interval``): the evaluation
sets of a node are small (tens of items) and a small student sits near chance, where the normal
approximation is poor. For 0/1 outcomes the number correct in a bootstrap resample of n items is
exactly Binomial(n, k/n), and the four agreement counts of a paired resample are exactly
Multinomial(n, observed cell shares); so resamples are drawn from those distributions directly, which
is the same bootstrap at O(resamples) cost instead of O(resamples × n). Where the bootstrap cannot be
trusted (few items, all right or all wrong, few items that changed) Wilson score intervals, Newcombe's
paired interval and the exact McNemar test take over (``MetricsConfig``); ``interval="wilson"`` uses
them everywhere.

Every block carries the chance level (the mean of 1 / number of options: items have 3, 4, 5 or 10),
the number a reader must compare against. Paired comparisons (two models, or the student before and
after an iteration, on the same items) report the difference with a paired-bootstrap interval, the
paired-bootstrap p-value and the exact McNemar p-value.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterable, Sequence

import numpy as np

from data.records import MCQItem, Reply, atomic_write_json, atomic_write_text
from tree.ability_tree import SEP, AbilityTree

logger = logging.getLogger(__name__)

Z95 = 1.959963984540054  # standard normal 97.5% quantile (a constant of nature, not configuration)


@dataclass(frozen=True)
class MetricsConfig:
    """How intervals and paired tests are computed; stored in metrics.json beside the numbers.

    The percentile bootstrap cannot reach beyond the observed values: 0 right of 8 gives [0, 0], and one
    item that changed gives p = 0. So blocks with fewer than ``min_bootstrap_n`` items, or with every
    item right or every item wrong, get the Wilson score interval; paired comparisons with fewer than
    ``min_discordant`` items that changed get only McNemar's exact p-value and Newcombe's interval for
    paired proportions (built from Wilson intervals). Each block says which method it used.
    """

    interval: str = "bootstrap"  # "bootstrap" (percentile, with the fallbacks above) or "wilson"
    confidence: float = 0.95
    resamples: int = 10_000
    seed: int = 0
    min_bootstrap_n: int = 20
    min_discordant: int = 10

    def __post_init__(self) -> None:
        if self.interval not in ("bootstrap", "wilson"):
            raise ValueError(f"interval must be 'bootstrap' or 'wilson', got {self.interval!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {self.resamples}")
        if self.min_bootstrap_n < 1 or self.min_discordant < 1:
            raise ValueError("min_bootstrap_n and min_discordant must be >= 1")

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)

    def rng(self, *counts: int) -> np.random.Generator:
        """A generator seeded by the block's counts: an interval is a function of (counts, config) only,
        so a source and a node holding the same items show the same interval."""
        return np.random.default_rng([self.seed, *counts])


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there is no data."""
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_interval(correct: int, n: int, config: MetricsConfig = MetricsConfig()) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy of ``correct`` out of ``n``; (0, 1) with no data."""
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    draws = config.rng(correct, n).binomial(n, correct / n, size=config.resamples) / n
    return _percentiles(draws, config.confidence)


def accuracy_interval(correct: int, n: int, config: MetricsConfig = MetricsConfig()) -> tuple[float, float, str]:
    """(low, high, method): the bootstrap interval where it is reliable, else Wilson's (see MetricsConfig)."""
    if config.interval == "bootstrap" and n >= config.min_bootstrap_n and 0 < correct < n:
        return (*bootstrap_interval(correct, n, config), "bootstrap")
    return (*wilson_interval(correct, n, config.z), "wilson")


def mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test: P(a split of the discordant pairs at least this uneven | no change)."""
    m = gained + lost
    if m == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / (1 << m)  # exact integers: no overflow at m > 1000
    return min(1.0, 2.0 * tail)


def _paired_counts(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int, int, int]:
    """(n, right both times, right only after, right only before)."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes differ in length: {len(before)} vs {len(after)}")
    b, a = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    return len(b), int((a & b).sum()), int((a & ~b).sum()), int((b & ~a).sum())


def paired_bootstrap(before: Sequence[bool], after: Sequence[bool], config: MetricsConfig = MetricsConfig()) -> dict[str, Any]:
    """Difference of accuracies (after − before) on the same items, resampling items (pairs).

    Returns the difference, its percentile interval, the two-sided bootstrap p-value (twice the share
    of resampled differences on the other side of zero, Koehn 2004's paired bootstrap test), the
    discordant counts and the exact McNemar p-value.
    """
    n, _, gained, lost = _paired_counts(before, after)
    out: dict[str, Any] = {"n": n, "gained": gained, "lost": lost, "mcnemar_p": mcnemar_exact_p(gained, lost)}
    if n == 0:
        return {**out, "delta": None, "delta_ci95": [-1.0, 1.0], "bootstrap_p": 1.0}
    delta = (gained - lost) / n
    # Only the discordant cells move the difference; the concordant ones share the rest of the mass.
    cells = config.rng(gained, lost, n).multinomial(n, [gained / n, lost / n, max(0.0, 1 - (gained + lost) / n)], size=config.resamples)
    deltas = (cells[:, 0] - cells[:, 1]) / n
    lo, hi = _percentiles(deltas, config.confidence)
    if gained == lost:
        p = 1.0
    else:
        other_side = np.mean(deltas <= 0) if delta > 0 else np.mean(deltas >= 0)
        p = min(1.0, 2 * float(other_side))
    return {**out, "delta": delta, "delta_ci95": [lo, hi], "bootstrap_p": p}


def newcombe_paired_interval(both: int, gained: int, lost: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's (1998, Stat Med 17:2635, method 10) interval for the difference of paired proportions,
    after − before = (gained − lost)/n, from the Wilson intervals of the two accuracies and their
    (continuity-corrected) correlation; it stays inside [−1, 1] and does not collapse with few changes."""
    n = both + gained + lost + neither
    if n == 0:
        return -1.0, 1.0
    p_after, p_before = (both + gained) / n, (both + lost) / n
    l1, u1 = wilson_interval(both + gained, n, z)
    l2, u2 = wilson_interval(both + lost, n, z)
    phi = 0.0
    denom = (both + gained) * (lost + neither) * (both + lost) * (gained + neither)
    if denom > 0:
        cross = both * neither - gained * lost
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(denom)
    delta = p_after - p_before
    lower = delta - math.sqrt(max(0.0, (p_after - l1) ** 2 - 2 * phi * (p_after - l1) * (u2 - p_before) + (u2 - p_before) ** 2))
    upper = delta + math.sqrt(max(0.0, (u1 - p_after) ** 2 - 2 * phi * (u1 - p_after) * (p_before - l2) + (p_before - l2) ** 2))
    return max(-1.0, lower), min(1.0, upper)


def paired_difference(before: Sequence[bool], after: Sequence[bool], config: MetricsConfig = MetricsConfig()) -> dict[str, Any]:
    """``paired_bootstrap`` where enough items changed; else McNemar's p only, and Newcombe's interval."""
    n, both, gained, lost = _paired_counts(before, after)
    if config.interval == "bootstrap" and gained + lost >= config.min_discordant:
        return {**paired_bootstrap(before, after, config), "delta_ci_method": "bootstrap"}
    lo, hi = newcombe_paired_interval(both, gained, lost, n - both - gained - lost, config.z)
    return {"n": n, "gained": gained, "lost": lost, "mcnemar_p": mcnemar_exact_p(gained, lost), "bootstrap_p": None,
            "delta": (gained - lost) / n if n else None, "delta_ci95": [lo, hi], "delta_ci_method": "newcombe"}


@dataclass(frozen=True)
class Outcome:
    """One scored item reduced to what metrics need: where it belongs and whether it was right."""

    id: str
    source: str
    n_options: int
    correct: bool
    unparsed: bool
    nodes: tuple[str, ...] = ()  # its node and every ancestor: a node's block counts its whole subtree


def _node_chain(node: str | None, tree: AbilityTree | None) -> tuple[str, ...]:
    if not node:
        return ()
    if tree is not None:
        return (node, *tree.ancestors(node))
    parts = node.split(SEP)  # node ids are paths from the root
    return tuple(SEP.join(parts[:d]) for d in range(len(parts), 0, -1))


def outcomes(replies: Iterable[Reply], items: Iterable[MCQItem] | None = None,
             tree: AbilityTree | None = None) -> list[Outcome]:
    """Join replies with their items (source, option count, tree node); without items, the reply's own fields."""
    by_id = {it.id: it for it in items} if items is not None else None
    out = []
    for r in replies:
        if by_id is not None:
            if r.id not in by_id:
                raise ValueError(f"reply {r.id!r} has no matching item")
            it = by_id[r.id]
            source, n_options, node = it.source, len(it.options), tree.node_of(it) if tree is not None else r.node
        else:
            if r.n_options is None:
                raise ValueError(f"reply {r.id!r} lacks n_options: score it again with this version, or pass the items")
            source, n_options, node = r.source or "unknown", r.n_options, r.node
        out.append(Outcome(r.id, source, n_options, r.correct, r.parsed_answer is None, _node_chain(node, tree)))
    return out


def _block(rows: Sequence[Outcome], config: MetricsConfig) -> dict[str, Any]:
    n = len(rows)
    correct = sum(o.correct for o in rows)
    lo, hi, method = accuracy_interval(correct, n, config)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "ci95": [lo, hi],
        "ci_method": method,
        "chance": sum(1 / o.n_options for o in rows) / n if n else None,
        "unparsed": sum(o.unparsed for o in rows),
    }


def _group(rows: Iterable[Outcome]) -> tuple[dict[str, list[Outcome]], dict[str, list[Outcome]]]:
    by_source: dict[str, list[Outcome]] = defaultdict(list)
    by_node: dict[str, list[Outcome]] = defaultdict(list)
    for o in rows:
        by_source[o.source].append(o)
        for node in o.nodes:
            by_node[node].append(o)
    return by_source, by_node


def _node_order(by_node: dict[str, Any], tree: AbilityTree | None) -> list[str]:
    """Tree order (depth-first as stored) with a tree, else sorted paths (a parent before its children)."""
    return [n for n in tree.nodes() if n in by_node] if tree is not None else sorted(by_node)


def summarize_outcomes(rows: Sequence[Outcome], config: MetricsConfig = MetricsConfig(),
                       tree: AbilityTree | None = None) -> dict[str, Any]:
    by_source, by_node = _group(rows)
    summary = {
        **_block(rows, config),
        "by_source": {s: _block(by_source[s], config) for s in sorted(by_source)},
        "intervals": asdict(config),
    }
    if by_node:
        summary["by_node"] = {
            n: {"depth": n.count(SEP), **_block(by_node[n], config)} for n in _node_order(by_node, tree)
        }
    return summary


def summarize(replies: Sequence[Reply], items: Iterable[MCQItem], tree: AbilityTree | None = None,
              config: MetricsConfig = MetricsConfig()) -> dict[str, Any]:
    """Overall, per-source and (with a tree) per-node accuracy blocks; JSON-serialisable."""
    return summarize_outcomes(outcomes(replies, items, tree), config, tree)


def node_results(replies: Iterable[Reply], items: Iterable[MCQItem], tree: AbilityTree) -> list[tuple[str, str, bool]]:
    """``(item_id, node_id, correct)`` triples, the input of ``AbilityTree.record``."""
    return [(o.id, o.nodes[0], o.correct) for o in outcomes(replies, items, tree)]


def _paired_block(pairs: Sequence[tuple[Outcome, Outcome]], config: MetricsConfig) -> dict[str, Any]:
    test = paired_difference([b.correct for b, _ in pairs], [a.correct for _, a in pairs], config)
    return {**test, "chance": sum(1 / a.n_options for _, a in pairs) / len(pairs) if pairs else None}


def paired_outcomes(before: Sequence[Outcome], after: Sequence[Outcome], config: MetricsConfig = MetricsConfig(),
                    tree: AbilityTree | None = None) -> dict[str, Any]:
    """Summaries of both scorings of the same items and the paired differences, overall, per source and node."""
    b, a = {o.id: o for o in before}, {o.id: o for o in after}
    if set(b) != set(a):
        missing = sorted(set(b) ^ set(a))
        raise ValueError(f"the two scorings cover different items ({len(missing)} differ, e.g. {missing[:3]})")
    pairs = [(b[i], a[i]) for i in a]
    by_source: dict[str, list[tuple[Outcome, Outcome]]] = defaultdict(list)
    by_node: dict[str, list[tuple[Outcome, Outcome]]] = defaultdict(list)
    for pair in pairs:
        by_source[pair[1].source].append(pair)
        for node in pair[1].nodes:
            by_node[node].append(pair)
    sb, sa = summarize_outcomes(list(b.values()), config, tree), summarize_outcomes(list(a.values()), config, tree)
    overall = _paired_block(pairs, config)
    return {
        **overall,
        "before": sb,
        "after": sa,
        "by_source": {s: _paired_block(by_source[s], config) for s in sorted(by_source)},
        "by_node": {n: {"depth": n.count(SEP), **_paired_block(by_node[n], config)}
                    for n in _node_order(by_node, tree)},
        "intervals": asdict(config),
    }


def paired_summary(before: Sequence[Reply], after: Sequence[Reply], items: Iterable[MCQItem],
                   tree: AbilityTree | None = None, config: MetricsConfig = MetricsConfig()) -> dict[str, Any]:
    """Compare two scorings of the same items (the student before and after an iteration's training)."""
    items = list(items)
    return paired_outcomes(outcomes(before, items, tree), outcomes(after, items, tree), config, tree)


_FIELDS = ["n", "correct", "accuracy", "ci95_lo", "ci95_hi", "chance", "unparsed"]
_PAIRED_FIELDS = ["delta", "delta_ci95_lo", "delta_ci95_hi", "gained", "lost", "bootstrap_p", "mcnemar_p"]


def _cells(block: dict[str, Any] | None) -> list[Any]:
    if block is None:
        return [""] * len(_FIELDS)
    return [block["n"], block["correct"], block["accuracy"], block["ci95"][0], block["ci95"][1],
            block["chance"], block["unparsed"]]


def _paired_cells(block: dict[str, Any] | None) -> list[Any]:
    if block is None:
        return [""] * len(_PAIRED_FIELDS)
    return [block["delta"], block["delta_ci95"][0], block["delta_ci95"][1], block["gained"], block["lost"],
            block["bootstrap_p"], block["mcnemar_p"]]


def _csv_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Rows of per_node.csv: one block per node, or before/after/difference columns for a paired summary."""
    if "before" in summary and "after" in summary:
        before, after = summary["before"].get("by_node", {}), summary["after"].get("by_node", {})
        paired = summary.get("by_node", {})
        header = ["node", "depth", *(f"before_{f}" for f in _FIELDS), *(f"after_{f}" for f in _FIELDS), *_PAIRED_FIELDS]
        rows = [[node, (after.get(node) or before[node])["depth"], *_cells(before.get(node)), *_cells(after.get(node)),
                 *_paired_cells(paired.get(node))] for node in dict.fromkeys([*after, *before])]
        return header, rows
    by_node = summary.get("by_node", {})
    return ["node", "depth", *_FIELDS], [[node, blk["depth"], *_cells(blk)] for node, blk in by_node.items()]


def write_metrics(out_dir: str | Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``metrics.json`` (the summary) and ``per_node.csv`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    header, rows = _csv_rows(summary)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    metrics = atomic_write_json(out_dir / "metrics.json", summary)
    per_node = atomic_write_text(out_dir / "per_node.csv", buf.getvalue())
    logger.info("wrote %s and %s (%d nodes)", metrics, per_node, len(rows))
    return metrics, per_node
