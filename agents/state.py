"""The loop's graph state: small things only (paths, counts, metrics). Data lives in the run dir."""

from __future__ import annotations

import operator
from typing import Annotated, Any

from typing_extensions import TypedDict


class StageRecord(TypedDict):
    iteration: int
    stage: str
    seconds: float
    skipped: bool  # True when a resumed run found the stage's outputs complete
    summary: dict[str, Any]


class LoopState(TypedDict, total=False):
    iteration: int  # 1-based, the iteration in progress
    student: str  # model spec of the current student (the derived one, then hf:<F_student_model>)
    # One record per finished stage, appended (reducer) so the whole history survives in the checkpoint.
    history: Annotated[list[StageRecord], operator.add]
