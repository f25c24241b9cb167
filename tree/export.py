"""Export an ability tree to formats other tools read.

``json`` (our own, lossless), ``graphml`` and ``gexf`` (yEd, Gephi, Cytoscape; networkx reads both
back), ``dot`` (Graphviz), ``mermaid`` (Markdown renderers), ``html`` (one self-contained file, a
collapsible outline that needs no network or script) and ``png`` (matplotlib, drawn with our own
top-down layout so that Graphviz is not needed). Every visual format colours a node by its posterior
mean accuracy (red 0% → green 100%, grey when it has no data) and shows n and the interval.

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

from data.records import atomic_write_bytes, atomic_write_text
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


def write_gexf(tree: AbilityTree, path: str | Path, iteration: int | None = None) -> Path:
    """GEXF (Gephi's format) of the same flat graph as GraphML; ``networkx.read_gexf`` reads it back."""
    text = "\n".join(nx.generate_gexf(to_graphml_graph(tree, iteration))) + "\n"
    return atomic_write_text(path, text)


def accuracy_colour(mean: float, n: int) -> str:
    """Hex colour of a node: grey without data, else red (0) → amber (0.5) → green (1)."""
    if n == 0:
        return "#d0d0d0"
    stops = [(0.0, (0xE0, 0x4F, 0x4F)), (0.5, (0xF2, 0xC1, 0x4E)), (1.0, (0x5C, 0xB8, 0x5C))]
    m = min(max(mean, 0.0), 1.0)
    (x0, c0), (x1, c1) = (stops[0], stops[1]) if m <= 0.5 else (stops[1], stops[2])
    t = (m - x0) / (x1 - x0)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(c0, c1))


def _summary(tree: AbilityTree, node: str, iteration: int) -> tuple[str, str, int]:
    """(name, "62% [48–75] n=24 ▲+5", n) of a node for labels."""
    st = tree.stats(node, iteration)
    p = st.posterior
    text = f"n={p.n}" if p.n == 0 else f"{p.mean:.0%} [{p.lo:.0%}–{p.hi:.0%}] n={p.n}"
    if st.trend is not None:
        text += f" {'▲' if st.trend >= 0 else '▼'}{st.trend * 100:+.0f}"
    return tree.info(node)["name"], text, p.n


def _preorder(tree: AbilityTree) -> list[tuple[str, int]]:
    """(node, depth) in depth-first order, children sorted by name: one stable order for every format."""
    out: list[tuple[str, int]] = []

    def visit(node: str, depth: int) -> None:
        out.append((node, depth))
        for child in sorted(tree.children(node), key=lambda c: tree.info(c)["name"]):
            visit(child, depth + 1)

    visit(tree.root, 0)
    return out


