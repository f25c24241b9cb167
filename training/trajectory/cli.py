r"""``python -m training.trajectory {benchmark,experts,distill,evaluate}``: dataset distillation of text
by trajectory matching.

    python -m training.trajectory benchmark --name clinical-source --out runs/ttm/data
    python -m training.trajectory experts --data runs/ttm/data/train.jsonl --test runs/ttm/data/test.jsonl \
        --model head:minilm --experts 5 --epochs 20 --out runs/ttm/experts
    python -m training.trajectory distill --experts runs/ttm/experts --per-class 10 --out runs/ttm/syn
    python -m training.trajectory evaluate --synthetic runs/ttm/syn --data runs/ttm/data/test.jsonl

``benchmark`` writes a shipped real benchmark (clinical items as text classification) as train/test
JSONL; ``experts`` trains the expert trajectories (each expert's held-out accuracy per epoch is
printed: the ceiling); ``distill`` learns the synthetic set; ``evaluate`` trains fresh students on it
and on baselines of the same size and prints one table. ``experts``, ``distill`` and ``evaluate`` take
every field of their config as an option (or ``--config recipe.yaml``); ``<command> --help`` lists them.
Bad input is one line naming the file (and line) and exit code 2.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

COMMANDS = ("benchmark", "experts", "distill", "evaluate")
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "clinical"
SHIPPED = Path(__file__).resolve().parents[2] / "data" / "clinical"


def _user_errors() -> tuple[type[BaseException], ...]:
    from data.records import DataError
    from training.trajectory.errors import (
        DistillationStopped,
        TrajectoryDataError,
        TrajectorySetupError,
    )

    return (TrajectorySetupError, TrajectoryDataError, DistillationStopped, DataError, FileNotFoundError)


def parser(command: str):
    """TRL's parser (as the other training entry points): every config field, ``--config FILE.yaml``."""
    from trl import TrlParser

    from training.trajectory.config import EvaluateConfig, ExpertsConfig, TTMConfig

    cls, what = {"experts": (ExpertsConfig, "Train expert trajectories (plain SGD, a checkpoint per epoch)."),
                 "distill": (TTMConfig, "Learn a synthetic set by trajectory matching."),
                 "evaluate": (EvaluateConfig, "Train fresh students on synthetic sets and same-size baselines; one table.")}[command]
    return TrlParser(cls, prog=f"python -m training.trajectory {command}", description=what)


def default_sources() -> list[str]:
    """The clinical development files of ../shared when present, else the items shipped in data/clinical."""
    files = sorted(glob.glob(str(SHARED / "*_dev.jsonl")))
    return files or [str(SHIPPED / "seed.jsonl"), str(SHIPPED / "eval.jsonl")]


def run_benchmark(argv: Sequence[str]) -> int:
    from training.trajectory.data import BENCHMARKS, write_benchmark
    from training.trajectory.errors import TrajectorySetupError

    p = argparse.ArgumentParser(prog="python -m training.trajectory benchmark", description="Write a real text-classification benchmark built from the clinical items.")
    p.add_argument("--name", default="clinical-source", choices=BENCHMARKS, help="clinical-source: question -> source dataset (6 classes); clinical-subject: question -> MMLU subject")
    p.add_argument("--items", nargs="+", default=None, help="MCQ JSONL files (default: ../shared's clinical dev files, else the shipped seed and eval items)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share, split by a hash of the question (default 0.2)")
    p.add_argument("--out", required=True, help="folder for train.jsonl, test.jsonl and benchmark.json")
    args = p.parse_args(argv)
    from data.records import check_writable

    if not 0 < args.test_fraction < 1:
        raise TrajectorySetupError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    check_writable(args.out, "--out")
    paths = write_benchmark(args.name, args.items or default_sources(), args.out, args.test_fraction)
    print(" ".join(f"{s}: {p}" for s, p in paths.items()))
    return 0


def run_config(command: str, argv: Sequence[str]) -> int:
    from data.cli import trl_parse
    from training.trajectory.errors import TrajectorySetupError

    try:
        (cfg,) = trl_parse(parser(command), argv)
    except ValueError as e:
        raise TrajectorySetupError(str(e)) from None
    from data.records import check_writable

    if cfg.out:  # before any data or model is read (evaluate's --out is a CSV file)
        check_writable(cfg.out, "--out", folder=command != "evaluate")
    if command == "experts":
        from training.trajectory.experts import train_experts

        train_experts(cfg)
    elif command == "distill":
        from training.trajectory.distill import distill_set, stop_if

        result = distill_set(cfg)
        last = next((r for r in reversed(result.log) if r["val_accuracy"] is not None), None)
        trend = f", matching loss {result.log[0]['loss']:.3f} -> {result.log[-1]['running_loss']:.3f} (running)" if result.log else ""
        print(f"synthetic set: {result.folder} ({result.synthetic.card['selected']}); {len(result.log)} iterations, {result.seconds:.0f} s in all{trend}"
              + (f", last validation accuracy {last['val_accuracy']:.3f}" if last else "") + f"; peak memory {result.peak_memory_mb:.0f} MB above the start")
        stop_if(result)
    else:
        from training.trajectory.evaluate import evaluate_sets, print_table

        result = evaluate_sets(cfg)
        print_table(result.rows, len(result.classes))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        bad = bool(argv) and argv[0] not in ("-h", "--help")
        print(__doc__.strip(), file=sys.stderr if bad else sys.stdout)
        if bad:
            print(f"\nerror: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2 if bad or not argv else 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, rest = argv[0], argv[1:]
    try:
        return run_benchmark(rest) if command == "benchmark" else run_config(command, rest)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
