"""Domain verifiers: the arithmetic verifier against the domain's own keys and the answer key's separate
reader, loading a verifier spec (module:function, file.py:function) with one-line errors, domain.yaml's
``verifier`` field, the validate stage's verifier gate and the label stage's check of worked solutions."""

from __future__ import annotations

import random
import textwrap

import pytest

from data.arithmetic.answer_key import answer_of, key_is_right
from data.arithmetic.build import draw_problems
from data.arithmetic.skills import SKILLS
from data.arithmetic.verify import check_steps, question_answer, verify_item
from data.domains import get_domain
from data.records import DataError, GeneratedItem, MCQItem
from data.verification import Verification, load_verifier, run_verifier
from scratch.tasks import worked_reply
from synth.validate import ValidationConfig, validate_items
from synth.verify import check_solutions, gate
from tests.fixtures.scripted_engine import ScriptedEngine, user_text


def item(question: str, options: list[str], key: str = "A", **extra) -> GeneratedItem:
    return GeneratedItem(id=extra.pop("id", "g1"), question=question, options={chr(65 + i): t for i, t in enumerate(options)},
                         answer_idx=key, target_node="arithmetic/addition", **extra)


# ----------------------------------------------------------------------------- the arithmetic verifier


def test_every_shipped_key_is_right():
    domain = get_domain("arithmetic")
    verdicts = [verify_item(it) for it in (*domain.seed_items(), *domain.eval_items())]
    assert len(verdicts) == 936 and all(v.verdict == "right" for v in verdicts), [v for v in verdicts if v.verdict != "right"][:3]


def test_the_domains_worked_solutions_check_step_by_step():
    for skill in SKILLS:
        for it, problem in draw_problems(skill, "verify-test", 20, 3, set(), unique=False):
            v = verify_item(it, worked_reply(problem))
            assert v.verdict == "right", (it.question, worked_reply(problem), v)


def test_it_agrees_with_the_answer_keys_own_reader_on_random_keys():
    """Two code paths (operation words here, the builder's templates in answer_key) give one answer."""
    rng = random.Random(0)
    n = 0
    for skill in SKILLS:
        for it, _ in draw_problems(skill, "agree", 40, 5, set(), unique=False):
            key = rng.choice(list(it.options))
            moved = it.model_copy(update={"answer_idx": key})
            assert question_answer(it.question)[0] == answer_of(it.question)
            assert (verify_item(moved).verdict == "right") == key_is_right(it.question, it.options, key)
            n += 1
    assert n == 40 * len(SKILLS)


@pytest.mark.parametrize("question, answer", [
    ("Tom has 12 apples and buys 5 more. How many apples does Tom have in total?", 17),  # no template says this
    ("Subtract 38 from 52. What is the difference?", 14),
    ("What is 1,204 rounded to the nearest hundred?", None),  # "1,204" is two numbers to this reader: not read
    ("What is 640 rounded to the nearest hundred?", 600),
    ("Which is the smallest: 8257, 8752, 8572 or 8275?", 8257),
    ("What is the thousands digit of 704?", None),
])
def test_questions_beyond_the_templates(question, answer):
    assert question_answer(question)[0] == answer
    if answer is not None:
        assert answer_of(question) is None or answer_of(question) == answer


@pytest.mark.parametrize("question, why", [
    ("What is 12 plus 5 times 3?", "names 3 numbers"),
    ("Ana has 9 apples and gives away 4 more. How many apples are left?", "more than one operation"),
])
def test_questions_it_will_not_read_are_unknown(question, why):
    v = verify_item(item(question, ["1", "2", "3", "4"]))
    assert v.verdict == "unknown" and why in v.reason, v


@pytest.mark.parametrize("question, why", [  # real drafts of the scratch teacher, 2026-12-07
    ("There are 9 rows of 3 beads. How many pencils are there?", "counts beads and pencils: it mixes its nouns"),
    ("What is 23 divided by 3?", "23 ÷ 3 does not come out exact"),
    ("What is 5 minus 12?", "5 - 12 is negative"),
])
def test_questions_without_a_right_answer_are_wrong_whatever_the_key(question, why):
    v = verify_item(item(question, ["27", "7", "3", "4"]))
    assert v.verdict == "wrong" and v.answer is None and v.reason == f"the question has no right answer: {why}", v
    assert gate(item(question, ["27", "7", "3", "4"]), verify_item).action == "rejected"


def test_a_wrong_key_names_the_option_that_is_right():
    v = verify_item(item("What is 47 plus 38?", ["75", "85", "715", "84"], key="A"))
    assert v.verdict == "wrong" and v.answer == "B" and "47 + 38 = 85, stated by option B, not by the key A" in v.reason
    v = verify_item(item("What is 47 plus 38?", ["75", "86", "715", "84"], key="A"))
    assert v.verdict == "wrong" and v.answer is None and "stated by no option" in v.reason