def to_dot(tree: AbilityTree, iteration: int | None = None) -> str:
    """Graphviz DOT text (``dot -Tsvg tree.dot``)."""
    iteration = tree.latest_iteration(iteration)

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'

    lines = ["digraph ability_tree {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for node, _ in _preorder(tree):
        name, text, n = _summary(tree, node, iteration)
        label = q(name)[:-1] + "\\n" + q(text)[1:]  # DOT's line break between the two quoted halves
        lines.append(f"  {q(node)} [label={label}, fillcolor={q(accuracy_colour(tree.stats(node, iteration).posterior.mean, n))}];")
    for parent, child in sorted(tree.graph.edges):
        lines.append(f"  {q(parent)} -> {q(child)};")
    return "\n".join(lines + ["}"]) + "\n"


def to_mermaid(tree: AbilityTree, iteration: int | None = None) -> str:
    """A Mermaid ``flowchart`` (renders in GitHub/GitLab Markdown inside a mermaid code block)."""
    iteration = tree.latest_iteration(iteration)
    order = _preorder(tree)
    ids = {node: f"n{i}" for i, (node, _) in enumerate(order)}

    def esc(text: str) -> str:  # Mermaid labels: quotes and angle brackets as entities
        return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")

    lines = ["flowchart LR"]
    for node, _ in order:
        name, text, n = _summary(tree, node, iteration)
        lines.append(f'  {ids[node]}["{esc(name)}<br/>{esc(text)}"]')
        colour = accuracy_colour(tree.stats(node, iteration).posterior.mean, n)
        lines.append(f"  style {ids[node]} fill:{colour},stroke:#555")
    for parent, child in sorted(tree.graph.edges, key=lambda e: (ids[e[0]], ids[e[1]])):
        lines.append(f"  {ids[parent]} --> {ids[child]}")
    return "\n".join(lines) + "\n"


def to_html(tree: AbilityTree, iteration: int | None = None) -> str:
    """One self-contained HTML page: a collapsible outline (``<details>``), no script, no network."""
    from html import escape

    iteration = tree.latest_iteration(iteration)

    def render(node: str) -> str:
        name, text, n = _summary(tree, node, iteration)
        info = tree.info(node)
        colour = accuracy_colour(tree.stats(node, iteration).posterior.mean, n)
        head = (f'<span class="dot" style="background:{colour}"></span><b>{escape(name)}</b> '
                f'<span class="st">{escape(text)}</span>')
        extra = ""
        if info.get("description"):
            extra += f'<div class="desc">{escape(info["description"])}</div>'
        if info.get("diagnoses"):
            extra += "<ul class=\"dx\">" + "".join(f"<li>{escape(d)}</li>" for d in info["diagnoses"]) + "</ul>"
        children = sorted(tree.children(node), key=lambda c: tree.info(c)["name"])
        if not children:
            return f'<div class="leaf" title="{escape(node)}">{head}{extra}</div>'
        inner = "".join(render(c) for c in children)
        return f'<details open title="{escape(node)}"><summary>{head}</summary>{extra}{inner}</details>'

    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "details,.leaf{margin-left:1.4em;padding:2px 0}summary{cursor:pointer}"
        ".dot{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.4em;border:1px solid #777}"
        ".st{color:#555;font-size:.9em}.desc{color:#666;font-size:.85em;margin-left:1.6em}"
        ".dx{color:#8a4b00;font-size:.85em;margin:0 0 0 1.6em}"
    )
    title = f"Ability tree: {escape(tree.info(tree.root)['name'])} (iteration {iteration})"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{style}</style></head><body><h1>{title}</h1>"
            "<p>Colour: posterior mean accuracy of the subtree (red 0% → green 100%, grey: no data); "
            "[90% interval], n items, ▲/▼ change since the previous iteration in points.</p>"
            f"{render(tree.root)}</body></html>\n")


def write_png(tree: AbilityTree, path: str | Path, iteration: int | None = None) -> Path:
    """A PNG drawing (matplotlib, Agg backend): leaves spread on the y axis, depth on the x axis."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iteration = tree.latest_iteration(iteration)
    order = _preorder(tree)
    y: dict[str, float] = {}
    next_leaf = 0.0

    def place(node: str) -> float:  # a leaf takes the next row, a parent the middle of its children
        nonlocal next_leaf
        children = sorted(tree.children(node), key=lambda c: tree.info(c)["name"])
        if not children:
            y[node], next_leaf = next_leaf, next_leaf + 1
        else:
            rows = [place(c) for c in children]
            y[node] = (rows[0] + rows[-1]) / 2
        return y[node]

    place(tree.root)
    depth = {node: d for node, d in order}
    width, height = 4.2 * (max(depth.values()) + 1), max(3.0, 0.42 * next_leaf + 1)
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    for parent, child in tree.graph.edges:
        ax.plot([depth[parent], depth[child]], [y[parent], y[child]], color="#999", lw=0.8, zorder=1)
    for node, d in order:
        name, text, n = _summary(tree, node, iteration)
        colour = accuracy_colour(tree.stats(node, iteration).posterior.mean, n)
        ax.text(d, y[node], f"{name}\n{text}", ha="center", va="center", fontsize=7, zorder=2,
                bbox=dict(boxstyle="round,pad=0.3", fc=colour, ec="#555", lw=0.6))
    ax.set_xlim(-0.6, max(depth.values()) + 0.6)
    ax.set_ylim(next_leaf, -1)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


EXPORT_FORMATS = ("json", "graphml", "gexf", "dot", "mermaid", "html", "png")


def export(tree: AbilityTree, path: str | Path, fmt: str, iteration: int | None = None) -> Path:
    """Write ``tree`` to ``path`` in format ``fmt`` (one of ``EXPORT_FORMATS``), atomically."""
    writers = {
        "json": lambda: tree.save(path),
        "graphml": lambda: write_graphml(tree, path, iteration),
        "gexf": lambda: write_gexf(tree, path, iteration),
        "dot": lambda: atomic_write_text(path, to_dot(tree, iteration)),
        "mermaid": lambda: atomic_write_text(path, to_mermaid(tree, iteration)),
        "html": lambda: atomic_write_text(path, to_html(tree, iteration)),
        "png": lambda: write_png(tree, path, iteration),
    }
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; choose from {sorted(writers)}")
    out = writers[fmt]()
    logger.info("wrote %s tree to %s", fmt, out)
    return out
