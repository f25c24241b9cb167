"""Experiment tracking of a loop run: the trainers' curves and the loop's per-stage figures.

``--report-to tensorboard,wandb`` goes to the trainers as TRL's ``report_to`` (their loss curves, one
tracker run per train stage, as any TRL user gets), and ``StageTracker`` logs every finished stage's
numeric summary (probe accuracy, items accepted, gate decision, eval accuracy, seconds, ...) as
``<stage>/<figure>`` at step = iteration, into one tracker run per loop run. TensorBoard event files go
to ``<run-dir>/tracking/tensorboard``; wandb and trackio use their own stores (their usual environment
variables apply: WANDB_PROJECT, WANDB_MODE=offline, ...).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

logger = logging.getLogger(__name__)

TRACKERS = ("none", "tensorboard", "trackio", "wandb")
# The package each tracker needs, and how to install it.
_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"), "trackio": ("trackio", "pip install trackio"),
             "wandb": ("wandb", "pip install wandb")}


def parse_report_to(value: str) -> list[str]:
    """``"tensorboard,wandb"`` -> ["tensorboard", "wandb"]; "none" or "" -> []. ValueError names a bad one."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to: unknown tracker(s) {', '.join(unknown)}; choose from {', '.join(TRACKERS)}")
    if "none" in names and len(names) > 1:
        raise ValueError("report_to: none cannot be combined with a tracker")
    return [n for n in names if n != "none"]


def missing_trackers(names: Iterable[str]) -> list[str]:
    """What to install for each tracker whose package is not importable here."""
    return [f"{n} ({_PACKAGES[n][1]})" for n in names if importlib.util.find_spec(_PACKAGES[n][0]) is None]


def flatten(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers (and booleans, as 0/1) of a nested summary, keyed ``a/b/c``."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


class StageTracker:
    """Logs the loop's stage summaries to the chosen trackers; no tracker: does nothing at all."""

    def __init__(self, names: Iterable[str], run_dir: str | Path, run_name: str, config: Mapping[str, Any]) -> None:
        self.names = list(names)
        self._tb = self._wandb = self._trackio = None
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tracking" / "tensorboard" / "loop"))
        if "wandb" in self.names:
            import wandb

            self._wandb = wandb.init(name=run_name, config=dict(config), dir=str(run_dir), reinit="create_new")
        if "trackio" in self.names:
            import trackio

            trackio.init(project="atkd", name=run_name, config=dict(config))
            self._trackio = trackio  # its log/finish are module functions on the current run

    def log(self, stage: str, iteration: int, summary: Mapping[str, Any]) -> None:
        if not self.names:
            return
        figures = flatten(summary, stage)
        if self._tb is not None:
            for name, value in figures.items():
                self._tb.add_scalar(name, value, global_step=iteration)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({**figures, "iteration": iteration})
        if self._trackio is not None:
            self._trackio.log({**figures, "iteration": iteration})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._trackio is not None:
            self._trackio.finish()
        self._tb = self._wandb = self._trackio = None