def test_a_wrong_step_or_stated_answer_makes_the_solution_wrong():
    good = item("What is 47 plus 38?", ["85", "75", "715", "84"])
    assert verify_item(good, "47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8. 47 + 38 = 85. The answer is 85.").verdict == "right"
    v = verify_item(good, "47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 9. 47 + 38 = 85. The answer is 85.")
    assert v.verdict == "wrong" and "'4 + 3 + 1 = 9' is wrong (4 + 3 + 1 = 8)" in v.reason
    v = verify_item(good, "47 + 38 = 85. The answer is 95.")
    assert v.verdict == "wrong" and "states 95" in v.reason
    assert check_steps("156 ÷ 6: 15 ÷ 6 = 2 r 3, 36 ÷ 6 = 6 r 0.") == (2, "")
    assert "is wrong (15 ÷ 6 = 2 r 3)" in check_steps("15 ÷ 6 = 2 r 4")[1]
    assert check_steps("34 × 3: 4 × 3 = 12, 3 × 3 + 1 = 10.") == (2, "")


# ------------------------------------------------------------------------------------ loading a spec


def test_specs_load_from_a_module_or_a_file(tmp_path):
    assert load_verifier("data.arithmetic.verify:verify_item") is verify_item
    own = tmp_path / "my_checks.py"
    own.write_text(textwrap.dedent("""
        from data.verification import Verification
        def check(item, solution=None):
            return Verification("right" if item.answer_idx == "A" else "wrong", "A is always right here", "A")
    """))
    f = load_verifier(f"{own}:check")
    assert run_verifier(f, MCQItem(id="x", question="q?", options={"A": "a", "B": "b"}, answer_idx="B")).answer == "A"


def test_bad_specs_are_one_line_naming_the_option(tmp_path):
    (tmp_path / "two_args.py").write_text("def f(item):\n    return None\nNOT_A_FUNCTION = 3\n")
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    cases = [
        ("verify_item", "is not module:function"),
        ("no.such.module:f", "cannot be imported"),
        ("data.arithmetic.verify:nothing", "has no attribute 'nothing'"),
        (f"{tmp_path / 'two_args.py'}:NOT_A_FUNCTION", "is not a function"),
        (f"{tmp_path / 'two_args.py'}:f", "must accept (item, solution=None)"),
        (f"{tmp_path / 'broken.py'}:f", "ModuleNotFoundError"),
        (f"{tmp_path / 'absent.py'}:f", "not found"),
    ]
    for spec, detail in cases:
        with pytest.raises(DataError) as e:
            load_verifier(spec, "--verifier")
        message = str(e.value)
        assert message.startswith("--verifier: ") and detail in message and "\n" not in message, (spec, message)


def test_a_verifier_that_returns_something_else_is_refused():
    with pytest.raises(TypeError, match="returned bool, not data.verification.Verification"):
        run_verifier(lambda item, solution=None: True, MCQItem(id="x", question="q?", options={"A": "a", "B": "b"}, answer_idx="A"))
    with pytest.raises(ValueError, match="verdict must be one of"):
        Verification("maybe", "")


def test_domain_yaml_names_its_verifier(tmp_path):
    assert get_domain("arithmetic").verifier == "data.arithmetic.verify:verify_item"
    assert get_domain("clinical").verifier == ""
    (tmp_path / "items.jsonl").write_text('{"id": "a-1", "question": "What is 2 plus 2?", "options": {"A": "4", "B": "5"}, "answer_idx": "A"}\n')
    (tmp_path / "checks.py").write_text("def check(item, solution=None):\n    return None\n")
    base = "name: t\nroot: t\nseed_files: [items.jsonl]\neval_files: [items.jsonl]\n"
    (tmp_path / "ok.yaml").write_text(base + "verifier: checks.py:check\n")
    assert get_domain(str(tmp_path / "ok.yaml")).verifier == f"{tmp_path / 'checks.py'}:check"  # relative to the yaml
    (tmp_path / "bad.yaml").write_text(base + "verifier: checks.py:missing\n")
    with pytest.raises(DataError, match=r"bad.yaml: field 'verifier': '.*checks.py:missing': .*checks.py has no attribute 'missing'"):
        get_domain(str(tmp_path / "bad.yaml"))


# --------------------------------------------------------------------------------- the gate and label


