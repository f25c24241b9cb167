"""Build, inspect and export ability trees.

    python -m tree init --domain clinical --teacher smollm2 -o clinical_tree.json   # the teacher proposes one
    python -m tree build --data ../shared/data/clinical/mmlu_dev.jsonl -o tree.json  # from items' ability paths
    python -m tree record tree.json --replies out/replies.jsonl --data a.jsonl      # graded results per node
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
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree as RichTree

from data.cli import add_dataclass_options, dataclass_from_args
from engines.smollm2 import ModelNotFoundError
from tree.ability_tree import AbilityTree, TreeError
from tree.build import build_tree
from tree.diff import NodeChange, diff_trees
from tree.export import EXPORT_FORMATS, export
from tree.propose import ProposeConfig, propose_tree

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
        if p.n == 0:
            return f"[bold]{name}[/]  [dim]no data[/]"
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
    parser = argparse.ArgumentParser(prog="python -m tree", description="Build, inspect and export ability trees.")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="the teacher proposes a tree for a domain, level by level")
    where = init.add_mutually_exclusive_group(required=True)
    where.add_argument("--domain", help="domain preset (clinical) or the path of a domain.yaml: its root and description")
    where.add_argument("--root", help="name of the root ability, for a domain without a preset")
    init.add_argument("--description", default=None, help="what the domain covers (default: the preset's description)")
    init.add_argument("--teacher", required=True, help="model spec: smollm2, hf:PATH, vllm:PATH, openai:URL#MODEL")
    init.add_argument("--engine", default="auto", help="backend for local models: auto, transformers, vllm")
    init.add_argument("-o", "--output", type=Path, required=True, help="tree JSON to write")
    init.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    add_dataclass_options(init, ProposeConfig, skip=("example_area",))
    build = sub.add_parser("build", help="a tree from items' ability paths; the teacher places items without one")
    build.add_argument("--data", type=Path, nargs="+", required=True, help="MCQ JSONL files")
    build.add_argument("--root", default="clinical medicine", help="root ability (default: clinical medicine)")
    build.add_argument("--base", type=Path, default=None, help="start from this tree JSON (e.g. from tree init)")
    build.add_argument("--teacher", default=None,
                       help="model spec that places items without an ability path (default: they go under their source's node)")
    build.add_argument("--engine", default="auto", help="backend for local models: auto, transformers, vllm")
    build.add_argument("-o", "--output", type=Path, required=True, help="tree JSON to write")
    build.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    rec = sub.add_parser("record", help="store graded replies (python -m eval mcq --out DIR writes them) as one iteration of a tree")
    rec.add_argument("path", type=Path, help="tree JSON file to update")
    rec.add_argument("--replies", type=Path, required=True, help="replies.jsonl with id and correct per item")
    rec.add_argument("--data", type=Path, nargs="+", required=True, help="the MCQ files the replies answer")
    rec.add_argument("--iteration", type=int, default=None, help="iteration to store them as (default: latest + 1)")
    rec.add_argument("-o", "--output", type=Path, default=None, help="write here instead of updating PATH")
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


def _refuse_overwrite(path: Path, force: bool) -> None:
    from data.records import check_writable

    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it")
    check_writable(path, "--output", folder=False)


def _load_items(paths: Sequence[Path]) -> list:
    from data.records import DataError, read_items

    items = read_items(paths)
    if not items:
        raise DataError(f"no items in {', '.join(map(str, paths))}")
    return items


def run_init(args: argparse.Namespace, console: Console) -> int:
    from data.domains import get_domain

    _refuse_overwrite(args.output, args.force)
    config = dataclass_from_args(ProposeConfig, args)
    if args.domain:
        domain = get_domain(args.domain)
        root, description = domain.root, domain.description if args.description is None else args.description
    else:
        root, description = args.root, args.description or ""
    from engines import load_engine

    engine = load_engine(args.teacher, engine=args.engine)
    try:
        t0 = time.perf_counter()
        result = propose_tree(engine, root, description, config)
    finally:
        engine.close()
    result.tree.save(args.output)
    reasons = Counter(r.reason.split(" (")[0] for r in result.rejected)
    tree = result.tree
    console.print(render_tree(tree))
    depth_counts = Counter(tree.depth(n) for n in tree.nodes())
    console.print(f"{len(tree)} nodes ({', '.join(f'{depth_counts[d]} at depth {d}' for d in sorted(depth_counts))}), "
                  f"{len(tree.leaves())} leaves; {result.replies} teacher replies in {result.calls} engine calls, "
                  f"{time.perf_counter() - t0:.1f} s")
    if reasons:
        console.print("rejected lines: " + ", ".join(f"{n} {escape(r)}" for r, n in reasons.most_common()))
    console.print(f"wrote {escape(str(args.output))}")
    if len(tree) == 1:
        print(f"warning: the teacher proposed no usable sub-area of {root!r}; the tree is the root alone", file=sys.stderr)
    return 0


def run_build(args: argparse.Namespace, console: Console) -> int:
    if not args.base and not args.root.strip():
        raise ValueError("--root must name the root ability (or give --base)")
    _refuse_overwrite(args.output, args.force)
    items = _load_items(args.data)
    base = AbilityTree.load(args.base) if args.base else None
    engine = None
    if args.teacher and any(not i.ability_path for i in items):
        from engines import load_engine

        engine = load_engine(args.teacher, engine=args.engine)
    try:
        result = build_tree(items, root=base.root if base else args.root, base=base, engine=engine)
    finally:
        if engine is not None:
            engine.close()
    result.tree.save(args.output)
    without = sum(not i.ability_path for i in items)
    console.print(f"{len(items)} items ({len(items) - without} with an ability path) → {len(result.tree)} nodes")
    if without:
        console.print(f"items without a path: {len(result.classified)} placed by the teacher, "
                      f"{without - len(result.classified)} under their source's node")
    console.print(f"wrote {escape(str(args.output))}")
    return 0


def run_record(args: argparse.Namespace, console: Console) -> int:
    from data.records import Reply, read_jsonl

    tree = AbilityTree.load(args.path)
    items = {i.id: i for i in _load_items(args.data)}
    replies = read_jsonl(args.replies, Reply)
    missing = [r.id for r in replies if r.id not in items]
    if missing:
        raise ValueError(f"{args.replies}: {len(missing)} replies answer items not in --data (first: {missing[0]!r})")
    its = tree.iterations
    iteration = args.iteration if args.iteration is not None else (its[-1] + 1 if its else 1)
    tree.record([(r.id, tree.node_of(items[r.id]), r.correct) for r in replies], iteration)
    out = tree.save(args.output or args.path)
    console.print(f"recorded {len(replies)} replies as iteration {iteration}; wrote {escape(str(out))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        if args.command in ("init", "build", "record"):
            return {"init": run_init, "build": run_build, "record": run_record}[args.command](args, console)
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
    except (TreeError, ValueError, OSError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
