"""The domain's oracle: perfect items per tree node (the allocation benchmark's control arm), as the
loop's generate stage writes them, validation passes them without agents, and the label stage keeps
their worked solutions."""

from __future__ import annotations

from collections import Counter

import pytest

from data.arithmetic.oracle import skill_of, write_items
from data.arithmetic.verify import verify_item
from data.domains import get_domain
from data.oracle import load_oracle
from data.records import DataError
from synth.generate import item_id
from synth.oracle import oracle_items
from synth.validate import ValidationConfig, agents_needed, validate_items

TWO_BY_TWO = "arithmetic/multiplication/two-digit by two-digit"
SEVENS = "arithmetic/multiplication/times tables 6 to 9/the seven times table"


def test_oracle_items_are_right_distinct_balanced_and_of_their_node():
    items = write_items(TWO_BY_TWO, 40, seed=3)
    assert len(items) == 40 and len({it.question for it in items}) == 40
    for it in items:
        assert verify_item(it).verdict == "right" and verify_item(it, it.solution).verdict == "right", it
        assert it.ability_path == TWO_BY_TWO.split("/") and it.solution.endswith(f"The answer is {it.options[it.answer_idx]}.")
    assert Counter(it.answer_idx for it in items) == {"A": 10, "B": 10, "C": 10, "D": 10}
    assert write_items(TWO_BY_TWO, 40, seed=3) == items  # deterministic per seed
    held = frozenset(it.question for it in items[:20])
    again = write_items(TWO_BY_TWO, 40, seed=3, exclude=held)
    assert not held & {it.question for it in again}


def test_a_sub_topic_gets_its_own_problems_and_one_that_does_not_fit_gets_the_skills():
    assert skill_of(SEVENS)[1] == "the seven times table"
    sevens = write_items(SEVENS, 20, seed=0)
    assert len(sevens) == 20 and all("7" in it.question for it in sevens)
    misfit = write_items("arithmetic/multiplication/times tables 2 to 5/the six times table", 30, seed=0)
    assert len(misfit) == 30 and len({it.question.split()[2] for it in misfit if it.question.startswith("What is")}) > 1
    assert write_items("arithmetic/addition", 5, seed=0) == [] and write_items("arithmetic", 5, seed=0) == []
    with pytest.raises(KeyError, match="not a skill"):
        skill_of("arithmetic/addition")


def test_the_generate_stage_records_them_as_the_teachers_items_are():
    oracle = load_oracle("data.arithmetic.oracle:write_items", "test")
    result = oracle_items(oracle, {TWO_BY_TWO: 3, SEVENS: 2, "arithmetic/addition/one-digit addition": 0}, seed=5, iteration=2,
                          exclude=[], name="oracle:test")
    assert [it.id for it in result.items] == [item_id(2, TWO_BY_TWO, k) for k in range(3)] + [item_id(2, SEVENS, k) for k in range(2)]
    assert all(it.explanation == it.solution and it.generator == "oracle:test" for it in result.items)
    assert [it.target_node for it in result.items] == [TWO_BY_TWO] * 3 + [SEVENS] * 2
    assert result.report["per_node"] == {TWO_BY_TWO: {"requested": 3, "parsed": 3, "failed_attempts": 0},
                                         SEVENS: {"requested": 2, "parsed": 2, "failed_attempts": 0}}
    assert result.report["short"] == {} and result.rejected == []

    def scarce(node, n, seed, exclude):
        return write_items(node, 1, seed, exclude)

    short = oracle_items(scarce, {TWO_BY_TWO: 3}, seed=0, iteration=1)
    assert len(short.items) == 1 and short.report["short"] == {TWO_BY_TWO: 2}


def test_acceptance_none_runs_the_gates_and_no_agent():
    assert agents_needed("none") == (False, False) and agents_needed("both") == (True, True)
    items = oracle_items(write_items, {TWO_BY_TWO: 6}, seed=1, iteration=1).items
    duplicate = items[0].model_copy(update={"id": "dup"})
    result = validate_items([*items, duplicate], solver=None, critic=None, config=ValidationConfig(acceptance="none"), verifier=verify_item)
    assert len(result.accepted) == 6 and [r["stage"] for r in result.rejected] == ["duplicate"]
    assert result.report["verifier"]["right"] == 6


def test_bad_oracles_are_one_line_naming_where(tmp_path):
    (tmp_path / "mine.py").write_text("def two(node, n):\n    return []\n")
    for spec, detail in [("write_items", "is not module:function"), ("data.arithmetic.oracle:nothing", "has no attribute 'nothing'"),
                         (f"{tmp_path / 'mine.py'}:two", "must accept (node, n, seed, exclude)")]:
        with pytest.raises(DataError) as e:
            load_oracle(spec, "domain.yaml: field 'oracle'")
        assert str(e.value).startswith("domain.yaml: field 'oracle': ") and detail in str(e.value) and "\n" not in str(e.value)
    assert get_domain("arithmetic").oracle == "data.arithmetic.oracle:write_items" and get_domain("clinical").oracle == ""
    (tmp_path / "items.jsonl").write_text('{"id": "a-1", "question": "What is 2 plus 2?", "options": {"A": "4", "B": "5"}, "answer_idx": "A"}\n')
    (tmp_path / "bad.yaml").write_text("name: t\nroot: t\nseed_files: [items.jsonl]\neval_files: [items.jsonl]\noracle: mine.py:two\n")
    with pytest.raises(DataError, match=r"bad.yaml: field 'oracle': .*must accept \(node, n, seed, exclude\)"):
        get_domain(str(tmp_path / "bad.yaml"))


def test_the_loop_refuses_an_oracle_the_domain_has_not_and_names_the_judges(tmp_path, capsys):
    from agents.loop import main

    code = main(["--domain", "clinical", "--generator", "oracle", "--acceptance", "none", "--run-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "--generator oracle: domain clinical has no oracle" in err and len(err.strip().splitlines()) == 1
    assert main(["--domain", "arithmetic", "--generator", "oracle", "--acceptance", "none", "--run-dir", str(tmp_path / "a"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "keys judged by: the domain's oracle data.arithmetic.oracle:write_items writes the items" in out and "warning:" not in out
    assert main(["--domain", "arithmetic", "--acceptance", "none", "--verifier", "none", "--run-dir", str(tmp_path / "n"), "--dry-run"]) == 0
    assert "warning: --acceptance none: no agent and no verifier judges the teacher's items" in capsys.readouterr().out
    assert main(["--domain", "arithmetic", "--generator", "nobody", "--run-dir", str(tmp_path / "x")]) == 2
    assert "generator must be one of teacher, oracle" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "canx")
