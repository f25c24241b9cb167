"""The arithmetic domain's verifier: the number a question asks for, computed; and every step of a
worked solution, recomputed.

``verify_item(item, solution=None)`` reads the question by its operation words ("plus", "gives away",
"rows of", "shares ... equally", "remainder", "nearest ten", "tens digit", "largest"), not by the
templates the domain's builder fills in, so a teacher's rewording still gets checked; anything it cannot
read with certainty (two operations named, three numbers where two are asked for) is ``unknown``. A
question it reads but that has no right answer in this domain (a count of one noun asked about another,
a division that does not come out exact, a negative difference) is ill-posed: ``wrong``, whatever its key. ``data/arithmetic/answer_key.py`` reads the
builder's own templates by another code path: the benchmark counts wrong keys with that one.

A worked solution is checked step by step: every ``a op b [op c] = d`` (``+ - × ÷``, ``÷`` with an
optional ``r`` remainder) must hold, and the answer it states must be the one computed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from data.records import MCQItem
from data.verification import Verification

_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.]\d)")
# Operation words, each group naming one operation; a question that names two is not read.
_CUES: dict[str, re.Pattern[str]] = {
    "divide": re.compile(r"\b(divided by|divide|quotient|shares?|equally|each friend|to a box|boxes are filled)\b", re.I),
    "multiply": re.compile(r"\b(times|multipl(y|ied)|product|bags with|in each bag|rows of)\b|×", re.I),
    "subtract": re.compile(r"\b(minus|subtract|difference|gives away|taken out|take away|left|remain)\b", re.I),
    "add": re.compile(r"\b(plus|add|sum|more|in all|altogether|total)\b", re.I),
}
_REMAINDER = re.compile(r"\b(remainder|left over)\b", re.I)
_ROUND = re.compile(r"\bnearest (ten|hundred|thousand)\b", re.I)
_PLACE = re.compile(r"\b(ones|tens|hundreds|thousands) (?:digit|place)\b", re.I)
_EXTREME = re.compile(r"\b(largest|greatest|biggest|smallest|least)\b", re.I)
_SUBTRACT_FROM = re.compile(r"\bsubtract (\d+) from (\d+)\b", re.I)
_PLURAL = re.compile(r"\b(?:\d+|many|of|with|more|away|holds)\s+([a-z]+s)\b", re.I)
_NOT_NOUNS = {"is", "was", "has", "gets", "does", "friends", "boxes", "bags", "rows", "groups", "tens", "ones", "hundreds", "thousands", "plus", "minus", "times"}

# a op b [op c ...] = d [r e]: one step of a worked solution
_STEP = re.compile(r"(?<![\d.])(\d+(?:\s*[-+×÷]\s*\d+)+)\s*=\s*(\d+)(?:\s*r\s*(\d+))?")
_STATED = re.compile(r"\bThe (?:answer|remainder|largest|smallest|(?:ones|tens|hundreds|thousands) digit) is (\d+)\b")


def _nouns(question: str) -> set[str]:
    return {m.lower() for m in _PLURAL.findall(question) if m.lower() not in _NOT_NOUNS}


class IllPosed(ValueError):
    """A question that is read but has no right answer in this domain."""


def question_answer(question: str) -> tuple[int | None, str]:
    """``(answer, how)``: the number ``question`` asks for and how it was read, or ``(None, why not)``.
    Raises IllPosed for a question that has no right answer here."""
    q = question.strip()
    numbers = [int(n) for n in _NUMBER.findall(q)]
    if m := _ROUND.search(q):
        if len(numbers) != 1:
            return None, f"asks for rounding but names {len(numbers)} numbers"
        n, place = numbers[0], {"ten": 10, "hundred": 100, "thousand": 1000}[m[1].lower()]
        down = n - n % place
        return (down + place if 2 * (n % place) >= place else down), f"{n} rounded to the nearest {m[1].lower()}"
    if m := _PLACE.search(q):
        if len(numbers) != 1:
            return None, f"asks for a digit but names {len(numbers)} numbers"
        index = ("ones", "tens", "hundreds", "thousands").index(m[1].lower())
        n = numbers[0]
        if len(str(n)) <= index:
            return None, f"{n} has no {m[1].lower()} digit"
        return (n // 10**index) % 10, f"the {m[1].lower()} digit of {n}"
    if m := _EXTREME.search(q):
        if len(numbers) < 2:
            return None, f"asks for the {m[1].lower()} of {len(numbers)} number(s)"
        pick = max if m[1].lower() in ("largest", "greatest", "biggest") else min
        return pick(numbers), f"the {m[1].lower()} of {', '.join(map(str, numbers))}"
    if len(numbers) != 2:
        return None, f"names {len(numbers)} numbers, not two"
    nouns = _nouns(q)
    if len(nouns) > 1:
        raise IllPosed(f"counts {' and '.join(sorted(nouns))}: it mixes its nouns")
    a, b = numbers
    if _REMAINDER.search(q):
        return (a % b, f"{a} mod {b}") if b else (None, "divides by zero")
    named = [op for op, cue in _CUES.items() if cue.search(q)]
    if len(named) != 1:
        return None, "names no operation" if not named else f"names more than one operation ({', '.join(named)})"
    op = named[0]
    if op == "add":
        return a + b, f"{a} + {b}"
    if op == "multiply":
        return a * b, f"{a} × {b}"
    if op == "subtract":
        if m := _SUBTRACT_FROM.search(q):
            b, a = int(m[1]), int(m[2])
        if a < b:
            raise IllPosed(f"{a} - {b} is negative")
        return a - b, f"{a} - {b}"
    if not b or a % b:
        raise IllPosed(f"{a} ÷ {b} does not come out exact")
    return a // b, f"{a} ÷ {b}"


def _as_number(text: str) -> int | None:
    t = text.strip().rstrip(".").replace(",", "").strip()
    return int(t) if t.isdigit() else None


def _option_stating(options: Mapping[str, str], value: int) -> list[str]:
    return [letter for letter, text in options.items() if _as_number(text) == value]


def _evaluate(expression: str) -> int | None:
    """Left-to-right with × and ÷ first, on whole numbers; None where a ÷ is not exact."""
    tokens = re.findall(r"\d+|[-+×÷]", expression)
    terms: list[tuple[str, int]] = []  # (sign, product)
    sign, value = "+", int(tokens[0])
    for op, num in zip(tokens[1::2], tokens[2::2]):
        n = int(num)
        if op == "×":
            value *= n
        elif op == "÷":
            if n == 0 or value % n:
                return None
            value //= n
        else:
            terms.append((sign, value))
            sign, value = op, n
    terms.append((sign, value))
    return sum(v if s == "+" else -v for s, v in terms)


def check_steps(solution: str) -> tuple[int, str]:
    """``(steps checked, "")`` or ``(steps, the first wrong step and its value)``."""
    n = 0
    for m in _STEP.finditer(solution):
        n += 1
        expression, stated, remainder = m[1], int(m[2]), m[3]
        if remainder is not None:  # "15 ÷ 6 = 2 r 3"
            parts = re.fullmatch(r"(\d+)\s*÷\s*(\d+)", expression.strip())
            if not parts:
                return n, f"step '{m[0]}' has a remainder but is not one division"
            a, b = int(parts[1]), int(parts[2])
            if not b or (a // b, a % b) != (stated, int(remainder)):
                return n, f"step '{m[0]}' is wrong ({a} ÷ {b} = {a // b} r {a % b})" if b else f"step '{m[0]}' divides by zero"
            continue
        value = _evaluate(expression)
        if value is None:
            return n, f"step '{m[0]}' is wrong (the division is not exact)"
        if value != stated:
            return n, f"step '{m[0]}' is wrong ({expression.strip()} = {value})"
    return n, ""


def verify_item(item: MCQItem, solution: str | None = None) -> Verification:
    """Right when the key's option states the computed answer (and every step of ``solution`` holds)."""
    try:
        answer, how = question_answer(item.question)
    except IllPosed as e:
        return Verification("wrong", f"the question has no right answer: {e}")
    if solution:
        steps, wrong_step = check_steps(solution)
        if wrong_step:
            return Verification("wrong", f"the worked solution: {wrong_step}")
        stated = [int(s) for s in _STATED.findall(solution)]
        if answer is not None and stated and stated[-1] != answer:
            return Verification("wrong", f"the worked solution states {stated[-1]}, but {how} = {answer}")
    if answer is None:
        return Verification("unknown", f"the question is not read: {how}")
    keyed = _as_number(item.options.get(item.answer_idx, ""))
    if keyed == answer:
        return Verification("right", f"{how} = {answer}, the key {item.answer_idx}")
    stating = _option_stating(item.options, answer)
    where = f"option {stating[0]}" if len(stating) == 1 else ("no option" if not stating else f"options {', '.join(stating)}")
    return Verification("wrong", f"{how} = {answer}, stated by {where}, not by the key {item.answer_idx}",
                        answer=stating[0] if len(stating) == 1 else None)
