"""Drawing subsets of items that cover every group (a source, a node of the tree) evenly."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Hashable, Sequence

from data.records import MCQItem


def stratified(items: Sequence[MCQItem], n: int, seed: int, group: Callable[[MCQItem], Hashable]) -> list[MCQItem]:
    """``n`` items taken round-robin over the groups ``group(item)`` (sorted), shuffled within each."""
    groups: dict[str, list[MCQItem]] = defaultdict(list)
    for item in sorted(items, key=lambda i: i.id):
        groups[group(item)].append(item)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    queues = [groups[g] for g in sorted(groups)]
    picked: list[MCQItem] = []
    while len(picked) < min(n, len(items)):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return picked
