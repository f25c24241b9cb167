"""What the teacher is told about each target node of the ability tree: its brief and seed exemplars.

Shared by the loop's generate stage and ``python -m synth generate`` so both ask for the same items.
The tree is any object with AbilityTree's ``info``, ``node_of``, ``descendants`` and ``parent``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Iterable, Sequence

from data.records import MCQItem
from synth.dedup import Embed, embedding_text, unit_rows
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


def node_text(tree: Any, node: str) -> str:
    """What a node is about, as one line for an encoder: its path, name and description."""
    info = tree.info(node)
    return " > ".join(node.split("/")) + f": {info['name']}. {info.get('description', '')}".rstrip()


def node_exemplars(tree: Any, seed_items: Sequence[MCQItem], nodes: Iterable[str], k: int, seed: int, embed: Embed | None = None) -> dict[str, list[MCQItem]]:
    """Up to ``k`` seed items per node.

    Without ``embed``: the node's own, else its subtree's, else its siblings' subtrees', drawn with ``seed``
    from the pool sorted by id (so the choice does not depend on file order). With ``embed`` (texts ->
    embeddings): the node's subtree's items nearest in meaning to the node (``node_text``), then, when
    those are fewer than ``k``, the nearest of all other seed items, so a leaf with few items of its own
    is shown related questions rather than random siblings.
    """
    by_node: dict[str, list[MCQItem]] = defaultdict(list)
    for item in seed_items:
        by_node[tree.node_of(item)].append(item)
    nodes = list(nodes)
    if embed is not None:
        return _nearest_exemplars(tree, seed_items, by_node, nodes, k, embed)
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


def _nearest_exemplars(tree: Any, seed_items: Sequence[MCQItem], by_node: dict[str, list[MCQItem]], nodes: list[str], k: int, embed: Embed) -> dict[str, list[MCQItem]]:
    items = sorted({i.id: i for i in seed_items}.values(), key=lambda i: i.id)
    if not items or not nodes:
        return {node: [] for node in nodes}
    item_vecs = unit_rows(embed([embedding_text(i.question, i.options) for i in items]))  # (N, D)
    node_vecs = unit_rows(embed([node_text(tree, n) for n in nodes]))  # (M, D)
    row = {i.id: r for r, i in enumerate(items)}
    out = {}
    for m, node in enumerate(nodes):
        cos = item_vecs @ node_vecs[m]
        own = {i.id for d in (node, *tree.descendants(node)) for i in by_node.get(d, [])}
        ranked = sorted(items, key=lambda i: (i.id not in own, -float(cos[row[i.id]]), i.id))
        out[node] = ranked[: min(k, len(ranked))]
    return out


__all__ = ["node_briefs", "node_exemplars", "node_text"]
