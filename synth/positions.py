"""Answer positions of generated MCQs: measure their balance (χ² against uniform) and even it out.

Teachers favour some key letters (small ones often write the key first), and a student trained on such
data learns the position instead of the content. ``rebalance_answers`` moves keys so the letters are as
even as the items allow, by swapping the key's text with the option at the target letter (every other
option stays where the teacher put it). Items whose options refer to other options ("all of the
above", "both A and B", "none of these") keep their order: moving them would change their meaning.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Sequence, TypeVar

from data.records import MCQItem

I = TypeVar("I", bound=MCQItem)

# Options whose meaning depends on where they and the others stand.
_PHRASE = re.compile(
    r"\b(all|none|both|neither|either|any) of the (above|following|these|options|others|choices)\b"
    r"|\b(all|none) of these\b",
    re.IGNORECASE,
)
# References to option letters, in capitals: "both A and B", "A, B and C", "option C", "only D".
_LETTER_REF = re.compile(
    r"\b(?:[Bb]oth|[Nn]either|[Ee]ither|[Oo]nly|[Oo]ptions?|[Cc]hoices?|[Aa]nswers?)\s+\(?([A-J])\)?(?![\w-])"
    r"|(?<![\w-])\(?([A-J])\)?\s*(?:,|and|or|&)\s*\(?([A-J])\)?(?![\w-])"
)


def is_position_bound(item: MCQItem) -> bool:
    """True when an option refers to other options or to positions, so the order must not change.

    A letter pair counts only when both letters are option letters of the item; "vitamin A and D" in a
    four-option item is read as a reference too (keeping such an item in place costs nothing).
    """
    for text in item.options.values():
        if _PHRASE.search(text):
            return True
        for m in _LETTER_REF.finditer(text):
            letters = [g for g in m.groups() if g]
            if all(letter in item.options for letter in letters):
                return True
    return False


def chi2_sf(x: float, df: int) -> float:
    """P(χ²_df ≥ x): the regularized upper incomplete gamma Q(df/2, x/2) (series / continued fraction)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if x <= 0:
        return 1.0
    a, z = df / 2.0, x / 2.0
    log_front = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1.0:  # series for the lower gamma P, Q = 1 - P
        term = total = 1.0 / a
        n = a
        for _ in range(1000):
            n += 1.0
            term *= z / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # Lentz's continued fraction for Q
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def answer_balance(items: Sequence[MCQItem]) -> dict:
    """Key-letter counts, their expectation under uniform keys, and Pearson's χ² test against it.

    Items may have different numbers of options: an item with n options adds 1/n to the expectation of
    each of its letters. ``p_value`` is None for fewer than 2 letters or no items.
    """
    counts = Counter(it.answer_idx for it in items)
    expected: dict[str, float] = {}
    for it in items:
        for letter in it.options:
            expected[letter] = expected.get(letter, 0.0) + 1.0 / len(it.options)
    letters = sorted(expected)
    chi2 = sum((counts.get(k, 0) - expected[k]) ** 2 / expected[k] for k in letters)
    df = len(letters) - 1
    return {
        "n": len(items),
        "counts": {k: counts.get(k, 0) for k in letters},
        "expected": {k: round(expected[k], 3) for k in letters},
        "chi2": round(chi2, 4),
        "df": df,
        "p_value": chi2_sf(chi2, df) if df >= 1 and items else None,
    }


def move_key(item: I, target: str) -> I:
    """The item with its key's text swapped with the option at ``target`` (a copy; ids unchanged)."""
    if target not in item.options:
        raise ValueError(f"item {item.id}: no option {target!r} to move the key to")
    options = dict(item.options)
    options[item.answer_idx], options[target] = options[target], options[item.answer_idx]
    return item.model_copy(update={"options": options, "answer_idx": target})


def rebalance_answers(items: Sequence[I], seed: int = 0) -> tuple[list[I], dict[str, tuple[str, str]]]:
    """Even out key letters over ``items``; returns the items (input order) and ``{id: (from, to)}``.

    Every item starts at its own key. While some movable item sits on a letter used at least two more
    times than another of its own letters, it moves to its least-used letter (each move lowers the sum of
    squared counts, so this ends; an already even set moves nothing). Which item of a crowded letter
    moves, and ties between letters, are drawn from ``seed``. Position-bound items never move.
    """
    counts: Counter[str] = Counter(it.answer_idx for it in items)
    key = {i: it.answer_idx for i, it in enumerate(items)}
    movable = [i for i, it in enumerate(items) if not is_position_bound(it)]
    rng = random.Random(seed)
    rng.shuffle(movable)
    while True:
        gain, i = max(((counts[key[i]] - min(counts[k] for k in items[i].options), i) for i in movable), default=(0, -1),
                      key=lambda gi: gi[0])  # the first of equal gains: the seeded visiting order decides
        if gain < 2:
            break
        least = min(counts[k] for k in items[i].options)
        target = rng.choice([k for k in items[i].options if counts[k] == least])
        counts[key[i]] -= 1
        counts[target] += 1
        key[i] = target
    out = list(items)
    moves: dict[str, tuple[str, str]] = {}
    for i, item in enumerate(items):
        if key[i] != item.answer_idx:
            out[i] = move_key(item, key[i])
            moves[item.id] = (item.answer_idx, key[i])
    return out, moves


__all__ = ["answer_balance", "chi2_sf", "is_position_bound", "move_key", "rebalance_answers"]
