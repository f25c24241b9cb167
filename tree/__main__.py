"""Inspect and export ability trees.

    python -m tree show runs/demo                       # newest tree.json in a run dir
    python -m tree show runs/demo/iteration_2/B_student_tree/tree.json --iteration 1
    python -m tree export runs/demo --format graphml -o tree.graphml
    python -m tree diff runs/demo/iteration_1 runs/demo/iteration_2   # which nodes improved or fell
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree as RichTree

from tree.ability_tree import AbilityTree, TreeError
from tree.diff import NodeChange, diff_trees
from tree.export import EXPORT_FORMATS, export

logger = logging.getLogger(__name__)


def find_tree_file(path: Path) -> Path:
    """``path`` itself if it is a file; in a folder, the newest ``tree.json`` (highest iteration_N, then
    modification time), else the run's ``tree/initial.json``."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise TreeError(f"{path}: no such file or folder")

    def iteration_of(p: Path) -> int:
        nums = [int(m.group(1)) for part in p.parts if (m := re.fullmatch(r"iteration_(\d+)", part))]
        return nums[-1] if nums else -1

    found = sorted(path.rglob("tree.json"), key=lambda p: (iteration_of(p), p.stat().st_mtime, str(p)))
    if found:
        return found[-1]
    for initial in (path / "tree" / "initial.json", path / "initial.json"):
        if initial.is_file():
            return initial
    raise TreeError(f"{path}: no tree.json (or tree/initial.json) inside")


def _style(mean: float, n: int) -> str:
    if n == 0:
        return "dim"
    return "red" if mean < 0.5 else "yellow" if mean < 0.7 else "green"


def render_tree(tree: AbilityTree, iteration: int | None = None, level: float = 0.9) -> RichTree:
    """A rich Tree with accuracy, interval, n and trend per node; linked nodes are expanded once."""
    iteration = tree.latest_iteration(iteration)
    expanded: set[str] = set()

    def label(node: str) -> str:
        st = tree.stats(node, iteration, level)
        p = st.posterior
        trend = "" if st.trend is None else (f"  [green]▲ {st.trend:+.3f}[/]" if st.trend >= 0
                                             else f"  [red]▼ {st.trend:+.3f}[/]")
        name = escape(tree.info(node)["name"])
        return (f"[bold]{name}[/]  [{_style(p.mean, p.n)}]acc {p.mean:.3f} [{p.lo:.3f}, {p.hi:.3f}][/]"
                f"  n={p.n}{trend}")

    def add(branch: RichTree, node: str) -> None:
        if node in expanded:
            branch.add(f"[dim]↪ {escape(node)} (shown above)[/]")
            return
        expanded.add(node)
        child = branch.add(label(node))
        for diagnosis in tree.info(node)["diagnoses"]:
            child.add(f"[italic dim]{escape(diagnosis)}[/]")
        for sub in tree.children(node):
            add(child, sub)

    top = RichTree(f"{label(tree.root)}  [dim](iteration {iteration}, {int(level * 100)}% interval)[/]")
    for diagnosis in tree.info(tree.root)["diagnoses"]:
        top.add(f"[italic dim]{escape(diagnosis)}[/]")
    expanded.add(tree.root)
    for sub in tree.children(tree.root):
        add(top, sub)
    return top


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tree", description="Inspect and export ability trees.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the tree with accuracy, interval, n and trend per node")
    show.add_argument("path", type=Path, help="tree JSON file, or a run / iteration folder")
    show.add_argument("--iteration", type=int, default=None, help="iteration to show (default: latest)")
    show.add_argument("--level", type=float, default=0.9, help="credible interval level (default 0.9)")
    exp = sub.add_parser("export", help="write the tree in another format")
    exp.add_argument("path", type=Path, help="tree JSON file, or a run / iteration folder")
    exp.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    exp.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    exp.add_argument("--iteration", type=int, default=None, help="iteration whose stats to attach")
    dif = sub.add_parser("diff", help="per node: accuracy in A and in B, the change, and P(B > A)")
    dif.add_argument("a", type=Path, help="tree JSON file, or a run / iteration folder (before)")
    dif.add_argument("b", type=Path, help="tree JSON file, or a run / iteration folder (after)")
    dif.add_argument("--iteration-a", type=int, default=None, help="iteration of A (default: its latest)")
    dif.add_argument("--iteration-b", type=int, default=None, help="iteration of B (default: its latest)")
    dif.add_argument("--confidence", type=float, default=0.9,
                     help="P(B > A) needed to call a node improved (and 1 - it to call it fell); default 0.9")
    return parser


def render_diff(changes: Sequence[NodeChange]) -> Table:
    table = Table(title="ability tree diff (B vs A)")
    for col in ("node", "acc A (n)", "acc B (n)", "change", "P(B > A)", "verdict"):
        table.add_column(col, justify="left" if col in ("node", "verdict") else "right")
    colours = {"improved": "green", "fell": "red", "unclear": "dim", "added": "cyan", "removed": "magenta"}

    def acc(mean: float | None, n: int) -> str:
        return "–" if mean is None else "no data" if n == 0 else f"{mean:.1%} ({n})"

    for c in changes:
        delta = "–" if c.delta is None or not (c.n_a and c.n_b) else f"{c.delta * 100:+.1f} pt"
        p = "–" if c.p_better is None else f"{c.p_better:.2f}"
        table.add_row(escape(c.node), acc(c.mean_a, c.n_a), acc(c.mean_b, c.n_b), delta, p,
                      f"[{colours[c.verdict]}]{c.verdict}[/]")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        if args.command == "diff":
            a, b = find_tree_file(args.a), find_tree_file(args.b)
            changes = diff_trees(AbilityTree.load(a), AbilityTree.load(b), args.iteration_a, args.iteration_b, args.confidence)
            console.print(f"[dim]A: {escape(str(a))}\nB: {escape(str(b))}[/]")
            console.print(render_diff(changes))
            counts = {v: sum(c.verdict == v for c in changes) for v in ("improved", "fell", "unclear", "added", "removed")}
            console.print(", ".join(f"{n} {v}" for v, n in counts.items() if n))
            return 0
        source = find_tree_file(args.path)
        tree = AbilityTree.load(source)
        if args.command == "show":
            if not 0.0 < args.level < 1.0:
                raise ValueError(f"--level must be in (0, 1), got {args.level}")
            console.print(f"[dim]{escape(str(source))}[/]")
            console.print(render_tree(tree, args.iteration, args.level))
        else:
            out = export(tree, args.output, args.format, args.iteration)
            console.print(f"wrote {escape(str(out))}")
    except (TreeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
