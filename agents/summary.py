"""The end-of-run summary printed to the terminal: the report's iteration and time tables.

The tables come from ``eval.report`` (which reads the run directory), so the terminal, report.md and
report.html show the same figures; the graph state adds which stages this invocation reused.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from agents.state import StageRecord


def _rich(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_summary(run_root: Path, history: Sequence[StageRecord], total_seconds: float) -> None:
    from eval.report import iteration_table, load_run, time_table

    run = load_run(run_root)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: rich would wrap the tables at 80 columns
        console = Console(width=160)
    it_table, times = iteration_table(run), time_table(run)
    console.print(_rich("atkd run summary", it_table.headers, it_table.rows))
    console.print(_rich("seconds per stage", times.headers, times.rows))
    reused: dict[int, list[str]] = defaultdict(list)
    for rec in history:
        if rec["skipped"]:
            reused[rec["iteration"]].append(rec["stage"])
    if reused:
        console.print("reused from an earlier invocation (resume): "
                      + "; ".join(f"iteration {i}: {', '.join(s)}" for i, s in sorted(reused.items())))
    evaluated = run.evaluated
    if evaluated and (ev := evaluated[-1].summary("evaluate")).get("chance") is not None:
        console.print(f"eval items: {ev['n']}, chance level {100 * ev['chance']:.1f}%")
    console.print(f"wall time this invocation: {total_seconds:.0f} s; report: {run_root / 'report.html'}")
