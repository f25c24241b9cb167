"""What the teacher is told about each target node of the ability tree: its brief and seed exemplars.

Shared by the loop's generate stage and ``python -m synth generate`` so both ask for the same items.
The tree is any object with AbilityTree's ``info``, ``node_of``, ``descendants`` and ``parent``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Iterable, Sequence

from data.records import MCQItem
from synth.generate import NodeBrief


def node_briefs(tree: Any, nodes: Iterable[str]) -> dict[str, NodeBrief]:
    """Name, description, diagnoses and ability path of each node (node ids are root-first paths)."""
    briefs = {}
    for node in nodes:
        info = tree.info(node)
        briefs[node] = NodeBrief(
            node_id=node,
            name=info["name"],
            description=info.get("description", ""),
            diagnoses=tuple(info.get("diagnoses", [])),
            path=tuple(node.split("/")),
        )
    return briefs


def node_exemplars(tree: Any, seed_items: Sequence[MCQItem], nodes: Iterable[str], k: int, seed: int) -> dict[str, list[MCQItem]]:
    """Up to ``k`` seed items per node: the node's own, else its subtree's, else its siblings' subtrees'.

    Drawn with ``seed`` from the pool sorted by id, so the choice does not depend on file order.
    """
    by_node: dict[str, list[MCQItem]] = defaultdict(list)
    for item in seed_items:
        by_node[tree.node_of(item)].append(item)
    out = {}
    for node in nodes:
        pool = list(by_node.get(node, []))
        if len(pool) < k:
            for desc in tree.descendants(node):
                pool += by_node.get(desc, [])
        if len(pool) < k:
            parent = tree.parent(node)
            if parent is not None:
                for desc in tree.descendants(parent):
                    pool += by_node.get(desc, [])
        unique = {i.id: i for i in pool}
        out[node] = random.Random(seed).sample(sorted(unique.values(), key=lambda i: i.id), min(k, len(unique)))
    return out


__all__ = ["node_briefs", "node_exemplars"]
