"""Accuracy with 95% intervals: overall, per source, per tree node (a node counts its whole subtree).

Wilson score intervals, because eval sets per node are small (tens of items) and accuracies of a
small student sit near chance, where the normal approximation is poor. Every block carries the
chance level (the mean of 1 / number of options), the number a reader must compare against.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.records import MCQItem, atomic_write_json, atomic_write_text
from eval.records import Reply
from tree.ability_tree import AbilityTree

logger = logging.getLogger(__name__)

Z95 = 1.959963984540054  # standard normal 97.5% quantile


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


def _block(rows: Sequence[tuple[Reply, MCQItem]]) -> dict[str, Any]:
    n = len(rows)
    correct = sum(r.correct for r, _ in rows)
    lo, hi = wilson_interval(correct, n)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "ci95": [lo, hi],
        "chance": sum(1 / len(it.options) for _, it in rows) / n if n else None,
        "unparsed": sum(r.parsed_answer is None for r, _ in rows),
    }


def _join(replies: Iterable[Reply], items: Iterable[MCQItem]) -> list[tuple[Reply, MCQItem]]:
    by_id = {it.id: it for it in items}
    rows = []
    for r in replies:
        if r.id not in by_id:
            raise ValueError(f"reply {r.id!r} has no matching item")
        rows.append((r, by_id[r.id]))
    return rows


def node_results(replies: Iterable[Reply], items: Iterable[MCQItem], tree: AbilityTree) -> list[tuple[str, str, bool]]:
    """``(item_id, node_id, correct)`` triples, the input of ``AbilityTree.record``."""
    return [(r.id, tree.node_of(it), r.correct) for r, it in _join(replies, items)]


def summarize(replies: Sequence[Reply], items: Iterable[MCQItem], tree: AbilityTree | None = None) -> dict[str, Any]:
    """Overall, per-source and (with a tree) per-node accuracy blocks; JSON-serialisable."""
    rows = _join(replies, items)
    by_source: dict[str, list[tuple[Reply, MCQItem]]] = defaultdict(list)
    for row in rows:
        by_source[row[1].source].append(row)
    summary = {**_block(rows), "by_source": {s: _block(by_source[s]) for s in sorted(by_source)}}
    if tree is not None:
        by_node: dict[str, list[tuple[Reply, MCQItem]]] = defaultdict(list)
        for row in rows:
            node = tree.node_of(row[1])
            for member in (node, *tree.ancestors(node)):
                by_node[member].append(row)
        summary["by_node"] = {n: {"depth": tree.depth(n), **_block(by_node[n])} for n in tree.nodes() if n in by_node}
    return summary


def mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test: P(a split of the discordant pairs at least this uneven | no change)."""
    m = gained + lost
    if m == 0:
        return 1.0
    k = min(gained, lost)
    tail = math.fsum(math.comb(m, i) for i in range(k + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def paired_summary(before: Sequence[Reply], after: Sequence[Reply], items: Iterable[MCQItem],
                   tree: AbilityTree | None = None) -> dict[str, Any]:
    """Compare two scorings of the same items (the student before and after an iteration's training)."""
    items = list(items)
    b, a = {r.id: r for r in before}, {r.id: r for r in after}
    if set(b) != set(a):
        missing = sorted(set(b) ^ set(a))
        raise ValueError(f"before and after replies cover different items, e.g. {missing[:3]}")
    gained = sum(1 for i in a if a[i].correct and not b[i].correct)
    lost = sum(1 for i in a if b[i].correct and not a[i].correct)
    sb, sa = summarize(before, items, tree), summarize(after, items, tree)
    return {
        "n": sa["n"],
        "chance": sa["chance"],
        "before": sb,
        "after": sa,
        "delta": (sa["accuracy"] - sb["accuracy"]) if sa["n"] else None,
        "gained": gained,
        "lost": lost,
        "mcnemar_p": mcnemar_exact_p(gained, lost),
    }


def _csv_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Rows of per_node.csv: one block per node, or before/after columns for a paired summary."""
    fields = ["n", "correct", "accuracy", "ci95_lo", "ci95_hi", "chance", "unparsed"]

    def cells(block: dict[str, Any] | None) -> list[Any]:
        if block is None:
            return [""] * len(fields)
        return [block["n"], block["correct"], block["accuracy"], block["ci95"][0], block["ci95"][1],
                block["chance"], block["unparsed"]]

    if "before" in summary and "after" in summary:
        before, after = summary["before"].get("by_node", {}), summary["after"].get("by_node", {})
        header = ["node", "depth"] + [f"before_{f}" for f in fields] + [f"after_{f}" for f in fields] + ["delta"]
        rows = []
        for node in dict.fromkeys([*after, *before]):
            blk_b, blk_a = before.get(node), after.get(node)
            delta = blk_a["accuracy"] - blk_b["accuracy"] if blk_a and blk_b and blk_a["n"] and blk_b["n"] else ""
            depth = (blk_a or blk_b)["depth"]
            rows.append([node, depth, *cells(blk_b), *cells(blk_a), delta])
        return header, rows
    by_node = summary.get("by_node", {})
    return ["node", "depth", *fields], [[node, blk["depth"], *cells(blk)] for node, blk in by_node.items()]


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
