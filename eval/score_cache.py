"""Scores already made, kept so that no model is scored twice on the same items.

The loop scores its students on three splits: the probe (infer), the dev split (the acceptance gate,
the train stage's choice of epoch) and the eval set (evaluate). The same model meets the same items
again and again: the student that the gate kept is probed again next iteration, the previous
iteration's student is the "before" of the next evaluation, and every run that starts from the same
base student scores it on the same eval set. The cache key is what decides the replies:

- the model: its spec and, for weights on this machine, the name, size and modification time of every
  file of its folder (a retrained folder is another model);
- how it is asked: the answer mode, the reply budget, the engine;
- the items: every prompt as the scorer renders it, with its key and option letters.

Entries are one JSONL file of replies per key under ``<atkd cache>/scores`` (``$ATKD_CACHE``; or
``$ATKD_SCORE_CACHE``), written atomically; a corrupt or foreign file is ignored and scored again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from data.records import MCQItem, Reply, atomic_write_json, read_jsonl, write_jsonl
from engines.base import Engine
from eval.mcq import score_items
from prompts.mcq import mcq_messages

logger = logging.getLogger(__name__)

SCORES_DIR = "scores"
SCORE_CACHE_ENV = "ATKD_SCORE_CACHE"  # another folder for the cache (the test suite keeps its own)


def model_identity(spec: str) -> str:
    """The spec, plus (name, size, mtime) of each file of its local folder when it has one.

    A spec whose folder cannot be resolved without building it (a derived student not made yet) or that
    has none (openai:) is identified by the spec alone.
    """
    from engines import parse_spec

    try:
        parsed = parse_spec(spec)
        folder = Path(spec[3:]) if spec.startswith("hf:") else (parsed.local_path() if parsed.is_local else None)
    except (ValueError, OSError, RuntimeError) as e:  # not resolvable here: the spec alone
        logger.debug("model identity of %s without its files: %s", spec, e)
        folder = None
    if folder is None or not Path(folder).is_dir():
        return spec
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps({"spec": spec, "folder": str(folder), "files": stats})


@dataclass(frozen=True)
class ScoreRequest:
    """What is scored and how: the cache key's parts."""

    model: str  # model_identity(...)
    split: str  # probe | dev | eval | ... (part of the file name, for people looking at the cache)
    mode: str = "logprob"
    max_new_tokens: int = 32
    engine: str = ""  # the engine kind serving the model (transformers, vllm, ...)

    def key(self, items: Sequence[MCQItem]) -> str:
        h = hashlib.sha256(json.dumps([self.model, self.mode, self.max_new_tokens, self.engine]).encode())
        for item in items:
            prompt = mcq_messages(item.question, item.options, with_prefix=self.mode == "logprob")
            h.update(json.dumps([item.id, prompt, item.answer_idx], sort_keys=True, default=str).encode())
        return h.hexdigest()


@dataclass
class Scored:
    replies: list[Reply]
    reused: bool
    seconds: float  # 0 when reused
    items_per_s: float | None  # None when reused


class ScoreCache:
    """Replies per (model, items, how) under ``root``; ``root=None`` keeps nothing (always scores)."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None

    @classmethod
    def default(cls) -> "ScoreCache":
        """``$ATKD_SCORE_CACHE``, else ``<atkd cache>/scores``."""
        from engines.smollm2 import cache_root

        return cls(os.environ.get(SCORE_CACHE_ENV) or cache_root() / SCORES_DIR)

    def _file(self, request: ScoreRequest, key: str) -> Path:
        assert self.root is not None
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.split)[:40]
        return self.root / f"{safe}-{key[:24]}.jsonl"

    def get(self, request: ScoreRequest, items: Sequence[MCQItem]) -> list[Reply] | None:
        """The stored replies, in the items' order, or None."""
        if self.root is None:
            return None
        path = self._file(request, request.key(items))
        if not path.is_file():
            return None
        try:
            replies = read_jsonl(path, Reply)
        except Exception as e:  # noqa: BLE001 (a damaged entry is scored again, never trusted)
            logger.warning("ignoring the unreadable score cache entry %s: %s", path, e)
            return None
        if [r.id for r in replies] != [it.id for it in items]:
            logger.warning("ignoring the score cache entry %s: it holds other items", path)
            return None
        return replies

    def put(self, request: ScoreRequest, items: Sequence[MCQItem], replies: Sequence[Reply]) -> None:
        if self.root is None:
            return
        key = request.key(items)
        path = self._file(request, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, replies)
        atomic_write_json(path.with_suffix(".json"), {"key": key, "model": request.model, "split": request.split,
                                                      "mode": request.mode, "max_new_tokens": request.max_new_tokens,
                                                      "engine": request.engine, "n": len(items)})

    def score(self, request: ScoreRequest, engine: Callable[[], Engine], items: Sequence[MCQItem]) -> Scored:
        """The stored replies, else ``engine()``'s (loaded only when needed), stored for next time."""
        replies = self.get(request, items)
        if replies is not None:
            logger.info("%s: reusing %d scores already made (%s)", request.split, len(replies), self.root)
            return Scored(replies, True, 0.0, None)
        result = score_items(engine(), items, mode=request.mode, max_new_tokens=request.max_new_tokens)
        self.put(request, items, result.replies)
        return Scored(result.replies, False, result.seconds, result.items_per_s)
