"""The loop's nodes. Each is thin: read inputs from the run dir, call library code, write outputs
atomically, return a small record into the graph state.

``_stage`` wraps every node with the same bookkeeping: a fingerprint of the stage's inputs, a skip when
a completed stage with that fingerprint is on disk (resume), timing, and the ``.done.json`` marker that
is written only after all of the stage's outputs.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agents.context import LoopContext
from agents.state import LoopState, StageRecord
from agents.run_dir import fingerprint
from agents import stages

logger = logging.getLogger(__name__)

Work = Callable[[LoopContext, LoopState, Path], dict[str, Any]]
Inputs = Callable[[LoopContext, LoopState], tuple[dict[str, Any], list[Path]]]
Update = Callable[[LoopContext, LoopState, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: Inputs  # (config values, input paths) that decide whether stored outputs are still valid
    work: Work  # does the stage's work into its output folder; returns a JSON-able summary
    update: Update | None = None  # state changes beyond the history record (evaluate advances the loop)


def _clean_partial(out: Path) -> None:
    """Remove temporaries a killed run left behind (atomic writes leave ``.name.xxxx.tmp`` files/dirs)."""
    leftovers = list(out.parent.glob(f".{out.name}.*")) if out.parent.is_dir() else []  # temp siblings
    if out.is_dir():
        leftovers += list(out.glob(".*"))
    for p in leftovers:
        if p.name == ".done.json":
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _node(ctx: LoopContext | None, stage: Stage) -> Callable[[LoopState], dict[str, Any]]:
    def node(state: LoopState) -> dict[str, Any]:
        assert ctx is not None, "build_graph(None, ...) is for drawing the graph only"
        it = state["iteration"]
        out = ctx.run.stage(it, stage.name)
        values, paths = stage.inputs(ctx, state)
        fp = fingerprint({"stage": stage.name, "iteration": it, **values}, paths)
        summary = ctx.run.done(it, stage.name, fp)
        skipped = summary is not None
        if summary is None:
            logger.info("iteration %d: %s …", it, stage.name)
            _clean_partial(out)
            out.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            summary = stage.work(ctx, state, out)
            summary["seconds"] = round(time.perf_counter() - t0, 2)
            ctx.run.mark_done(it, stage.name, fp, summary)
            ctx.tracker.log(stage.name, it, summary)
        record: StageRecord = {
            "iteration": it,
            "stage": stage.name,
            "seconds": summary["seconds"],
            "skipped": skipped,
            "summary": summary,
        }
        update = stage.update(ctx, state, summary) if stage.update else {}
        return {"history": [record], **update}

    node.__name__ = stage.name
    return node


STAGE_TABLE = (
    Stage("infer", stages.infer_inputs, stages.infer),
    Stage("analyze", stages.analyze_inputs, stages.analyze),
    Stage("generate", stages.generate_inputs, stages.generate),
    Stage("validate", stages.validate_inputs, stages.validate),
    Stage("label", stages.label_inputs, stages.label),
    Stage("train", stages.train_inputs, stages.train),
    Stage("gate", stages.gate_inputs, stages.gate),
    Stage("evaluate", stages.evaluate_inputs, stages.evaluate, stages.advance),
)


def make_nodes(ctx: LoopContext | None) -> dict[str, Callable[[LoopState], dict[str, Any]]]:
    return {s.name: _node(ctx, s) for s in STAGE_TABLE}
