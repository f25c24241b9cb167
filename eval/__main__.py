"""Score a model on MCQ files and print accuracy per source with 95% intervals and the chance level.

    python -m eval mcq --model smollm2 --data ../shared/data/clinical/mmlu_dev.jsonl --limit 50
    python -m eval mcq --model hf:runs/x/iteration_1/F_student_model --data a.jsonl b.jsonl \\
        --mode generate --out runs/x/eval_generate
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from data.records import DataError, MCQItem, read_items, write_jsonl
from engines.base import Engine
from engines.smollm2 import ModelNotFoundError
from eval.mcq import MODES, ScoreResult, score_items
from eval.metrics import summarize, write_metrics
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
) -> tuple[ScoreResult, dict[str, Any]]:
    """Score, summarise (per node of ``tree``, else of a tree built from the items) and write outputs."""
    result = score_items(engine, items, mode=mode, shots=shots, batch_size=batch_size)
    tree = tree if tree is not None else AbilityTree.from_items(items)
    summary = summarize(result.replies, items, tree)
    summary.update(model=engine.name, mode=mode, shots=shots, items_per_s=result.items_per_s,
                   seconds=result.seconds)
    if out is not None:
        write_jsonl(out / "replies.jsonl", result.replies)
        write_metrics(out, summary)
    return result, summary


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def results_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['model']} ({summary['mode']}, {summary['shots']}-shot)")
    for col, justify in [("source", "left"), ("n", "right"), ("accuracy", "right"), ("95% CI", "right"),
                         ("chance", "right"), ("unparsed", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    rows = [(s, blk) for s, blk in summary["by_source"].items()] + [("all", summary)]
    for i, (name, blk) in enumerate(rows):
        lo, hi = blk["ci95"]
        table.add_row(name, str(blk["n"]), _pct(blk["accuracy"]), f"[{_pct(lo)}, {_pct(hi)}]", _pct(blk["chance"]),
                      str(blk["unparsed"]), end_section=i == len(rows) - 2)
    return table


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description="Evaluate models on MCQ files.")
    sub = parser.add_subparsers(dest="command", required=True)
    mcq = sub.add_parser("mcq", help="score multiple-choice questions")
    mcq.add_argument("--model", required=True, help="model spec: smollm2, hf:PATH, vllm:PATH, openai:URL#MODEL, ...")
    mcq.add_argument("--data", type=Path, nargs="+", required=True, help="MCQ JSONL files")
    mcq.add_argument("--mode", choices=MODES, default="logprob", help="letter log-probs (default) or generate + parse")
    mcq.add_argument("--limit", type=int, default=None, help="at most N items from each file")
    mcq.add_argument("--shots", type=int, default=0, help="solved examples before each question (from the data)")
    mcq.add_argument("--batch-size", type=int, default=None, help="prompts per engine call (default: all at once)")
    mcq.add_argument("--engine", default="auto", help="backend: auto, transformers, vllm, openai (default auto)")
    mcq.add_argument("--tree", type=Path, default=None, help="ability tree JSON for per-node metrics")
    mcq.add_argument("--out", type=Path, default=None, help="write replies.jsonl, metrics.json, per_node.csv here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        for flag, value, least in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                                   ("--shots", args.shots, 0)):
            if value is not None and value < least:
                raise ValueError(f"{flag} must be >= {least}, got {value}")
        items = load_data(args.data, args.limit)
        if not items:
            raise DataError(f"no items in {', '.join(map(str, args.data))}")
        tree = AbilityTree.load(args.tree) if args.tree else None
        from engines import load_engine  # imports torch/transformers: only once the inputs are known good

        engine = load_engine(args.model, engine=args.engine)
    except (DataError, TreeError, ValueError, OSError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result, summary = evaluate_files(engine, items, mode=args.mode, shots=args.shots,
                                         batch_size=args.batch_size, tree=tree, out=args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    console.print(results_table(summary))
    console.print(f"{len(items)} items in {result.seconds:.1f} s: {result.items_per_s:.1f} items/s")
    if args.out:
        console.print(f"wrote {args.out}/replies.jsonl, metrics.json, per_node.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
