"""A domain's own models: the tokenizer, the teacher's tasks in the loop's own prompts, a tiny build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data.arithmetic.build import distractors, draw_problems
from data.arithmetic.skills import NUMBER_WORDS, SKILLS, Problem
from prompts.extract import extract_answer
from prompts.parse import CriticVerdict, MCQDraft, parse_completion
from scratch.build import ScratchConfig, build, is_built
from scratch.tasks import TASKS, TaskBuilder, domain_tree, shared_topic
from scratch.tokenizer import train_tokenizer
from tree import AbilityTree
from tree.diagnose import DiagnoseConfig, grow_children, parse_diagnoses, parse_subtopic

ROOT = Path(__file__).resolve().parents[1]

SKILL = {s.key: s for s in SKILLS}


@pytest.fixture(scope="module")
def examples():
    return TaskBuilder(seed=3).examples({task: 2 for task in TASKS})


@pytest.fixture(scope="module")
def tokenizer(examples):
    return train_tokenizer([m["content"] for e in examples for m in e.messages], vocab_size=400)


def test_digits_are_single_tokens_and_text_round_trips(tokenizer):
    text = 'What is 4705 plus 38? {"answer_idx": "C"}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert all(len(p.lstrip("Ġ")) == 1 for p in pieces if any(ch.isdigit() for ch in p))
    assert tokenizer.decode(ids) == text


def test_chat_template_continues_an_assistant_prefix(tokenizer):
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer is"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    assert text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nThe answer is"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_every_task_is_built_for_every_skill(examples):
    counts = Counter((e.task, e.skill) for e in examples)
    assert set(counts) == {(t, s.key) for t in TASKS for s in SKILLS}
    assert set(counts.values()) == {2}


def test_replies_are_what_the_loop_parses_and_right_by_the_answer_key(examples):
    answer_items = [item for s in SKILLS for item, _ in draw_problems(s, "task-answer", 2, 3, unique=False)]
    for e in examples:
        reply = e.messages[-1]["content"]
        if e.task == "answer":  # the worked solution, then the key's option text stated
            item = next(it for it in answer_items if it.question in e.messages[0]["content"])
            assert reply.endswith(f" The answer is {item.options[item.answer_idx]}.")
            assert extract_answer(reply, item.options) == item.answer_idx
        elif e.task == "generate":
            parsed = parse_completion(reply, MCQDraft)
            assert parsed.ok, reply
            item = parsed.value
            assert len(item.options) == 4 and item.answer_idx in item.options
            assert list(json.loads(reply)) == ["question", "explanation", "options", "answer_idx"]  # worked out first
            # the key first, then the distractors most typical first: every option follows from the question
            _, problem = next(pair for s in SKILLS for pair in draw_problems(s, "task-generate", 2, 3, unique=False)
                              if pair[0].question == item.question)
            assert item.answer_idx == "A" and list(item.options.values()) == [str(v) for v in (problem.answer, *distractors(problem))]
            assert extract_answer(item.explanation, item.options) == item.answer_idx
            assert '"explanation" works the answer out first.' in e.messages[0]["content"]  # as the loop asks
            assert e.messages[0]["content"].startswith(f"Write a new multiple-choice question about {SKILL[e.skill].path[-1]}")
        elif e.task == "critic":
            parsed = parse_completion(reply, CriticVerdict)
            assert parsed.ok and parsed.value.verdict in ("accept", "reject")
        else:
            assert "answers multiple-choice questions on arithmetic" in e.messages[0]["content"]
            lines = parse_diagnoses(reply, DiagnoseConfig())
            bullets = [line for line in reply.splitlines() if line.startswith("- ")]
            assert lines and len(lines) == len(bullets), reply  # none dropped as an echo or by shape
            assert len(reply.splitlines()) - len(bullets) == (parse_subtopic(reply) is not None)


def test_diagnoses_name_the_sub_topic_most_misses_share_and_the_tree_grows_it():
    times = SKILL["multiplication/times tables 6 to 9"]
    examples = TaskBuilder(skills=[times], seed=1).examples({"diagnose": 40})
    named = [(e, parse_subtopic(e.messages[-1]["content"])) for e in examples]
    named = [(e, name) for e, name in named if name]
    assert 10 <= len(named) < len(examples)  # every other group of two or more misses shares a table
    tree = domain_tree()
    node = tree.resolve("arithmetic/multiplication/times tables 6 to 9")
    for e, name in named:
        prompt = e.messages[0]["content"]
        assert 'add a last line "Sub-topic: "' in prompt  # asked exactly as tree.diagnose asks
        table = name.split()[1]  # "the seven times table": most shown questions have a factor of seven
        factor = str(NUMBER_WORDS.index(table))
        questions = [line for line in prompt.splitlines() if line.startswith("Question ")]
        assert 2 * sum(f" {factor} " in f" {q.replace('?', ' ')} " for q in questions) > len(questions)
    added = grow_children(tree, [(node, name) for _, name in named[:1]], {node: 3}, DiagnoseConfig())
    assert added == [f"{node}/{named[0][1]}"]
    one_miss = [e for e in examples if e.messages[0]["content"].count("Question ") == 1]
    assert one_miss and all("Sub-topic" not in e.messages[0]["content"] for e in one_miss)  # one miss: not asked
    plain = TaskBuilder(skills=[SKILL["addition/one-digit addition"]], seed=1).examples({"diagnose": 20})
    assert not any(parse_subtopic(e.messages[-1]["content"]) for e in plain)  # a skill without sub-topics names none


def test_shared_topic_needs_more_than_half():
    p = [Problem("q", 1, (), "", t) for t in ("a", "a", "b")]
    assert shared_topic(p) == "a" and shared_topic(p[1:]) == "" and shared_topic([Problem("q", 1, ())] * 2) == ""


def test_critic_examples_are_half_accept_half_reject(examples):
    critic = [e for e in examples if e.task == "critic"]
    verdicts = Counter(json.loads(e.messages[-1]["content"])["verdict"] for e in critic)
    assert verdicts["accept"] == verdicts["reject"] == len(SKILLS)


def test_config_refuses_unknown_skills_and_domains():
    with pytest.raises(ValueError, match="unknown skill"):
        ScratchConfig(student_skips="addition/nine digits")
    with pytest.raises(ValueError, match="only 'arithmetic'"):
        ScratchConfig(domain="clinical")


def test_the_solver_is_trained_apart_from_the_teacher():
    with pytest.raises(ValueError, match="solver_seed must differ from seed"):
        ScratchConfig(solver=True, solver_seed=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        ScratchConfig(solver_hidden=100)
    config = ScratchConfig(solver=True)
    assert config.shape("solver") != config.shape("teacher")


def test_cli_bad_option_exits_2(capsys, tmp_path):
    from scratch.__main__ import main

    assert main(["build", "--teacher-hidden", "100"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert main(["build", "--teacher-init", str(tmp_path)]) == 2
    assert f"teacher_init: {tmp_path} is not a built model" in capsys.readouterr().err


TINY = {"teacher_layers": 1, "teacher_hidden": 32, "teacher_steps": 2, "student_layers": 1, "student_hidden": 32,
        "student_steps": 1, "answer_per_skill": 1, "generate_per_skill": 1, "critic_per_skill": 1, "diagnose_per_skill": 1,
        "student_answer_per_skill": 1, "batch_size": 4, "vocab_size": 300, "eval_per_skill": 1}
TINY_LR = ScratchConfig.learning_rate


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """ATKD_CACHE pointing at a cache holding a tiny build (for this module's tests and their subprocesses)."""
    cache = tmp_path_factory.mktemp("atkd-cache")
    old = os.environ.get("ATKD_CACHE")
    os.environ["ATKD_CACHE"] = str(cache)
    infos = build(ScratchConfig(**TINY))
    yield cache, infos
    if old is None:
        del os.environ["ATKD_CACHE"]
    else:
        os.environ["ATKD_CACHE"] = old


def test_a_tiny_build_is_cached_reused_and_loadable(tiny_cache):
    cache, infos = tiny_cache
    config = ScratchConfig(**TINY)
    root = cache / "models" / "scratch" / "arithmetic"
    for who in ("teacher", "student"):
        assert is_built(root / who)
        info = json.loads((root / who / "build_info.json").read_text())
        assert info["steps"] == infos[who]["steps"] and info["eval"]["n"] == len(SKILLS)
        assert set(info["eval"]["per_node"]) == {"/".join(["arithmetic", *s.path]) for s in SKILLS}
    assert infos["student"]["skills_skipped"] == config.skipped
    assert infos["teacher"]["examples"] == {t: len(SKILLS) for t in TASKS}
    stamp = (root / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert build(config)["teacher"]["train_seconds"] == infos["teacher"]["train_seconds"]  # reused
    assert (root / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp

    from engines import load_engine, parse_spec

    assert parse_spec("scratch:arithmetic/teacher").local_path() == root / "teacher"
    engine = load_engine("scratch:arithmetic/student", "transformers")
    scored = engine.choice_logprobs([[{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "The answer is"}]], list("ABCD"))
    assert set(scored[0]) == set("ABCD")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_an_independent_solver_is_built_beside_the_pair(tiny_cache):
    cache, infos = tiny_cache
    root = cache / "models" / "scratch" / "arithmetic"
    config = ScratchConfig(**TINY, solver=True, solver_layers=1, solver_hidden=64, solver_steps=1, solver_answer_per_skill=1)
    got = build(config)
    assert got["teacher"]["train_seconds"] == infos["teacher"]["train_seconds"]  # the pair is reused, not retrained
    solver = json.loads((root / "solver" / "build_info.json").read_text())
    assert solver["seed"] == config.solver_seed != infos["teacher"]["seed"] and solver["shape"]["hidden"] == 64
    assert solver["examples"] == {"answer": len(SKILLS)}  # the answer task only
    assert (root / "solver" / "tokenizer.json").read_text() == (root / "teacher" / "tokenizer.json").read_text()
    assert build(config)["solver"]["train_seconds"] == solver["train_seconds"]  # reused too


def test_a_teacher_starts_from_a_built_one(tiny_cache, tmp_path):
    cache, infos = tiny_cache
    teacher = cache / "models" / "scratch" / "arithmetic" / "teacher"
    with pytest.raises(ValueError, match="is 1x32, but"):
        ScratchConfig(**{**TINY, "teacher_hidden": 64}, teacher_init=str(teacher))
    out = tmp_path / "warm"
    warm = build(ScratchConfig(**TINY, teacher_init=str(teacher), teacher_learning_rate=1e-3, out=str(out)))
    start = warm["teacher"]["initialised_from"]
    assert start["path"] == str(teacher) and start["steps"] == infos["teacher"]["steps"]
    assert warm["teacher"]["total_train_seconds"] >= warm["teacher"]["train_seconds"]
    assert (out / "teacher" / "tokenizer.json").read_text() == (teacher / "tokenizer.json").read_text()
    assert (out / "student" / "tokenizer.json").read_text() == (teacher / "tokenizer.json").read_text()  # shared
    assert "initialised_from" not in warm["student"]
    assert (warm["teacher"]["learning_rate"], warm["student"]["learning_rate"]) == (1e-3, TINY_LR)


def test_only_the_student_is_rebuilt_on_the_teachers_tokenizer(tiny_cache, tmp_path):
    cache, infos = tiny_cache
    root = tmp_path / "pair"
    build(ScratchConfig(**TINY, out=str(root)))
    stamp = (root / "teacher" / "model.safetensors").stat().st_mtime_ns
    got = build(ScratchConfig(**{**TINY, "student_steps": 3}, out=str(root), student_only=True))
    assert got["student"]["steps"] == 3 and got["student"]["tokenizer_of"] == str(root / "teacher")
    assert (root / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp  # the teacher is not touched
    assert (root / "student" / "tokenizer.json").read_text() == (root / "teacher" / "tokenizer.json").read_text()
    with pytest.raises(ValueError, match="--student-only: no built teacher"):
        build(ScratchConfig(**TINY, out=str(tmp_path / "empty"), student_only=True))


@pytest.mark.parametrize("budget", [4, 0])
def test_the_loop_runs_on_the_arithmetic_domain_with_its_own_models(tiny_cache, tmp_path, budget):
    """Every stage up to training on the domain's own teacher and student; budget 0 replays items only.
    The tiny, untrained teacher's worked solutions solve nothing, so no item is left to train on: the
    train stage stops the run with one line saying why, instead of saving an untrained student."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "agents.loop", "--domain", "arithmetic", "--teacher", "scratch:arithmetic/teacher",
           "--student", "scratch:arithmetic/student", "--engine", "transformers", "--probe-size", "8", "--budget", str(budget),
           "--replay", "4", "--rehearsal", "4", "--eval-size", "26", "--dev-size", "26", "--train-epochs", "1", "--train-batch-size", "4",
           "--run-dir", str(run)]
    p = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    it = run / "iteration_1"
    label = json.loads((it / "E_teacher_logits" / ".done.json").read_text())["summary"]
    assert label["items"] == 0, "the tiny teacher solved an item: this test's premise changed"
    assert p.returncode == 2, p.stderr[-3000:]
    error = p.stderr.strip().splitlines()[-1]
    asked = f"0 of the {budget} items asked of the teacher passed validation" if budget else "--budget 0"
    assert error.startswith(f"error: {it / 'E_teacher_logits' / 'items.jsonl'}: no item to train on in iteration 1: {asked}")
    assert "--replay 4, --rehearsal 4; the teacher's worked solution of all 8 selected items missed the key" in error
    assert not list((it / "F_student_model").glob("*")), "no student (and no stage marker) in the train stage's folder"
    assert not (it / ".F_student_model.tmp").exists()
    generate = json.loads((it / "C_distill_data" / ".done.json").read_text())["summary"]
    # Generate mode: the items the teacher's worked solution does not solve are set aside.
    replay_set_aside = label["unsolved"] - label["unsolved_generated"] + label["refused_by_verifier"] - label["refused_generated"]
    assert generate["requested"] == budget and label["replay"] + label["rehearsal"] + replay_set_aside == 8
    assert (it / "E_teacher_logits" / "refused_solutions.jsonl").is_file()  # the domain's verifier checked the solutions
    if budget == 0:
        assert generate["parsed"] == 0 and label["generated"] == 0
    else:  # a generate-mode domain's items are written with the explanation before the options
        assert generate["explanation_first"] is True
        candidates = (it / "C_distill_data" / "candidates.jsonl").read_text().splitlines()
        assert all(json.loads(line)["explanation"] for line in candidates)
    start = AbilityTree.load(run / "tree" / "initial.json")
    assert start.info("arithmetic/addition/one-digit addition")["description"].startswith("Adding two one-digit numbers")


def test_the_oracle_arm_trains_and_evaluates_where_the_tiny_teacher_solves_nothing(tiny_cache, tmp_path, capsys):
    """``--generator oracle``: the domain's oracle writes the items with their worked solutions, so the
    tiny teacher that solves nothing still leaves a training set, and the run goes through the train,
    gate and evaluate stages; the allocation benchmark reads the finished run."""
    from agents.loop import main
    from benchmarks.bench_allocation import bottom_quartile, collect
    from data.arithmetic.verify import verify_item
    from data.records import GeneratedItem, read_jsonl

    run = tmp_path / "run"
    code = main(["--domain", "arithmetic", "--teacher", "scratch:arithmetic/teacher", "--student", "scratch:arithmetic/student",
                 "--engine", "transformers", "--probe-size", "8", "--budget", "6", "--generator", "oracle", "--acceptance", "none",
                 "--allocation-floor", "0", "--allocation-temperature", "0.5", "--replay", "2", "--rehearsal", "2", "--eval-size", "26",
                 "--dev-size", "26", "--train-epochs", "1", "--train-batch-size", "4", "--run-dir", str(run)])
    assert code == 0, capsys.readouterr().err[-3000:]
    it = run / "iteration_1"
    validated = read_jsonl(it / "D_validated_data" / "validated.jsonl", GeneratedItem)
    n = len(validated)  # the near-duplicate gate takes some: templated questions share most of their words
    assert 1 <= n <= 6 and all(verify_item(v, v.solution).verdict == "right" for v in validated)
    label = json.loads((it / "E_teacher_logits" / ".done.json").read_text())["summary"]
    assert label["generated"] == n and label["unsolved_generated"] == 0  # the oracle's solutions, not the teacher's
    generate = json.loads((it / "C_distill_data" / ".done.json").read_text())["summary"]
    assert generate["generator"] == "oracle" and generate["parsed"] == 6
    weakest = set(bottom_quartile(read_jsonl(it / "G_eval" / "before.jsonl")))
    got = collect(run, 1, weakest)
    assert got["accepted"] == [n] and got["keys"] == [{"right": n, "wrong": 0, "unread": 0}] and len(got["acc"]) == 2
    assert 0.0 <= got["weak_share"][0] <= 1.0 and sum(c["trained"] for c in got["nodes"][0].values()) == n


def test_allocation_bench_statistics():
    from benchmarks.bench_allocation import bottom_quartile, paired

    replies = [{"node": n, "correct": c} for n, cs in {"a": [1, 1], "b": [0, 1], "c": [0, 0], "d": [1, 0], "e": [1, 1]}.items() for c in cs]
    assert bottom_quartile(replies) == ["c"]
    p = paired([0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.6])
    assert p["mean"] == pytest.approx(0.125) and p["lo"] < 0.125 < p["hi"]
    assert p["sign_p"] == pytest.approx(2 / 16)  # all four differences positive: 2 of the 16 sign patterns are as extreme
    from scipy import stats

    assert p["t_p"] == pytest.approx(stats.ttest_rel([0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.6]).pvalue)
    # the minimal detectable effect: (t_{1-a/2} + t_{power}) sd / sqrt(n), and the seeds that reach a target
    from benchmarks.bench_allocation import mde, seeds_needed

    assert mde(0.02, 10, 0.025, 0.8) == pytest.approx((stats.t.ppf(0.9875, 9) + stats.t.ppf(0.8, 9)) * 0.02 / 10 ** 0.5)
    n = seeds_needed(0.02, 0.02, 0.025, 0.8)
    assert mde(0.02, n, 0.025, 0.8) <= 0.02 < mde(0.02, n - 1, 0.025, 0.8)
    assert seeds_needed(1.0, 0.001, 0.025, 0.8, most=50) is None


def test_allocation_bench_arms_differ_only_in_their_factor(tmp_path):
    import argparse

    from benchmarks.bench_allocation import ARMS, PREREGISTERED, bench_domain, comparisons, loop_options

    args = argparse.Namespace(teacher="t", student="s", iterations=2, budget=256, floor=0, max_nodes=6, allocation_temperature=1.0,
                              probe_size=416, loop_args=[])
    opts = {arm: loop_options(arm, 3, tmp_path / "d.yaml", args) for arm in ARMS if ARMS[arm].trains}
    differ = [(a, b) for a, b in zip(opts["oracle-weakness"], opts["oracle-uniform"]) if a != b]
    assert differ == [("weakness", "uniform"), ("6", "0")]  # the uniform arm spreads over every target node
    assert set(opts["weakness"]) ^ set(opts["oracle-weakness"]) == {"teacher", "oracle", "--acceptance", "none"}
    assert opts["rehearsal"][opts["rehearsal"].index("--budget") + 1] == "0"
    primary, secondary = comparisons(list(ARMS), 2)
    assert [(a, b) for a, b, _, _ in primary] == list(PREREGISTERED.primary) and not set(primary) & set(secondary)
    domain = bench_domain(tmp_path, 16)
    from data.domains import get_domain

    bench, shipped = get_domain(str(domain)), get_domain("arithmetic")
    assert len(bench.eval_items()) == 16 * 26 and bench.eval_items()[:12] == shipped.eval_items()[:12]
    assert bench.dev_items() == shipped.dev_items() and bench.oracle == shipped.oracle  # no eval item repeats a dev or seed one
    assert bench_domain(tmp_path, 16) == domain  # written once


def test_allocation_bench_counts_accepted_keys_by_the_domains_arithmetic(tmp_path):
    from benchmarks.bench_allocation import key_counts

    rows = [{"question": "What is 838 plus 248?", "options": {"A": "1086", "B": "1186"}, "answer_idx": "A"},
            {"question": "What is 64 times 19?", "options": {"A": "1062", "B": "1216"}, "answer_idx": "A"},
            {"question": "There are 11 rows of 3 coins. How many books are there?", "options": {"A": "33", "B": "14"}, "answer_idx": "A"}]
    path = tmp_path / "validated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert key_counts(path) == {"right": 1, "wrong": 1, "unread": 1}
    assert key_counts(tmp_path / "none.jsonl") == {"right": 0, "wrong": 0, "unread": 0}


def test_bench_table_puts_each_figure_under_its_own_column(capsys):
    """Rows with different keys (iteration 0 has no p-value; a secondary row has only some) must not
    shift a figure under another column's name."""
    from benchmarks.harness import print_table

    print_table([{"arm": "gate", "iteration": 0}, {"arm": "gate", "iteration": 1, "p": "0.025"}, {"arm": "secondary", "p": "0.120"}])
    lines = [line for line in capsys.readouterr().out.splitlines() if "│" in line or "┃" in line]
    header = [c.strip() for c in lines[0].strip("┃").split("┃")]
    assert header == ["arm", "iteration", "p"]
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in lines[1:]]
    assert cells == [["gate", "0", ""], ["gate", "1", "0.025"], ["secondary", "", "0.120"]]


def test_task_batches_hold_one_task_each_and_cover_the_steps():
    from scratch.build import task_batches

    tasks = ["answer"] * 70 + ["generate"] * 10 + ["critic"] * 5
    order = task_batches(tasks, 8, 40, seed=1)
    assert len(order) == 40 * 8
    batches = [order[k : k + 8] for k in range(0, len(order), 8)]
    assert all(len({tasks[i] for i in b}) == 1 for b in batches)
    assert {tasks[b[0]] for b in batches} == {"answer", "generate", "critic"}  # skills and tasks both reach the trainer
    assert set(order[: 8 * 12]) >= set(range(70))  # the first epoch (12 batches) sees every answer row
    assert task_batches(tasks, 8, 40, seed=1) == order != task_batches(tasks, 8, 40, seed=2)


def test_answer_focus_needs_a_starting_teacher():
    with pytest.raises(ValueError, match="--answer-focus needs --teacher-init"):
        ScratchConfig(answer_focus=0.5)
    with pytest.raises(ValueError, match=r"--answer-focus must be in \[0, 1\]"):
        ScratchConfig(answer_focus=1.5)
