"""The record one scored question leaves behind (``replies.jsonl``), shared by scoring, metrics and the loop."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)


class Reply(BaseModel):
    """The student's answer to one MCQ, as scored.

    ``prompt`` is the rendered user text (without few-shot turns), ``output`` what the model produced
    (generate mode) or a summary of the letters' log-probs (logprob mode), ``parsed_answer`` the letter
    read from it (None when nothing could be read), ``key`` the correct letter. ``source``,
    ``n_options`` (for the chance level) and ``node`` (the ability-tree node it was counted under) let
    a file of replies be summarised and compared without the data files it came from.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str
    output: str
    parsed_answer: str | None
    key: str
    correct: bool
    logprobs: dict[str, float] = {}
    mode: Literal["logprob", "generate"] = "logprob"
    source: str | None = None
    n_options: int | None = None
    node: str | None = None
