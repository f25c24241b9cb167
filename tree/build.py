"""Build the tree a run starts from: items' ability paths, an optional base tree, and the teacher's
placement of the items that have no path.

Items with an ``ability_path`` create their nodes (``AbilityTree.add_items``). Items without one are
classified into the tree as it then stands (``tree.classify``, one batched engine call per level) and
listed at the node chosen, so every later stage finds them there through ``AbilityTree.node_of``. An
item whose classification fell back goes under its source benchmark's node, created if needed (the
deterministic fallback), and the reason is kept. Without an engine, every pathless item goes under its
source's node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from data.records import MCQItem
from engines.base import Engine
from tree.ability_tree import AbilityTree
from tree.classify import ClassifyConfig, classify_items

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    tree: AbilityTree
    classified: dict[str, str] = field(default_factory=dict)  # item id -> node chosen by the teacher
    fallbacks: dict[str, str] = field(default_factory=dict)  # item id -> why it went to its source's node
    calls: int = 0


def build_tree(
    items: Sequence[MCQItem],
    *,
    root: str = "clinical medicine",
    base: AbilityTree | None = None,
    engine: Engine | None = None,
    classify_config: ClassifyConfig | None = None,
) -> BuildResult:
    """The tree for ``items`` (on top of ``base`` when given; ``base`` is changed in place)."""
    tree = base if base is not None else AbilityTree(root)
    with_path = [i for i in items if i.ability_path]
    without = [i for i in items if not i.ability_path]
    tree.add_items(with_path)
    result = BuildResult(tree)
    if not without:
        return result
    if engine is None or len(tree.children(tree.root)) == 0:
        why = "no teacher given" if engine is None else "the tree has no nodes below the root to choose from"
        logger.info("%d item(s) without an ability path go under their source's node (%s)", len(without), why)
        tree.add_items(without)
        return result
    placed = classify_items(engine, tree, without, classify_config)
    result.calls = placed.calls
    result.fallbacks = dict(placed.fallbacks)
    for item in without:
        if item.id in placed.fallbacks:
            tree.add_items([item])
        else:
            result.classified[item.id] = tree.place(item.id, placed.nodes[item.id])
    logger.info("placed %d item(s) without a path by the teacher, %d under their source's node",
                len(result.classified), len(result.fallbacks))
    return result
