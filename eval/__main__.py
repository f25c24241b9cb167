"""Evaluate models on MCQ files, compare two evaluations, and write the report of a loop run.

    python -m eval mcq --model smollm2 --data ../shared/data/clinical/*_dev.jsonl --out ev/smollm2
    python -m eval mcq --model "smollm2?layers=6" --data ../shared/data/clinical/*_dev.jsonl --out ev/l6
    python -m eval compare ev/smollm2 ev/l6          # paired: difference, interval, p-values
    python -m eval compare runs/x/iteration_1 runs/x  # the student after iteration 1 vs the newest one
    python -m eval report runs/x                      # report.md, report.html, plots/*.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from data.records import DataError, MCQItem, check_writable, read_items, write_jsonl
from engines.base import Engine
from engines.smollm2 import ModelNotFoundError
from eval.mcq import MODES, ScoreResult, assign_nodes, score_items
from eval.metrics import MetricsConfig, summarize, write_metrics
from eval.report import fmt_change, fmt_p, fmt_pct
from tree.ability_tree import AbilityTree, TreeError

logger = logging.getLogger(__name__)


def load_data(paths: Sequence[Path], limit: int | None) -> list[MCQItem]:
    """Items of every file (ids unique across files), at most ``limit`` from each file."""
    items: list[MCQItem] = []
    seen: dict[str, Path] = {}
    for path in paths:
        file_items = read_items([path])
        for item in file_items[:limit] if limit else file_items:
            if item.id in seen:
                raise DataError(f"{path}: duplicate id {item.id!r} (also in {seen[item.id]})")
            seen[item.id] = path
            items.append(item)
    return items


def evaluate_files(
    engine: Engine,
    items: Sequence[MCQItem],
    *,
    mode: str = "logprob",
    shots: int = 0,
    batch_size: int | None = None,
    tree: AbilityTree | None = None,
    out: Path | None = None,
    metrics: MetricsConfig = MetricsConfig(),
) -> tuple[ScoreResult, dict[str, Any]]:
    """Score, summarise (per node of ``tree``, else of a tree built from the items) and write outputs.

    ``out`` receives per_item.jsonl (one reply per item, with its source, option count and node),
    metrics.json and per_node.csv.
    """
    result = score_items(engine, items, mode=mode, shots=shots, batch_size=batch_size)
    tree = tree if tree is not None else AbilityTree.from_items(items)
    replies = assign_nodes(result.replies, items, tree)
    summary = summarize(replies, items, tree, metrics)
    summary.update(model=engine.name, mode=mode, shots=shots, items_per_s=result.items_per_s,
                   seconds=result.seconds)
    if out is not None:
        write_jsonl(out / "per_item.jsonl", replies)
        write_metrics(out, summary)
    result.replies = replies
    return result, summary


def _ci(ci: Sequence[float]) -> str:
    return f"[{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]"


def _node_rows(summary: dict[str, Any], depth: int) -> list[tuple[str, dict[str, Any]]]:
    return [("  " * blk["depth"] + name.rsplit("/", 1)[-1], blk)
            for name, blk in summary.get("by_node", {}).items() if 0 < blk["depth"] <= depth]


def results_table(summary: dict[str, Any], depth: int = 0) -> Table:
    table = Table(title=f"{summary['model']} ({summary['mode']}, {summary['shots']}-shot)")
    for col, justify in [("source / node", "left"), ("n", "right"), ("accuracy", "right"), ("95% CI", "right"),
                         ("chance", "right"), ("unparsed", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    sections = [list(summary["by_source"].items()), _node_rows(summary, depth), [("all", summary)]]
    sections = [s for s in sections if s]
    for k, rows in enumerate(sections):
        for i, (name, blk) in enumerate(rows):
            table.add_row(name, str(blk["n"]), fmt_pct(blk["accuracy"]), _ci(blk["ci95"]), fmt_pct(blk["chance"]),
                          str(blk["unparsed"]), end_section=i == len(rows) - 1 and k < len(sections) - 1)
    return table


def compare_table(summary: dict[str, Any], depth: int = 0) -> Table:
    a, b = summary["a"]["label"], summary["b"]["label"]
    table = Table(title=f"A = {a}\nB = {b}")
    for col in ("source / node", "n", "chance", "A [95% CI]", "B [95% CI]", "B − A [95% CI]", "A only / B only", "p boot", "p McNemar"):
        table.add_column(col, justify="left" if col == "source / node" else "right")
    def row(name: str, pa: dict[str, Any], pb: dict[str, Any], d: dict[str, Any], **kw: Any) -> None:
        table.add_row(name, str(d["n"]), fmt_pct(d["chance"]), f"{fmt_pct(pa['accuracy'])} {_ci(pa['ci95'])}",
                      f"{fmt_pct(pb['accuracy'])} {_ci(pb['ci95'])}", fmt_change(d["delta"], d["delta_ci95"]),
                      f"{d['lost']} / {d['gained']}", fmt_p(d["bootstrap_p"]), fmt_p(d["mcnemar_p"]), **kw)
    sources = list(summary["by_source"])
    for i, s in enumerate(sources):
        row(s, summary["before"]["by_source"][s], summary["after"]["by_source"][s], summary["by_source"][s],
            end_section=i == len(sources) - 1)
    nodes = [(n, blk) for n, blk in summary["by_node"].items() if 0 < blk["depth"] <= depth]
    for i, (n, blk) in enumerate(nodes):
        row("  " * blk["depth"] + n.rsplit("/", 1)[-1], summary["before"]["by_node"][n], summary["after"]["by_node"][n],
            blk, end_section=i == len(nodes) - 1)
    row("all", summary["before"], summary["after"], summary)
    return table


def _add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    d = MetricsConfig()
    parser.add_argument("--interval", choices=("bootstrap", "wilson"), default=d.interval,
                        help=f"95%% interval of each accuracy (default {d.interval}: percentile bootstrap)")
    parser.add_argument("--resamples", type=int, default=d.resamples, help=f"bootstrap resamples (default {d.resamples})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"bootstrap seed (default {d.seed})")


def _metrics_config(args: argparse.Namespace) -> MetricsConfig:
    return MetricsConfig(interval=args.interval, resamples=args.resamples, seed=args.seed)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description="Evaluate models on MCQ files, compare evaluations, report loop runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    mcq = sub.add_parser("mcq", help="score multiple-choice questions; prints accuracy per source with intervals and chance")
    mcq.add_argument("--model", required=True, help="model spec: smollm2, smollm2?layers=6, hf:PATH, vllm:PATH, openai:URL#MODEL")
    mcq.add_argument("--data", type=Path, nargs="+", required=True, help="MCQ JSONL files")
    mcq.add_argument("--mode", choices=MODES, default="logprob",
                     help="logprob: the answer letter with the highest log-prob after 'The answer is' (default); "
                          "generate: greedy reply, letter read from the text (unreadable replies counted as unparsed)")
    mcq.add_argument("--limit", type=int, default=None, help="at most N items from each file")
    mcq.add_argument("--shots", type=int, default=0, help="solved examples before each question, from the same data, never the question itself")
    mcq.add_argument("--batch-size", type=int, default=None, help="prompts per engine call (default: all at once; the engine batches within)")
    mcq.add_argument("--engine", default="auto", help="backend: auto, transformers, vllm, openai (default auto: vLLM where CUDA and vllm are present, else transformers)")
    mcq.add_argument("--tree", type=Path, default=None, help="ability tree JSON: metrics per node (default: nodes from the items' ability paths)")
    mcq.add_argument("--depth", type=int, default=1, help="tree depth of the node rows in the printed table (default 1; 0: none)")
    mcq.add_argument("--out", type=Path, default=None, help="write per_item.jsonl, metrics.json and per_node.csv here")
    _add_metrics_flags(mcq)

    cmp = sub.add_parser("compare", help="paired comparison of two evaluations on the items both scored")
    cmp.add_argument("a", type=Path, help="eval mcq --out folder, loop run, iteration or G_eval folder, or a replies .jsonl")
    cmp.add_argument("b", type=Path, help="the same kinds; differences are B − A")
    cmp.add_argument("--depth", type=int, default=1, help="tree depth of the node rows in the table (default 1; 0: none)")
    cmp.add_argument("--out", type=Path, default=None, help="write metrics.json and per_node.csv of the comparison here")
    _add_metrics_flags(cmp)

    rep = sub.add_parser("report", help="write report.md, report.html and plots/*.png of a loop run")
    rep.add_argument("run_dir", type=Path, help="the run directory (runs/<name>)")
    rep.add_argument("--out", type=Path, default=None, help="write here instead of into the run directory")
    _add_metrics_flags(rep)
    return parser


def _check(args: argparse.Namespace) -> None:
    for flag, value, least in (("--limit", getattr(args, "limit", None), 1), ("--batch-size", getattr(args, "batch_size", None), 1),
                               ("--shots", getattr(args, "shots", None), 0), ("--depth", getattr(args, "depth", None), 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")


def run_mcq(args: argparse.Namespace, metrics: MetricsConfig, console: Console) -> int:
    try:
        items = load_data(args.data, args.limit)
        if not items:
            raise DataError(f"no items in {', '.join(map(str, args.data))}")
        tree = AbilityTree.load(args.tree) if args.tree else None
        if args.out:
            check_writable(args.out, "--out")
        # torch/transformers are imported only once the inputs are known good
        from engines import load_engine

        engine = load_engine(args.model, engine=args.engine)
    except (DataError, TreeError, ValueError, OSError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result, summary = evaluate_files(engine, items, mode=args.mode, shots=args.shots, batch_size=args.batch_size,
                                         tree=tree, out=args.out, metrics=metrics)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    console.print(results_table(summary, args.depth))
    console.print(f"{len(items)} items in {result.seconds:.1f} s: {result.items_per_s:.2f} items/s "
                  f"({args.mode} mode, {metrics.interval} intervals)")
    if args.out:
        console.print(f"wrote {args.out}/per_item.jsonl, metrics.json, per_node.csv")
    return 0


def run_compare(args: argparse.Namespace, metrics: MetricsConfig, console: Console) -> int:
    from eval.compare import compare, load_scored

    try:
        summary = compare(load_scored(args.a), load_scored(args.b), metrics)
        if args.out:
            check_writable(args.out, "--out")
    except (DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    console.print(compare_table(summary, args.depth))
    console.print(f"B − A = {100 * summary['delta']:+.1f} points on {summary['n']} paired items "
                  f"({summary['gained']} right only in B, {summary['lost']} only in A); "
                  f"p = {fmt_p(summary['bootstrap_p'])} (paired bootstrap), {fmt_p(summary['mcnemar_p'])} (exact McNemar)")
    if args.out:
        write_metrics(args.out, summary)
        console.print(f"wrote {args.out}/metrics.json, per_node.csv")
    return 0


def run_report(args: argparse.Namespace, metrics: MetricsConfig, console: Console) -> int:
    from eval.report import write_report

    try:
        path = write_report(args.run_dir, args.out, metrics)
    except (DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    console.print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: rich would wrap the tables at 80 columns
        console = Console(width=160)
    try:
        _check(args)
        metrics = _metrics_config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return {"mcq": run_mcq, "compare": run_compare, "report": run_report}[args.command](args, metrics, console)


if __name__ == "__main__":
    raise SystemExit(main())
