"""Export an ability tree to formats other tools read: JSON (our own, lossless) and GraphML.

GraphML allows only scalar attributes, so lists and dicts (examples, diagnoses, per-iteration counts)
are written as JSON strings, and the subtree statistics of the chosen iteration are added as plain
numbers so that graph viewers (yEd, Gephi, Cytoscape) can colour nodes by accuracy directly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import networkx as nx

from data.records import atomic_write_text
from tree.ability_tree import AbilityTree

logger = logging.getLogger(__name__)


def to_graphml_graph(tree: AbilityTree, iteration: int | None = None) -> nx.DiGraph:
    """A copy of the tree's graph with GraphML-legal attributes only (str, int, float, bool)."""
    iteration = tree.latest_iteration(iteration)
    out = nx.DiGraph()
    out.graph.update(root=tree.root, iteration=iteration)
    for node, attrs in tree.graph.nodes(data=True):
        st = tree.stats(node, iteration)
        flat: dict[str, Any] = {
            "name": attrs["name"],
            "description": attrs["description"],
            "examples": json.dumps(attrs["examples"], ensure_ascii=False),
            "diagnoses": json.dumps(attrs["diagnoses"], ensure_ascii=False),
            "stats": json.dumps({str(k): v for k, v in attrs["stats"].items()}),
            "n": st.posterior.n,
            "correct": st.posterior.correct,
            "accuracy_mean": st.posterior.mean,
            "accuracy_lo": st.posterior.lo,
            "accuracy_hi": st.posterior.hi,
        }
        if st.trend is not None:
            flat["trend"] = st.trend
        out.add_node(node, **flat)
    out.add_edges_from(tree.graph.edges)
    return out


def write_graphml(tree: AbilityTree, path: str | Path, iteration: int | None = None) -> Path:
    """Write the tree as GraphML, atomically; ``networkx.read_graphml`` reads it back."""
    text = "\n".join(nx.generate_graphml(to_graphml_graph(tree, iteration), encoding="utf-8")) + "\n"
    return atomic_write_text(path, text)


def export(tree: AbilityTree, path: str | Path, fmt: str, iteration: int | None = None) -> Path:
    """Write ``tree`` to ``path`` in format ``fmt`` (``json`` or ``graphml``)."""
    writers = {"json": lambda: tree.save(path), "graphml": lambda: write_graphml(tree, path, iteration)}
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; choose from {sorted(writers)}")
    out = writers[fmt]()
    logger.info("wrote %s tree to %s", fmt, out)
    return out
