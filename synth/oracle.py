"""Items written by the domain's oracle (``data.oracle``) instead of the teacher, for the same allocation.

The control arm of ``benchmarks/bench_allocation.py``: with items whose keys and worked solutions are
right by construction, a difference between two allocations measures what aiming the data does, apart
from how well the teacher writes it. The items carry their worked solution as ``solution`` (the label
stage trains on it instead of asking the teacher) and as ``explanation``. They go through validation's
gates (duplicates, contamination, the verifier) like the teacher's; no agent needs to judge them
(``--acceptance none``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from data.oracle import Oracle
from data.records import GeneratedItem
from synth.generate import GenerationResult, item_id

logger = logging.getLogger(__name__)

GENERATORS = ("teacher", "oracle")  # who writes the generated items (the loop's --generator)


def oracle_items(oracle: Oracle, allocation: Mapping[str, int], seed: int, iteration: int, exclude: Iterable[str] = (),
                 name: str = "oracle") -> GenerationResult:
    """``allocation[node]`` items per node from ``oracle`` (fewer where a node has fewer distinct questions
    left), none of whose questions is in ``exclude`` (the domain's pools); ids as the teacher's items'
    (``synth.generate.item_id``), so the rest of the loop treats them alike. ``name`` is recorded as the
    items' ``generator``."""
    held = frozenset(exclude)
    items: list[GeneratedItem] = []
    per_node: dict[str, dict[str, int]] = {}
    for node, count in allocation.items():
        if count <= 0:
            continue
        written = oracle(node, count, seed + 1009 * iteration, held)
        for slot, item in enumerate(written[:count]):
            items.append(GeneratedItem(
                **{**item.model_dump(), "id": item_id(iteration, node, slot)},
                explanation=item.solution or "", target_node=node, generator=name, seed=seed,
            ))
        per_node[node] = {"requested": count, "parsed": min(count, len(written)), "failed_attempts": 0}
    short = {n: c["requested"] - c["parsed"] for n, c in per_node.items() if c["requested"] > c["parsed"]}
    if short:
        logger.info("oracle wrote fewer items than asked for %d node(s): %s", len(short), short)
    report: dict[str, Any] = {"requested": sum(c["requested"] for c in per_node.values()), "parsed": len(items), "attempts": len(items),
                              "parse_rate": 1.0, "rounds": 1, "per_node": per_node, "failure_reasons": {}, "generator": name,
                              "short": short}
    return GenerationResult(items, [], report)


__all__ = ["GENERATORS", "oracle_items"]
