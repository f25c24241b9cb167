"""The arithmetic domain's skills: what each leaf of its ability tree asks, and the mistakes it invites.

Every skill draws its operands from a ``random.Random`` (so a pool is a pure function of its seed),
computes the correct answer, and names its distractors after the typical mistakes of that skill: a
dropped carry, a borrow never taken, the smaller digit taken from the larger, a partial product not
shifted, a quotient one off, rounding the wrong way. Options are the numbers those mistakes produce;
when two mistakes give the same number, or one gives the right answer, the next mistake on the list
(then an off-by-one or off-by-ten) fills the slot, so every item has four distinct options and exactly
one correct one.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo", "Nia", "Omar", "Pia")
# Sub-topics are named in words: a tree node's name must be mostly letters (``tree.propose.name_problem``).
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THINGS = ("apples", "books", "coins", "stamps", "marbles", "pencils", "shells", "cards", "beads", "tickets")


@dataclass(frozen=True)
class Problem:
    """One drawn instance of a skill: the question text, the answer and the mistaken answers."""

    question: str
    answer: int
    mistakes: tuple[tuple[int, str], ...]  # (wrong answer, the mistake that gives it), most typical first
    work: str = ""  # the worked solution, column by column, ending in the answer (see ``scratch.tasks``)
    topic: str = ""  # the narrower sub-topic it belongs to ("the seven times table"); "" where a skill has none

    def mistake_of(self, value: int) -> str:
        """The name of the first mistake that gives ``value`` ("" for a filler or the answer)."""
        return next((name for v, name in self.mistakes if v == value), "")


def worked_reply(problem: Problem) -> str:
    """The reply a perfect solver gives: the worked solution, then the answer stated as its option's text."""
    return f"{problem.work} The answer is {problem.answer}."


@dataclass(frozen=True)
class Skill:
    """A leaf of the tree: ``path`` below the root, a description, and the draw of one problem."""

    path: tuple[str, ...]  # e.g. ("addition", "two-digit addition, with carry")
    description: str
    draw: Callable[[random.Random], Problem]

    @property
    def operation(self) -> str:
        return self.path[0]

    @property
    def key(self) -> str:
        return "/".join(self.path)


# ---------------------------------------------------------------- digit helpers


