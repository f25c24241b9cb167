"""Score a model on MCQs, in batches: by the answer letter's log-prob, or by generating and parsing.

logprob mode (the default, and what the loop uses) asks the engine for log P(letter | prompt) right after
the assistant prefix "The answer is", so no decoding or parsing can go wrong and every item gets an
answer. Items with different option letters (3, 4, 10 options) are scored in one call per letter set.
generate mode decodes greedily and reads the letter with ``prompts.extract.extract_answer``; replies it
cannot read count as wrong and are reported as unparsed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from data.records import MCQItem
from tree.ability_tree import AbilityTree
from engines.base import Engine, Prompt, SamplingParams
from prompts.extract import extract_answer
from data.records import Reply
from prompts.mcq import mcq_messages, mcq_user_text

logger = logging.getLogger(__name__)

MODES = ("logprob", "generate")


@dataclass
class ScoreResult:
    """Replies in the order of the items, plus how fast and how cleanly they were scored."""

    replies: list[Reply]
    mode: str
    seconds: float
    items_per_s: float
    unparsed: int

    @property
    def accuracy(self) -> float | None:
        return sum(r.correct for r in self.replies) / len(self.replies) if self.replies else None


def _shots_for(item: MCQItem, pool: Sequence[MCQItem], k: int) -> list[tuple[str, dict[str, str], str]]:
    """The first ``k`` pool items with the same option letters, never the item itself."""
    shots = []
    for ex in pool:
        if len(shots) == k:
            break
        if ex.id != item.id and list(ex.options) == list(item.options):
            shots.append((ex.question, ex.options, ex.answer_idx))
    return shots


def _chunks(indices: list[int], size: int | None) -> list[list[int]]:
    if not size:
        return [indices]
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _logprob_summary(logprobs: dict[str, float]) -> str:
    return " ".join(f"{letter}={lp:.4f}" for letter, lp in logprobs.items())


def score_items(
    engine: Engine,
    items: Sequence[MCQItem],
    *,
    mode: str = "logprob",
    shots: int = 0,
    shot_pool: Sequence[MCQItem] | None = None,
    batch_size: int | None = None,
    max_new_tokens: int = 32,
) -> ScoreResult:
    """Score ``items`` with ``engine``; one engine call per option-letter set (per ``batch_size`` chunk).

    ``shots`` solved examples precede each question, taken from ``shot_pool`` (default: the items
    themselves, never the question being asked). ``max_new_tokens`` bounds generate mode's replies.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pool = list(shot_pool) if shot_pool is not None else list(items)
    prompts: list[Prompt] = []
    for item in items:
        examples = _shots_for(item, pool, shots) if shots else []
        if len(examples) < shots:
            logger.warning("only %d of %d shots available for %s", len(examples), shots, item.id)
        prompts.append(mcq_messages(item.question, item.options, shots=examples, with_prefix=mode == "logprob"))

    start = time.perf_counter()
    replies: list[Reply | None] = [None] * len(items)
    if mode == "logprob":
        by_letters: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_letters[tuple(item.options)].append(i)
        for letters, indices in by_letters.items():
            for chunk in _chunks(indices, batch_size):
                scored = engine.choice_logprobs([prompts[i] for i in chunk], list(letters))
                if len(scored) != len(chunk):
                    raise RuntimeError(f"engine {engine.name!r} scored {len(scored)} of {len(chunk)} prompts")
                for i, lps in zip(chunk, scored):
                    replies[i] = _logprob_reply(items[i], {k: float(lps[k]) for k in letters})
    else:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        for chunk in _chunks(list(range(len(items))), batch_size):
            completions = engine.generate([prompts[i] for i in chunk], params)
            if len(completions) != len(chunk):
                raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} of {len(chunk)} completions")
            for i, completion in zip(chunk, completions):
                replies[i] = _generate_reply(items[i], completion.text)
    seconds = time.perf_counter() - start

    done = [r for r in replies if r is not None]
    unparsed = sum(r.parsed_answer is None for r in done)
    rate = len(done) / seconds if seconds > 0 else float("inf")
    logger.info("scored %d items with %s (%s mode) in %.2f s: %.1f items/s, %d unparsed",
                len(done), engine.name, mode, seconds, rate, unparsed)
    return ScoreResult(replies=done, mode=mode, seconds=seconds, items_per_s=rate, unparsed=unparsed)


def _logprob_reply(item: MCQItem, logprobs: dict[str, float]) -> Reply:
    finite = {k: v for k, v in logprobs.items() if math.isfinite(v)}
    parsed = max(finite, key=finite.__getitem__) if finite else None
    return Reply(
        id=item.id,
        prompt=mcq_user_text(item.question, item.options),
        output=_logprob_summary(logprobs),
        parsed_answer=parsed,
        key=item.answer_idx,
        correct=parsed == item.answer_idx,
        logprobs=finite,
        mode="logprob",
        source=item.source,
        n_options=len(item.options),
    )


def _generate_reply(item: MCQItem, text: str) -> Reply:
    parsed = extract_answer(text, item.options)
    return Reply(
        id=item.id,
        prompt=mcq_user_text(item.question, item.options),
        output=text,
        parsed_answer=parsed,
        key=item.answer_idx,
        correct=parsed == item.answer_idx,
        mode="generate",
        source=item.source,
        n_options=len(item.options),
    )


def assign_nodes(replies: Sequence[Reply], items: Sequence[MCQItem], tree: AbilityTree) -> list[Reply]:
    """The replies with the tree node each item is counted under (what per_item.jsonl records)."""
    by_id = {it.id: it for it in items}
    return [r.model_copy(update={"node": tree.node_of(by_id[r.id])}) for r in replies]