def test_the_gate_passes_rekeys_rejects_and_keeps_unknowns():
    right = item("What is 47 plus 38?", ["85", "75", "715", "84"], explanation="47 + 38 = 85.")
    rekey = item("What is 47 plus 38?", ["75", "85", "715", "84"], explanation="47 + 38 = 75.")
    absent = item("What is 47 plus 38?", ["75", "86", "715", "84"])
    unread = item("What is 12 plus 5 times 3?", ["33", "34", "14", "8"])
    assert gate(right, verify_item).action == "passed"
    out = gate(rekey, verify_item)
    assert out.action == "rekeyed" and out.item.answer_idx == "B" and out.item.explanation == ""  # its explanation argued for A
    assert gate(rekey, verify_item, on_wrong="reject").item is None
    assert gate(absent, verify_item).action == "rejected"
    assert gate(unread, verify_item).action == "kept_unknown"
    assert gate(unread, verify_item, on_unknown="reject").item is None


def test_validation_runs_the_verifier_before_the_agents():
    right = item("What is 47 plus 38?", ["85", "75", "715", "84"], id="right")
    rekey = item("What is 36 plus 41?", ["67", "77", "76", "87"], id="rekey")
    absent = item("What is 52 plus 19?", ["61", "81", "72", "17"], id="absent")

    def pick(prompt):  # the solver picks the right number wherever it is shown
        text = user_text(prompt)
        return {"47": "85", "36": "77", "52": "71"}[text.split("What is ")[1][:2]]

    solver = ScriptedEngine(pick=pick, name="teacher")
    critic_seen = []

    def critic(prompt):
        critic_seen.append(user_text(prompt))
        return 'accept", "reason": "fine"}'

    result = validate_items([right, rekey, absent], solver=solver, critic=ScriptedEngine(reply=critic, name="teacher"),
                            config=ValidationConfig(rebalance=False), verifier=verify_item, verifier_name="arith")
    assert [it.id for it in result.accepted] == ["right", "rekey"]
    assert result.accepted[1].answer_idx == "B"
    (rejected,) = result.rejected
    assert rejected["id"] == "absent" and rejected["stage"] == "verifier" and "52 + 19 = 71, stated by no option" in rejected["reason"]
    assert result.report["verifier"] == {"name": "arith", "right": 1, "wrong": 2, "unknown": 0, "passed": 1, "rekeyed": 1,
                                         "rejected": 1, "kept_unknown": 0}
    assert result.report["rejected_by_stage"]["verifier"] == 1
    by_id = {d["id"]: d for d in result.decisions}
    assert by_id["rekey"]["verifier"]["rekeyed"] == "A -> B" and by_id["right"]["verifier"]["verdict"] == "right"
    assert len(critic_seen) == 2 and all("Explanation:" not in t for t in critic_seen)
    no_verifier = validate_items([right], solver=solver, critic=ScriptedEngine(reply=critic), config=ValidationConfig(rebalance=False))
    assert no_verifier.report["verifier"] is None


def test_the_label_stage_refuses_solutions_with_a_wrong_step():
    good = MCQItem(id="a", question="What is 47 plus 38?", options={"A": "85", "B": "75"}, answer_idx="A",
                   solution="47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8. 47 + 38 = 85. The answer is 85.")
    lucky = good.model_copy(update={"id": "b", "solution": "47 + 38: 7 + 8 = 14, 4 + 3 + 1 = 8. 47 + 38 = 85. The answer is 85."})
    kept, refused = check_solutions(verify_item, [good, lucky])
    assert [it.id for it in kept] == ["a"] and refused[0][0].id == "b" and "'7 + 8 = 14' is wrong" in refused[0][1].reason


def test_the_validation_bench_reuses_calls_from_its_file_and_counts_keys(tmp_path):
    from benchmarks.bench_validation import CachedEngine, key_counts
    from engines.base import SamplingParams

    engine = ScriptedEngine(reply=lambda p: f"echo {user_text(p)}", pick=lambda p: "85", name="t")
    prompts = [[{"role": "user", "content": "What is 47 plus 38?\nA. 85\nB. 75"}]]
    first = CachedEngine(engine, tmp_path / "calls.jsonl")
    out = first.generate(prompts, SamplingParams(max_new_tokens=8))
    assert first.generate(prompts, SamplingParams(max_new_tokens=8)) == out and len(engine.calls) == 1
    first.generate(prompts, SamplingParams(max_new_tokens=9))  # other parameters: another call
    again = CachedEngine(engine, tmp_path / "calls.jsonl")
    assert again.generate(prompts, SamplingParams(max_new_tokens=8)) == out and len(engine.calls) == 2  # from the file
    assert again.choice_logprobs(prompts, "AB") == first.choice_logprobs(prompts, "AB")
    items = [item("What is 47 plus 38?", ["85", "75", "715", "84"], id="r"), item("What is 47 plus 38?", ["75", "85", "7", "4"], id="w"),
             item("There are 11 rows of 3 coins. How many books are there?", ["33", "34", "14", "8"], id="u")]  # the answer key: unreadable
    c = key_counts(items, lambda it: key_is_right(it.question, it.options, it.answer_idx))
    assert (c.accepted, c.right, c.wrong, c.unreadable, c.right_ids) == (3, 1, 1, 1, {"r"})
