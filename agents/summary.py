"""The end-of-run summary: one row per iteration (accuracy before/after, data made and kept, stage times).

Built from the stage records in the graph state, so a resumed run reports the whole run, with the
times the stages took when they actually ran.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from agents.config import LoopConfig
from agents.run_dir import STAGE_DIRS
from agents.run_dir import RunDir
from agents.state import StageRecord
from data.records import atomic_write_text


def _rows(history: Sequence[StageRecord]) -> list[dict[str, Any]]:
    by_iter: dict[int, dict[str, StageRecord]] = defaultdict(dict)
    for rec in history:
        by_iter[rec["iteration"]][rec["stage"]] = rec
    rows = []
    for it in sorted(by_iter):
        stages = by_iter[it]
        s = {name: stages[name]["summary"] for name in stages}
        ev = s.get("evaluate", {})
        rows.append(
            {
                "iteration": it,
                "probe_acc": s.get("infer", {}).get("accuracy"),
                "eval_before": ev.get("before", {}).get("accuracy"),
                "eval_before_ci": ev.get("before", {}).get("ci95"),
                "eval_after": ev.get("after", {}).get("accuracy"),
                "eval_after_ci": ev.get("after", {}).get("ci95"),
                "eval_n": ev.get("n"),
                "chance": ev.get("chance"),
                "generated": s.get("generate", {}).get("candidates"),
                "parsed": s.get("generate", {}).get("parsed"),
                "accepted": s.get("validate", {}).get("accepted"),
                "train_items": s.get("label", {}).get("items"),
                "seconds": {name: stages[name]["seconds"] for name in STAGE_DIRS if name in stages},
                "reused": [name for name in STAGE_DIRS if name in stages and stages[name]["skipped"]],
            }
        )
    return rows


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        str(row["iteration"]),
        _pct(row["probe_acc"]),
        _pct(row["eval_before"]) + _ci(row["eval_before_ci"]),
        _pct(row["eval_after"]) + _ci(row["eval_after_ci"]),
        f"{row['generated'] or 0} / {row['parsed'] or 0} / {row['accepted'] or 0}",
        str(row["train_items"] or 0),
        f"{sum(row['seconds'].values()):.0f}s",
    ]


def _time_cells(row: dict[str, Any]) -> list[str]:
    return [str(row["iteration"])] + [
        f"{row['seconds'][s]:.1f}" + (" (reused)" if s in row["reused"] else "") if s in row["seconds"] else "–"
        for s in STAGE_DIRS
    ]


HEADERS = ["iter", "probe acc", "eval acc before [95% CI]", "eval acc after [95% CI]", "generated / parsed / accepted", "train items", "time"]
TIME_HEADERS = ["iter", *(f"{s} s" for s in STAGE_DIRS)]


def print_summary(history: Sequence[StageRecord], total_seconds: float, report: Path) -> None:
    table = Table(title="atkd run summary", show_lines=False)
    for h in HEADERS:
        table.add_column(h)
    rows = _rows(history)
    for row in rows:
        table.add_row(*_cells(row))
    times = Table(title="seconds per stage")
    for h in TIME_HEADERS:
        times.add_column(h, justify="right")
    for row in rows:
        times.add_row(*_time_cells(row))
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: rich would wrap the tables at 80 columns
        console = Console(width=140)
    console.print(table)
    console.print(times)
    if rows and rows[-1]["chance"] is not None:
        console.print(f"eval items: {rows[-1]['eval_n']}, chance level {_pct(rows[-1]['chance'])}")
    console.print(f"wall time this invocation: {total_seconds:.0f} s; report: {report}")


def write_report(run: RunDir, config: LoopConfig, history: Sequence[StageRecord]) -> Path:
    rows = _rows(history)
    lines = [
        f"# atkd run: {run.root.name}",
        "",
        f"- domain: `{config.domain}`; teacher: `{config.teacher}`; student: `{config.student}`",
        f"- iterations: {config.iterations}; probe {config.probe_size} items; budget {config.budget} items per iteration",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    lines += ["", "Seconds per stage:", "", "| " + " | ".join(TIME_HEADERS) + " |", "|" + "---|" * len(TIME_HEADERS)]
    lines += ["| " + " | ".join(_time_cells(r)) + " |" for r in rows]
    if rows and rows[-1]["chance"] is not None:
        lines += ["", f"Eval set: {rows[-1]['eval_n']} items; chance level {_pct(rows[-1]['chance'])}."]
    reused = [f"iteration {r['iteration']}: {', '.join(r['reused'])}" for r in rows if r["reused"]]
    if reused:
        lines += ["", "Stages reused from an earlier invocation (resume): " + "; ".join(reused) + "."]
    lines += [
        "",
        "Stage outputs are in `iteration_N/A_student_reply` … `G_eval` (see docs/run_dir.md).",
        "",
    ]
    path = run.root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
