"""The run directory: where each stage's outputs live, and how a stage knows it is already done.

A stage writes its outputs atomically, then a ``.done.json`` marker holding the fingerprint of its
inputs and its summary. On resume, a stage whose marker exists with the same fingerprint returns the
stored summary instead of redoing its work; a changed input (another config, another upstream file)
redoes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from data.records import atomic_write_json
from data.run_layout import MARKER, STAGE_DIRS

__all__ = ["MARKER", "STAGE_DIRS", "RunDir", "fingerprint"]


def _hash_path(path: Path, h: "hashlib._Hash") -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.name != MARKER:
                h.update(str(p.relative_to(path)).encode())
                _hash_path(p, h)
    elif path.is_file():
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(b"<missing>")


def fingerprint(config: dict[str, Any], inputs: Iterable[Path | str] = ()) -> str:
    """sha256 of the stage's config values and the bytes of its input files/folders."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in inputs:
        h.update(str(p).encode())
        _hash_path(Path(p), h)
    return h.hexdigest()


@dataclass
class RunDir:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints.sqlite"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def initial_tree(self) -> Path:
        return self.root / "tree" / "initial.json"

    def iteration(self, i: int) -> Path:
        return self.root / f"iteration_{i}"

    def stage(self, i: int, stage: str) -> Path:
        return self.iteration(i) / STAGE_DIRS[stage]

    def done(self, i: int, stage: str, fp: str) -> dict[str, Any] | None:
        """The stored summary of a completed stage with this fingerprint, else None."""
        marker = self.stage(i, stage) / MARKER
        if not marker.is_file():
            return None
        try:
            stored = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        return stored.get("summary") if stored.get("fingerprint") == fp else None

    def mark_done(self, i: int, stage: str, fp: str, summary: dict[str, Any]) -> None:
        atomic_write_json(self.stage(i, stage) / MARKER, {"fingerprint": fp, "summary": summary})
