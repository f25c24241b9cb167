"""Inspect and export ability trees.

    python -m tree show runs/demo                       # newest tree.json in a run dir
    python -m tree show runs/demo/iteration_2/B_student_tree/tree.json --iteration 1
    python -m tree export runs/demo --format graphml -o tree.graphml
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
from rich.tree import Tree as RichTree

from tree.ability_tree import AbilityTree, TreeError
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
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
