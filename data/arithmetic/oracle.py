"""The arithmetic domain's oracle (``data.oracle``): items of a tree node written by the domain's own
problem generator, so their keys and worked solutions are right by construction.

A node below a skill's leaf is a sub-topic the teacher's diagnoses grew ("the seven times table" under
"times tables 6 to 9"): its items are the skill's problems of that topic (``Problem.topic``). A sub-topic
that no problem of the skill has (the teacher named one that does not fit its parent) gets the skill's
problems of every topic: what an item of that node could truthfully be.
"""

from __future__ import annotations

import logging
import random

from data.arithmetic.build import draw_problems
from data.arithmetic.skills import Skill, skill, worked_reply
from data.records import MCQItem

logger = logging.getLogger(__name__)


def skill_of(node: str) -> tuple[Skill, str]:
    """``(skill, sub-topic)`` of a node path: the skill whose key is the longest prefix of the path below
    the root, and the name of the node below it ("" for the skill's own leaf). KeyError for a node that
    is not at or below a skill (the root, an operation)."""
    parts = node.split("/")[1:]
    for cut in range(len(parts), 0, -1):
        try:
            return skill("/".join(parts[:cut])), parts[cut] if cut < len(parts) else ""
        except KeyError:
            continue
    raise KeyError(f"{node!r} is not a skill of the arithmetic domain or below one")


def _has_topic(s: Skill, topic: str, rng: random.Random) -> bool:
    """Whether any of 400 draws of ``s`` is about ``topic`` (lower-cased)."""
    return any(s.draw(rng).topic.lower() == topic for _ in range(400))


def write_items(node: str, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[MCQItem]:
    """Up to ``n`` items of ``node`` (module docstring), none of whose questions is in ``exclude`` or
    repeated, keys spread evenly over the letters, each with its worked solution. Fewer when the node
    has fewer distinct questions left (one-digit addition has under a hundred); an operation or the
    root gets none (its items would belong to its leaves)."""
    try:
        s, topic = skill_of(node)
    except KeyError:
        logger.warning("oracle: %s is above the skills; no items written for it", node)
        return []
    want = topic.strip().lower()
    fits = bool(want) and _has_topic(s, want, random.Random(f"{seed}:topics:{node}"))
    if topic and not fits:
        logger.info("oracle: no problem of %s is about %r; writing the skill's problems", s.key, topic)
    pairs = draw_problems(s, f"oracle:{node}", n, seed, set(exclude), keep=(lambda p: p.topic.lower() == want) if fits else None, at_most=True)
    items = [item.model_copy(update={"ability_path": node.split("/"), "solution": worked_reply(problem)}) for item, problem in pairs]
    if len(items) < n:
        logger.info("oracle: %s has %d distinct new questions, %d were asked for", node, len(items), n)
    return items


__all__ = ["skill_of", "write_items"]
