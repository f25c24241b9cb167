"""The teacher's worked solutions: the replies a generate-mode domain's student is distilled on.

In a domain answered in generate mode (``data.domains.Domain.answer_mode``) the reply to learn is not
"The answer is C." but the teacher's own worked solution ending in the answer. The teacher answers
each item greedily, in the evaluation prompt; a reply that commits to the key (``prompts.extract``)
becomes the item's ``solution``, and an item whose reply does not is left out of the training set
(sequence-level distillation keeps only the teacher's correct outputs, as rejection-sampled
distillation does): a wrong solution would teach the wrong steps under the right key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

from data.records import MCQItem
from engines.base import Engine, SamplingParams
from prompts.extract import extract_answer
from prompts.mcq import mcq_messages

logger = logging.getLogger(__name__)

Item = TypeVar("Item", bound=MCQItem)


def attach_solutions(engine: Engine, items: Sequence[Item], max_new_tokens: int) -> tuple[list[Item], list[Item]]:
    """``(solved, unsolved)``: the items whose greedy reply reaches the key, each with that reply as its
    ``solution``, and the others, unchanged; in the order of ``items``. An item that already carries a
    solution (written by the domain's oracle, ``synth.oracle``) keeps it and is not asked. One
    ``generate`` call."""
    ask = [it for it in items if not it.solution]
    replies: dict[int, str] = {}
    if ask:
        prompts = [mcq_messages(it.question, it.options, with_prefix=False) for it in ask]
        completions = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
        if len(completions) != len(ask):
            raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} of {len(ask)} completions")
        replies = {id(it): c.text.strip() for it, c in zip(ask, completions)}
    solved, unsolved = [], []
    for item in items:
        if item.solution:
            solved.append(item)
        elif extract_answer(replies[id(item)], item.options) == item.answer_idx:
            solved.append(item.model_copy(update={"solution": replies[id(item)]}))
        else:
            unsolved.append(item)
    if ask:
        logger.info("teacher %s solved %d of %d items (the rest are not trained on)", engine.name, len(solved) - (len(items) - len(ask)), len(ask))
    return solved, unsolved
