"""The right answer of an arithmetic question read back from its words, for items the domain did not draw.

The loop's validation asks the teacher itself (blind solver and critic) whether a generated item's key
is right; on this domain the truth is computable, so a benchmark can count the accepted items whose key
is wrong (``benchmarks/bench_allocation.py``). ``answer_of`` knows the question forms the domain's
builder writes (``data.arithmetic.skills``) and nothing else: a question in another form, one that mixes
its nouns ("11 rows of 3 coins. How many books are there?"), or one the domain never poses (a negative
difference, a division that does not come out exact) has no answer here (None), so it is counted apart
from the right and the wrong keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from data.arithmetic.skills import (
    ADD_FORMS,
    DIV_FORMS,
    MUL_FORMS,
    NAMES,
    REM_FORMS,
    SUB_FORMS,
    THINGS,
)


def _pattern(template: str) -> re.Pattern[str]:
    """A template as a regex: numbers captured in order, the name and the noun each the same every time."""
    out, seen = [], set()
    for part in re.split(r"(\{\w+\})", template):
        if part in ("{a}", "{b}"):
            out.append(rf"(?P<{part[1]}>\d+)")
        elif part in ("{name}", "{things}"):
            key = part[1:-1]
            words = NAMES if key == "name" else THINGS
            out.append(f"(?P={key})" if key in seen else f"(?P<{key}>{'|'.join(words)})")
            seen.add(key)
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def _exact(a: int, b: int) -> int | None:
    return a // b if b and a % b == 0 else None


_OPERATIONS: tuple[tuple[tuple[str, ...], Callable[[int, int], int | None]], ...] = (
    (ADD_FORMS, lambda a, b: a + b),
    (SUB_FORMS, lambda a, b: a - b if a >= b else None),
    (MUL_FORMS, lambda a, b: a * b),
    (DIV_FORMS, _exact),
    (REM_FORMS, lambda a, b: a % b if b else None),
)
_TWO_NUMBERS = [(_pattern(t), op) for templates, op in _OPERATIONS for t in templates]
_ROUND = re.compile(r"(?:Round (\d+) to the nearest (ten|hundred)\.|What is (\d+) rounded to the nearest (ten|hundred)\?)")
_PLACE = re.compile(r"(?:What is the (ones|tens|hundreds|thousands) digit of (\d+)\?"
                    r"|In the number (\d+), which digit is in the (ones|tens|hundreds|thousands) place\?)")
_LARGEST = re.compile(r"Which (?:is the largest|of these numbers is the largest): (\d+), (\d+), (\d+) or (\d+)\?")


def answer_of(question: str) -> int | None:
    """The answer to ``question`` if it is one of the domain's question forms, else None."""
    q = question.strip()
    for pattern, op in _TWO_NUMBERS:
        if m := pattern.fullmatch(q):
            return op(int(m["a"]), int(m["b"]))
    if m := _ROUND.fullmatch(q):
        n, word = int(m[1] or m[3]), m[2] or m[4]
        place = {"ten": 10, "hundred": 100}[word]
        return n - n % place + (place if 2 * (n % place) >= place else 0)
    if m := _PLACE.fullmatch(q):
        place, n = (m[1], m[2]) if m[1] else (m[4], m[3])
        index = ("ones", "tens", "hundreds", "thousands").index(place)
        return (int(n) // 10**index) % 10 if len(n) > index else None
    if m := _LARGEST.fullmatch(q):
        return max(int(x) for x in m.groups())
    return None


def key_is_right(question: str, options: dict[str, str], answer_idx: str) -> bool | None:
    """Whether the keyed option states the answer (None when the question has none here)."""
    right = answer_of(question)
    if right is None:
        return None
    return options.get(answer_idx, "").strip() == str(right)
