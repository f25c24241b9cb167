"""Paired comparison of two scorings of the same MCQs: two models, two iterations, two prompts.

Each side is a file of replies or a folder that holds one:

- an output folder of ``python -m eval mcq --out`` (its ``per_item.jsonl``),
- a loop run folder (the newest student: the last evaluated iteration's ``G_eval/after.jsonl``),
- an iteration folder or its ``G_eval`` folder (``after.jsonl``),
- a ``.jsonl`` file of replies.

Replies carry their source, option count and tree node, so no data file is needed. Items scored on
one side only are left out (with a warning); the rest are compared pair by pair.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from data.records import DataError, Reply, read_jsonl
from data.run_layout import STAGE_DIRS
from eval.metrics import MetricsConfig, outcomes, paired_outcomes
from eval.report import ReportError, load_run

logger = logging.getLogger(__name__)


@dataclass
class Scored:
    """The replies of one side and where they came from."""

    label: str
    path: Path
    replies: list[Reply]


def _label(folder: Path) -> str:
    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            data = json.loads(metrics.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return str(folder)
        if isinstance(data, dict) and data.get("model"):
            return f"{data['model']} ({data.get('mode', '?')}, {data.get('shots', 0)}-shot)"
    return str(folder)


def resolve(path: str | Path) -> tuple[Path, str]:
    """The replies file a path stands for, and a label for tables."""
    path = Path(path)
    if path.is_file():
        return path, str(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    if (path / "per_item.jsonl").is_file():
        return path / "per_item.jsonl", _label(path)
    if (path / "after.jsonl").is_file():  # a G_eval folder
        return path / "after.jsonl", f"{path.parent.name} student ({path.parent.parent.name})"
    if (path / STAGE_DIRS["evaluate"] / "after.jsonl").is_file():  # an iteration folder
        return path / STAGE_DIRS["evaluate"] / "after.jsonl", f"{path.name} student ({path.parent.name})"
    try:
        evaluated = load_run(path).evaluated
    except ReportError:
        evaluated = []
    if evaluated:  # a run folder: its newest student
        last = evaluated[-1].path
        return last / STAGE_DIRS["evaluate"] / "after.jsonl", f"{path.name}, after {last.name}"
    raise DataError(f"{path}: holds no per_item.jsonl (eval mcq --out), G_eval/after.jsonl or evaluated iteration")


def load_scored(path: str | Path) -> Scored:
    file, label = resolve(path)
    return Scored(label, file, read_jsonl(file, Reply))


def compare(a: Scored, b: Scored, config: MetricsConfig = MetricsConfig()) -> dict[str, Any]:
    """Paired summary of B against A (``delta`` = B − A) on the items both scored."""
    ra, rb = {r.id: r for r in a.replies}, {r.id: r for r in b.replies}
    common = [i for i in ra if i in rb]
    if not common:
        raise DataError(f"{a.path} and {b.path} share no item ids: they scored different data")
    only = len(ra) - len(common), len(rb) - len(common)
    if any(only):
        logger.warning("comparing the %d items both scored; %d only in A, %d only in B", len(common), *only)
    for i in common:
        if ra[i].key != rb[i].key:
            raise DataError(f"item {i!r} has answer key {ra[i].key} in {a.path} but {rb[i].key} in {b.path}")
    try:
        oa = outcomes([ra[i] for i in common])
        ob = outcomes([rb[i] for i in common])
    except ValueError as e:
        raise DataError(f"{a.path} / {b.path}: {e}") from e
    # One node per item (B's, else A's): the two runs may have placed items in different trees.
    node_of = {o.id: o.nodes for o in oa} | {o.id: o.nodes for o in ob if o.nodes}
    oa = [replace(o, nodes=node_of[o.id]) for o in oa]
    ob = [replace(o, nodes=node_of[o.id]) for o in ob]
    summary = paired_outcomes(oa, ob, config)
    summary.update(a={"label": a.label, "path": str(a.path), "only_here": only[0]},
                   b={"label": b.label, "path": str(b.path), "only_here": only[1]})
    return summary