def digits(n: int, width: int) -> list[int]:
    """Digits of ``n``, least significant first, padded to ``width``."""
    return [(n // 10**i) % 10 for i in range(width)]


def from_digits(ds: list[int]) -> int:
    return sum(d * 10**i for i, d in enumerate(ds))


def add_without_carry(a: int, b: int) -> int:
    """Column sums written mod 10, every carry dropped (47 + 38 -> 75)."""
    w = max(len(str(a)), len(str(b)))
    return from_digits([(x + y) % 10 for x, y in zip(digits(a, w), digits(b, w))])


def add_columns_concatenated(a: int, b: int) -> int:
    """Each column's full sum written down side by side (47 + 38 -> 7|15 = 715)."""
    w = max(len(str(a)), len(str(b)))
    cols = [x + y for x, y in zip(digits(a, w), digits(b, w))]
    return int("".join(str(c) for c in reversed(cols)))


def carry_into_wrong_column(a: int, b: int) -> int:
    """The carry added two columns up instead of one (47 + 38 -> 75 + 100 = 175)."""
    w = max(len(str(a)), len(str(b)))
    da, db = digits(a, w), digits(b, w)
    out, pending = [0] * (w + 2), [0] * (w + 2)
    for i in range(w):
        s = da[i] + db[i] + pending[i]
        out[i] = s % 10
        if s >= 10:
            pending[i + 2] += 1
    for i in range(w, w + 2):
        out[i] = pending[i]
    return from_digits(out)


def subtract_smaller_from_larger(a: int, b: int) -> int:
    """In each column the smaller digit taken from the larger, no borrow (52 - 38 -> 26)."""
    w = len(str(a))
    return from_digits([abs(x - y) for x, y in zip(digits(a, w), digits(b, w))])


def borrow_not_paid_back(a: int, b: int) -> int:
    """A borrow taken (10 added to the column) but the next column never reduced (52 - 38 -> 24)."""
    w = len(str(a))
    da, db = digits(a, w), digits(b, w)
    out = []
    for x, y in zip(da, db):
        out.append(x + 10 - y if x < y else x - y)
    return from_digits([d % 10 for d in out])


def multiply_partial_unshifted(a: int, b: int) -> int:
    """Two-digit multiplier: the tens partial product not shifted (23 x 14 -> 23x4 + 23x1 = 115)."""
    return a * (b % 10) + a * (b // 10)


def multiply_dropping_ones_carry(a: int, b: int) -> int:
    """Two-digit by one digit with the carry of the ones product dropped (47 x 3 -> 12|1 = 121)."""
    return (a // 10) * b * 10 + (a % 10) * b % 10


def multiply_every_column_mod_ten(a: int, b: int) -> int:
    """Each column's product written mod 10, every carry dropped (47 x 3 -> 2|1 = 21)."""
    w = len(str(a))
    return from_digits([(d * b) % 10 for d in digits(a, w)])


# ---------------------------------------------------------------- worked solutions
# One short step per column, ones first, so that every digit of the answer follows from the few tokens
# before it: a model trained from random weights learns such steps quickly, and the whole answer at once
# hardly at all (issue 20).


def add_steps(a: int, b: int) -> str:
    """ "7 + 8 = 15, 4 + 3 + 1 = 8": each column's sum with the carry coming in."""
    w = max(len(str(a)), len(str(b)))
    steps, carry = [], 0
    for x, y in zip(digits(a, w), digits(b, w)):
        total = x + y + carry
        steps.append(f"{x} + {y}{f' + {carry}' if carry else ''} = {total}")
        carry = total // 10
    return ", ".join(steps)


def work_add(a: int, b: int) -> str:
    if a < 10 and b < 10:
        return f"{a} + {b} = {a + b}."
    return f"{a} + {b}: {add_steps(a, b)}. {a} + {b} = {a + b}."


def work_sub(a: int, b: int) -> str:
    """ "52 - 38: 12 - 8 = 4, 4 - 3 = 1": a column that borrows shows its top digit plus ten, the next
    column's top digit is already one less."""
    w = len(str(a))
    steps, borrow = [], 0
    for x, y in zip(digits(a, w), digits(b, w)):
        top = x - borrow
        borrow = 1 if top < y else 0
        steps.append(f"{top + 10 * borrow} - {y} = {top + 10 * borrow - y}")
    return f"{a} - {b}: {', '.join(steps)}. {a} - {b} = {a - b}."


def mul_steps(a: int, d: int) -> str:
    """ "7 × 6 = 42, 4 × 6 + 4 = 28": each digit of ``a`` times the digit ``d``, plus the carry."""
    steps, carry = [], 0
    for x in digits(a, len(str(a))):
        total = x * d + carry
        steps.append(f"{x} × {d}{f' + {carry}' if carry else ''} = {total}")
        carry = total // 10
    return ", ".join(steps)


def work_mul(a: int, b: int) -> str:
    if a < 10 and b < 10 or b in (10, 100):
        return f"{a} × {b} = {a * b}."
    if b < 10:
        return f"{a} × {b}: {mul_steps(a, b)}. {a} × {b} = {a * b}."
    ones, tens = a * (b % 10), a * (b // 10) * 10
    return (f"{a} × {b % 10}: {mul_steps(a, b % 10)}, {ones}. {a} × {b // 10}: {mul_steps(a, b // 10)}, {tens // 10}, "
            f"so {a} × {b // 10 * 10} = {tens}. {ones} + {tens}: {add_steps(ones, tens)}. {a} × {b} = {a * b}.")


def work_div(a: int, b: int) -> str:
    """Long division, leftmost digits first: "156 ÷ 6: 15 ÷ 6 = 2 r 3, 36 ÷ 6 = 6 r 0"."""
    if a // b < 10:
        return f"{a} ÷ {b} = {a // b}{f' r {a % b}' if a % b else ''}."
    steps, rest = [], 0
    for k, ch in enumerate(str(a)):
        rest = 10 * rest + int(ch)
        if rest < b and not steps:
            continue
        steps.append(f"{rest} ÷ {b} = {rest // b} r {rest % b}")
        rest %= b
    return f"{a} ÷ {b}: {', '.join(steps)}. {a} ÷ {b} = {a // b}{f' r {a % b}' if a % b else ''}."


# ---------------------------------------------------------------- question wording

ADD_FORMS = (
    "What is {a} plus {b}?",
    "Add {a} and {b}. What is the sum?",
    "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
    "A box holds {a} {things} and another holds {b}. How many {things} are there in all?",
)
SUB_FORMS = (
    "What is {a} minus {b}?",
    "Subtract {b} from {a}. What is the difference?",
    "{name} has {a} {things} and gives away {b}. How many {things} are left?",
    "There are {a} {things} in a jar. {b} are taken out. How many {things} remain?",
)
MUL_FORMS = (
    "What is {a} times {b}?",
    "Multiply {a} by {b}. What is the product?",
    "{name} buys {a} bags with {b} {things} in each bag. How many {things} is that?",
    "There are {a} rows of {b} {things}. How many {things} are there?",
)
DIV_FORMS = (
    "What is {a} divided by {b}?",
    "Divide {a} by {b}. What is the quotient?",
    "{name} shares {a} {things} equally among {b} friends. How many {things} does each friend get?",
    "{a} {things} are packed {b} to a box. How many boxes are filled?",
)
REM_FORMS = (
    "What is the remainder when {a} is divided by {b}?",
    "{name} puts {a} {things} into groups of {b}. How many {things} are left over?",
    "Divide {a} by {b}. What is the remainder?",
)


def _say(rng: random.Random, templates: tuple[str, ...], **values: int) -> str:
    return rng.choice(templates).format(name=rng.choice(NAMES), things=rng.choice(THINGS), **values)


def _digits_n(rng: random.Random, n: int) -> int:
    return rng.randint(10 ** (n - 1), 10**n - 1)


def _carries(a: int, b: int) -> int:
    w = max(len(str(a)), len(str(b)))
    carry, count = 0, 0
    for x, y in zip(digits(a, w), digits(b, w)):
        carry = 1 if x + y + carry >= 10 else 0
        count += carry
    return count


def _borrows(a: int, b: int) -> int:
    w = len(str(a))
    borrow, count = 0, 0
    for x, y in zip(digits(a, w), digits(b, w)):
        borrow = 1 if x - borrow < y else 0
        count += borrow
    return count


def _until(rng: random.Random, draw: Callable[[], tuple[int, int]], ok: Callable[[int, int], bool]) -> tuple[int, int]:
    for _ in range(10_000):
        a, b = draw()
        if ok(a, b):
            return a, b
    raise RuntimeError("no operands satisfy the skill's condition")  # a bug in a skill definition


# ---------------------------------------------------------------- the skills

OFF_BY = {1: "is off by one", 10: "is off by ten in the tens digit", 100: "is off by one hundred"}


def _off(answer: int, *deltas: int) -> tuple[tuple[int, str], ...]:
    """Answers off by each signed delta, named."""
    return tuple((answer + d, OFF_BY.get(abs(d), f"is off by {abs(d)}")) for d in deltas)


def _addition(n_a: int, n_b: int, carries: int | None, at_least: bool = False) -> Callable[[random.Random], Problem]:
    def draw(rng: random.Random) -> Problem:
        a, b = _until(rng, lambda: (_digits_n(rng, n_a), _digits_n(rng, n_b)),
                      lambda a, b: carries is None or (_carries(a, b) >= carries if at_least else _carries(a, b) == carries))
        s = a + b
        mistakes = ((add_without_carry(a, b), "drops the carry"), (carry_into_wrong_column(a, b), "adds the carry to the wrong column"),
                    (add_columns_concatenated(a, b), "writes each column's sum side by side"), *_off(s, 10, -10, 1, -1))
        return Problem(_say(rng, ADD_FORMS, a=a, b=b), s, mistakes, work_add(a, b))

    return draw


def _subtraction(n_a: int, n_b: int, borrows: int | None, across_zero: bool = False) -> Callable[[random.Random], Problem]:
    def ok(a: int, b: int) -> bool:
        if a <= b or (borrows is not None and _borrows(a, b) != borrows):
            return False
        return not across_zero or (digits(a, 3)[1] == 0 and digits(a, 3)[0] < digits(b, 3)[0])

    def draw(rng: random.Random) -> Problem:
        a, b = _until(rng, lambda: (_digits_n(rng, n_a), _digits_n(rng, n_b)), ok)
        d = a - b
        mistakes = ((subtract_smaller_from_larger(a, b), "takes the smaller digit from the larger instead of borrowing"),
                    (borrow_not_paid_back(a, b), "borrows but does not reduce the next column"), *_off(d, 10, -10),
                    (a + b, "adds instead of subtracting"), *_off(d, 1, -1))
        return Problem(_say(rng, SUB_FORMS, a=a, b=b), d, mistakes, work_sub(a, b))

    return draw


def _times_table(lo: int, hi: int) -> Callable[[random.Random], Problem]:
    def draw(rng: random.Random) -> Problem:
        a, b = rng.randint(lo, hi), rng.randint(2, 9)
        p = a * b
        mistakes = ((a * (b + 1), "recalls a neighbouring times-table fact"), (a * (b - 1), "recalls a neighbouring times-table fact"),
                    ((a + 1) * b, "recalls a neighbouring times-table fact"), (a + b, "adds instead of multiplying"), *_off(p, 1, -1, 10))
        return Problem(_say(rng, MUL_FORMS, a=a, b=b), p, mistakes, work_mul(a, b), f"the {NUMBER_WORDS[a]} times table")

    return draw


def _by_power_of_ten(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 99), rng.choice((10, 100))
    p = a * b
    other = 100 if b == 10 else 10
    mistakes = ((a * other, "appends the wrong number of zeros"), (a * b * 10, "appends the wrong number of zeros"),
                (a + b, "adds instead of multiplying"), (p + b, "adds the factor once too often"), (p - b, "adds the factor once too few"))
    return Problem(_say(rng, MUL_FORMS, a=a, b=b), p, mistakes, work_mul(a, b))


def _two_by_one(carry: bool) -> Callable[[random.Random], Problem]:
    def ok(a: int, b: int) -> bool:
        return ((a % 10) * b >= 10) == carry and ((a // 10) * b < 10 or carry)

    def draw(rng: random.Random) -> Problem:
        a, b = _until(rng, lambda: (_digits_n(rng, 2), rng.randint(2, 9)), ok)
        p = a * b
        dropped = ((multiply_dropping_ones_carry(a, b), "drops the carry of the ones product"),
                   (multiply_every_column_mod_ten(a, b), "drops every carry")) if carry else ()
        mistakes = (*dropped, (a * (b + 1), "multiplies by one more"), (a * (b - 1), "multiplies by one less"),
                    (a + b, "adds instead of multiplying"), *_off(p, 10, -10, 1))
        return Problem(_say(rng, MUL_FORMS, a=a, b=b), p, mistakes, work_mul(a, b), f"multiplying by {NUMBER_WORDS[b]}")

    return draw


def _two_by_two(rng: random.Random) -> Problem:
    a, b = _digits_n(rng, 2), rng.randint(11, 39)
    p = a * b
    mistakes = ((multiply_partial_unshifted(a, b), "does not shift the second partial product"),
                ((a // 10) * (b // 10) * 100 + (a % 10) * (b % 10), "multiplies only tens by tens and ones by ones"),
                *_off(p, 10, -10, 100, -100))
    return Problem(_say(rng, MUL_FORMS, a=a, b=b), p, mistakes, work_mul(a, b))


def _division(q_lo: int, q_hi: int) -> Callable[[random.Random], Problem]:
    def draw(rng: random.Random) -> Problem:
        b, q = rng.randint(2, 9), rng.randint(q_lo, q_hi)
        a = b * q
        mistakes = (*_off(q, 1, -1), (a - b, "subtracts instead of dividing"), *_off(q, 10),
                    (q * 10 if q < 10 else q - 10, "puts the quotient's digit in the wrong place"), *_off(q, 2))
        return Problem(_say(rng, DIV_FORMS, a=a, b=b), q, mistakes, work_div(a, b), f"dividing by {NUMBER_WORDS[b]}")

    return draw


def _remainder(rng: random.Random) -> Problem:
    b = rng.randint(3, 9)
    q, r = rng.randint(2, 12), rng.randint(1, b - 1)
    a = b * q + r
    mistakes = ((q, "gives the quotient instead of the remainder"), (b - r, "counts up to the next multiple instead of down"),
                *_off(r, 1, -1 if r > 1 else 2), (r + b, "stops one group short"))
    return Problem(_say(rng, REM_FORMS, a=a, b=b), r, mistakes, f"{work_div(a, b)} The remainder is {r}.", f"dividing by {NUMBER_WORDS[b]}")


def _rounding(place: int, digits_n: int) -> Callable[[random.Random], Problem]:
    word = {10: "ten", 100: "hundred"}[place]

    def draw(rng: random.Random) -> Problem:
        n = _until(rng, lambda: (_digits_n(rng, digits_n), 0), lambda n, _: n % place != 0 and n % place != place // 2)[0]
        down, up = n - n % place, n - n % place + place
        right = up if n % place > place // 2 else down
        wrong = down if right == up else up
        other_place = 100 if place == 10 else 10
        mistakes = ((wrong, "rounds in the wrong direction"), (round(n / other_place) * other_place, "rounds to the wrong place"),
                    (right + place, f"is off by one {word}"), (right - place, f"is off by one {word}"), (n, "does not round"))
        text = rng.choice((f"Round {n} to the nearest {word}.", f"What is {n} rounded to the nearest {word}?"))
        look = {10: "ones", 100: "tens"}[place]
        digit = (n // (place // 10)) % 10
        work = f"{n} to the nearest {word}: the {look} digit is {digit}, so round {'up' if right == up else 'down'}: {right}."
        return Problem(text, right, mistakes, work)

    return draw


def _place_value(place: str) -> Callable[[random.Random], Problem]:
    index = {"ones": 0, "tens": 1, "hundreds": 2, "thousands": 3}[place]

    def draw(rng: random.Random) -> Problem:
        n = _until(rng, lambda: (rng.randint(1000, 9999), 0), lambda n, _: len(set(str(n))) == 4)[0]
        ds = digits(n, 4)
        right = ds[index]
        # the neighbouring places (the usual misreading), the place counted from the other end
        others = [ds[i] for i in (index - 1, index + 1, 3 - index) if 0 <= i < 4 and i != index]
        mistakes = (*((d, "reads the digit of a neighbouring place") for d in others[:2]), *((d, "counts the places from the wrong end") for d in others[2:]),
                    ((right + 1) % 10, "is off by one"), ((right + 9) % 10, "is off by one"))
        text = rng.choice((f"What is the {place} digit of {n}?", f"In the number {n}, which digit is in the {place} place?"))
        work = f"{n}: thousands {ds[3]}, hundreds {ds[2]}, tens {ds[1]}, ones {ds[0]}. The {place} digit is {right}."
        return Problem(text, right, mistakes, work)

    return draw


def _largest(rng: random.Random) -> Problem:
    """The largest of four numbers made of the same four digits and the same leading digit: the options
    differ only further right, where a quick reader stops looking."""
    n = _until(rng, lambda: (rng.randint(1000, 9999), 0), lambda n, _: len(set(str(n))) == 4 and "0" not in str(n))[0]
    first, rest = str(n)[0], list(str(n)[1:])
    perms = sorted({int(first + "".join(p)) for p in itertools.permutations(rest)})
    chosen = rng.sample(perms, 4)
    right = max(chosen)
    shown = ", ".join(str(c) for c in chosen[:-1]) + f" or {chosen[-1]}"
    text = rng.choice((f"Which is the largest: {shown}?", f"Which of these numbers is the largest: {shown}?"))
    work = f"From the largest down: {', '.join(str(c) for c in sorted(chosen, reverse=True))}. The largest is {right}."
    return Problem(text, right, tuple((c, "compares the digits in the wrong order") for c in sorted((c for c in chosen if c != right), reverse=True)), work)


SKILLS: tuple[Skill, ...] = (
    Skill(("addition", "one-digit addition"), "Adding two one-digit numbers (sums up to 18).", _addition(1, 1, None)),
    Skill(("addition", "two-digit addition, no carry"), "Adding two two-digit numbers where no column reaches ten.", _addition(2, 2, 0)),
    Skill(("addition", "two-digit addition, with carry"), "Adding two two-digit numbers where at least one column reaches ten and carries.", _addition(2, 2, 1, at_least=True)),
    Skill(("addition", "three-digit addition, no carry"), "Adding two three-digit numbers where no column reaches ten.", _addition(3, 3, 0)),
    Skill(("addition", "three-digit addition, one carry"), "Adding two three-digit numbers with exactly one carry.", _addition(3, 3, 1)),
    Skill(("addition", "three-digit addition, two or more carries"), "Adding two three-digit numbers where carries ripple through columns.", _addition(3, 3, 2, at_least=True)),
    Skill(("subtraction", "one digit from two digits, with borrow"), "Taking a one-digit number from a two-digit number whose ones digit is smaller, which needs a borrow.", _subtraction(2, 1, 1)),
    Skill(("subtraction", "two-digit subtraction, no borrow"), "Subtracting two-digit numbers where every top digit is at least the bottom one.", _subtraction(2, 2, 0)),
    Skill(("subtraction", "two-digit subtraction, with borrow"), "Subtracting two-digit numbers where the ones column needs a borrow.", _subtraction(2, 2, 1)),
    Skill(("subtraction", "three-digit subtraction, no borrow"), "Subtracting three-digit numbers with no borrow.", _subtraction(3, 3, 0)),
    Skill(("subtraction", "three-digit subtraction, one borrow"), "Subtracting three-digit numbers with exactly one borrow.", _subtraction(3, 3, 1)),
    Skill(("subtraction", "three-digit subtraction, borrow across zero"), "Subtracting from a three-digit number with a zero in the tens, so the borrow passes through the zero.", _subtraction(3, 3, None, across_zero=True)),
    Skill(("multiplication", "times tables 2 to 5"), "Multiplication facts with one factor from 2 to 5.", _times_table(2, 5)),
    Skill(("multiplication", "times tables 6 to 9"), "Multiplication facts with one factor from 6 to 9.", _times_table(6, 9)),
    Skill(("multiplication", "multiplying by 10 or 100"), "Multiplying by 10 or 100: shifting digits and appending zeros.", _by_power_of_ten),
    Skill(("multiplication", "two-digit by one-digit, no carry"), "A two-digit number times a one-digit number with no carry.", _two_by_one(False)),
    Skill(("multiplication", "two-digit by one-digit, with carry"), "A two-digit number times a one-digit number where the ones product carries.", _two_by_one(True)),
    Skill(("multiplication", "two-digit by two-digit"), "Long multiplication of two two-digit numbers: two partial products, the second shifted.", _two_by_two),
    Skill(("division", "exact division, times tables"), "Exact division that inverts a multiplication fact (quotients 2 to 9).", _division(2, 9)),
    Skill(("division", "exact division, two-digit quotient"), "Exact division of a two- or three-digit number by one digit, with a quotient from 10 to 30.", _division(10, 30)),
    Skill(("division", "remainders"), "The remainder of a division by a one-digit number.", _remainder),
    Skill(("place value", "rounding to the nearest ten"), "Rounding a three-digit number to the nearest ten.", _rounding(10, 3)),
    Skill(("place value", "rounding to the nearest hundred"), "Rounding a three-digit number to the nearest hundred.", _rounding(100, 3)),
    Skill(("place value", "naming the tens digit"), "Naming the digit in the tens place of a four-digit number.", _place_value("tens")),
    Skill(("place value", "naming the hundreds digit"), "Naming the digit in the hundreds place of a four-digit number.", _place_value("hundreds")),
    Skill(("place value", "largest of four numbers"), "Picking the largest of four numbers that share their leading digits.", _largest),
)

OPERATIONS: dict[str, str] = {
    "addition": "Adding whole numbers, column by column, carrying when a column reaches ten.",
    "subtraction": "Subtracting whole numbers, column by column, borrowing when a top digit is smaller.",
    "multiplication": "Multiplication facts and multi-digit multiplication with carries and partial products.",
    "division": "Division by a one-digit number: exact quotients and remainders.",
    "place value": "What each digit of a number is worth: naming digits, rounding, comparing.",
}


def skill(key: str) -> Skill:
    """The skill whose ``path`` joined by "/" is ``key`` (KeyError naming the known keys otherwise)."""
    for s in SKILLS:
        if s.key == key:
            return s
    raise KeyError(f"unknown arithmetic skill {key!r}; known: {', '.join(s.key for s in SKILLS)}")
