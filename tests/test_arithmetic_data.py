"""The arithmetic domain's data builder: answers right, distractors the named mistakes, pools reproducible."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from data.arithmetic import build, skills
from data.arithmetic.skills import SKILLS
from data.domains import get_domain
from data.records import DataError

SHIPPED = Path(build.__file__).resolve().parent


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def _expected(skill, question: str) -> int:
    """The answer computed from the question's own numbers, independently of the skill's code."""
    nums = _numbers(question)
    op, leaf = skill.path
    if op == "addition":
        return nums[0] + nums[1]
    if op == "subtraction":
        return nums[0] - nums[1] if "Subtract" not in question else nums[1] - nums[0]
    if op == "multiplication":
        return nums[0] * nums[1]
    if op == "division":
        return nums[0] % nums[1] if leaf == "remainders" else nums[0] // nums[1]
    if leaf.startswith("rounding"):
        place = 10 if "ten" in leaf else 100
        return (nums[0] + place // 2) // place * place
    if leaf.endswith("digit"):
        return int(str(nums[0])[-2 if "tens" in leaf else -3])
    return max(nums)


def _column_carries(a: int, b: int) -> int:
    sa, sb = str(a)[::-1], str(b)[::-1]
    carry = count = 0
    for i in range(max(len(sa), len(sb))):
        x = int(sa[i]) if i < len(sa) else 0
        y = int(sb[i]) if i < len(sb) else 0
        carry = int(x + y + carry >= 10)
        count += carry
    return count


@pytest.mark.parametrize("s", SKILLS, ids=lambda s: s.key)
def test_every_drawn_item_is_right_with_four_distinct_options(s):
    items = build.draw_items(s, "test", 40, seed=7)
    for it in items:
        values = list(it.options.values())
        assert len(values) == 4 and len(set(values)) == 4, it
        assert all(v.isdigit() for v in values), it
        assert int(it.options[it.answer_idx]) == _expected(s, it.question), it
        assert it.ability_path == ["arithmetic", *s.path]
        assert it.meta_info == f"{s.operation}:{s.path[-1]}"
    assert len({it.question for it in items}) == len(items)
    assert set(Counter(it.answer_idx for it in items).values()) == {10}  # each letter in turn


def test_carry_and_borrow_conditions_hold():
    cases = {"two-digit addition, no carry": 0, "three-digit addition, no carry": 0, "three-digit addition, one carry": 1}
    for s in SKILLS:
        if s.operation == "addition" and s.path[1] in cases:
            for it in build.draw_items(s, "test", 30, seed=1):
                a, b = _numbers(it.question)[:2]
                assert _column_carries(a, b) == cases[s.path[1]], it.question
        if s.path[1] == "three-digit addition, two or more carries":
            for it in build.draw_items(s, "test", 30, seed=1):
                assert _column_carries(*_numbers(it.question)[:2]) >= 2
        if s.path[1] == "three-digit subtraction, borrow across zero":
            for it in build.draw_items(s, "test", 30, seed=1):
                nums = _numbers(it.question)
                top = max(nums)
                assert str(top)[1] == "0", it.question


def test_distractors_are_the_named_mistakes():
    assert skills.add_without_carry(47, 38) == 75
    assert skills.add_columns_concatenated(47, 38) == 715
    assert skills.carry_into_wrong_column(47, 38) == 175
    assert skills.subtract_smaller_from_larger(52, 38) == 26
    assert skills.borrow_not_paid_back(52, 38) == 24
    assert skills.multiply_partial_unshifted(23, 14) == 115
    assert skills.multiply_dropping_ones_carry(47, 3) == 121
    # an item of a carrying skill offers the dropped-carry answer
    s = skills.skill("addition/two-digit addition, with carry")
    rng = random.Random(0)
    for _ in range(20):
        p = s.draw(rng)
        a, b = _numbers(p.question)[:2]
        opts = build.options_for(p, random.Random(1), "A")
        assert str(skills.add_without_carry(a, b)) in opts.values()
        assert p.mistake_of(skills.add_without_carry(a, b)) == "drops the carry"


def test_pools_are_reproducible_and_held_out(tmp_path):
    assert build.main(["--out", str(tmp_path)]) == 0
    for name in ("seed.jsonl", "eval.jsonl", "domain.yaml"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), f"{name} differs from a rebuild"
    pools = build.build_pools()
    eval_questions = {it.question for it in pools["eval"]}
    assert not eval_questions & {it.question for it in pools["seed"]}
    assert len(pools["seed"]) == 24 * len(SKILLS) and len(pools["eval"]) == 12 * len(SKILLS)
    train = build.training_items(5, seed=0, exclude=eval_questions | {it.question for it in pools["seed"]})
    assert not {it.question for it in train} & eval_questions


def test_preset_loads_with_a_description_for_every_node():
    domain = get_domain("arithmetic")
    assert domain.root == "arithmetic"
    nodes = {"/".join(it.ability_path[:k]) for it in domain.seed_items() for k in range(1, len(it.ability_path) + 1)}
    assert nodes == set(domain.descriptions)
    assert all(domain.descriptions.values())


def test_bad_node_descriptions_are_refused(tmp_path):
    (tmp_path / "s.jsonl").write_text((SHIPPED / "seed.jsonl").read_text().splitlines()[0] + "\n")
    (tmp_path / "domain.yaml").write_text("name: x\nroot: arithmetic\nseed_files: [s.jsonl]\neval_files: [s.jsonl]\nnode_descriptions: [a, b]\n")
    with pytest.raises(DataError, match="domain.yaml: field 'node_descriptions'"):
        get_domain(str(tmp_path / "domain.yaml"))


def test_unknown_skill_names_the_known_ones():
    with pytest.raises(KeyError, match="addition/one-digit addition"):
        skills.skill("addition/nine-digit")


_STEP = re.compile(r"^(\d+) ([-+×÷]) (\d+)(?: \+ (\d+))? = (\d+)(?: r (\d+))?$")


@pytest.mark.parametrize("s", SKILLS, ids=lambda s: s.key)
def test_worked_solutions_are_right_step_by_step(s):
    """Every step of every worked solution is true arithmetic, and the solution ends in the answer."""
    rng = random.Random(7)
    for _ in range(150):
        p = s.draw(rng)
        assert p.work.endswith(f" {p.answer}."), p.work
        steps = [m for m in (_STEP.match(x.strip(" .")) for x in re.split(r"[,:.] ", p.work)) if m]
        if s.operation in ("addition", "subtraction", "multiplication", "division"):
            assert steps, p.work
        for m in steps:
            x, op, y, carry, result, rest = m.groups()
            x, y, carry, result = int(x), int(y), int(carry or 0), int(result)
            if op == "+":
                assert x + y + carry == result, m.group(0)
            elif op == "-":
                assert x - y == result, m.group(0)
            elif op == "×":
                assert x * y + carry == result, m.group(0)
            else:
                assert (x // y, x % y) == (result, int(rest or 0)), m.group(0)


def test_worked_column_steps_spell_the_answer():
    """The ones digits of the column steps, last carry included, are the answer's digits (47 + 38)."""
    assert skills.work_add(47, 38) == "47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8. 47 + 38 = 85."
    assert skills.work_sub(503, 398) == "503 - 398: 13 - 8 = 5, 9 - 9 = 0, 4 - 3 = 1. 503 - 398 = 105."
    assert skills.work_mul(47, 6) == "47 × 6: 7 × 6 = 42, 4 × 6 + 4 = 28. 47 × 6 = 282."
    assert skills.work_div(156, 6) == "156 ÷ 6: 15 ÷ 6 = 2 r 3, 36 ÷ 6 = 6 r 0. 156 ÷ 6 = 26."
    assert skills.work_div(38, 5) == "38 ÷ 5 = 7 r 3."


def test_answer_key_reads_every_shipped_question_and_refuses_the_rest():
    from data.arithmetic.answer_key import answer_of, key_is_right

    domain = get_domain("arithmetic")
    items = [*domain.seed_items(), *domain.eval_items()]
    assert items and all(key_is_right(it.question, it.options, it.answer_idx) for it in items)
    item = items[0]
    moved = next(letter for letter in item.options if letter != item.answer_idx)
    assert key_is_right(item.question, item.options, moved) is False
    # the teacher's malformed questions (seen in a loop run): mixed nouns, a negative difference, an
    # inexact division, another form; none has an answer here
    for question in ("There are 11 rows of 3 coins. How many books are there?", "What is 70 minus 98?",
                     "What is 26 divided by 7?", "What is the carry of 223?", "What is 2 plus 2? And 3?"):
        assert answer_of(question) is None, question
    assert answer_of("What is 838 plus 248?") == 1086 and answer_of("Round 905 to the nearest ten.") == 910
    assert answer_of("In the number 4967, which digit is in the hundreds place?") == 9
