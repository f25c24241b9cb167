"""``python -m synth generate | validate`` end to end on a tiny random teacher (fast; real outputs are
covered by tests/test_validate_smollm2.py): outputs, report, a planted contaminated item, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.domains import get_domain
from data.records import GeneratedItem, read_jsonl, write_jsonl
from synth.__main__ import OUTPUTS, main
from tests.testing_utils import first_per_source
from tree.build import build_tree


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A small domain, a tree with recorded results (two weak nodes), and a planted item."""
    d = get_domain("clinical")
    out = tmp_path_factory.mktemp("data_cli")
    seeds = first_per_source(d.seed_items(), 4)
    evals = first_per_source(d.eval_items(), 2)
    write_jsonl(out / "seed.jsonl", seeds)
    write_jsonl(out / "eval.jsonl", evals)
    (out / "domain.yaml").write_text("name: small\nroot: clinical medicine\nseed_files: [seed.jsonl]\neval_files: [eval.jsonl]\n")
    tree = build_tree([*seeds, *evals], root="clinical medicine").tree
    # Items of two sources answered wrongly, the rest right.
    tree.record([(i.id, tree.node_of(i), i.source not in ("mmlu", "medqa")) for i in seeds], iteration=1)
    tree.save(out / "tree.json")
    victim = next(e for e in evals if len(e.question.split()) > 20)
    planted = GeneratedItem(id="planted-1", question="Consider this: " + victim.question, options=victim.options,
                            answer_idx=victim.answer_idx, target_node="clinical medicine", generator="test")
    write_jsonl(out / "planted.jsonl", [planted])
    return {"dir": out, "domain": out / "domain.yaml", "tree": out / "tree.json", "planted": out / "planted.jsonl", "victim": victim.id}


def test_generate_writes_outputs_and_rejects_the_planted_contaminated_item(setup, tiny_teacher_path, capsys):
    out = setup["dir"] / "gen"
    argv = ["generate", "--teacher", f"hf:{tiny_teacher_path}", "--tree", str(setup["tree"]), "--domain", str(setup["domain"]),
            "--nodes", "2", "--budget", "6", "--max-new-tokens", "48", "--rounds", "1", "--add-candidates", str(setup["planted"]),
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for heading in ("generated items per node", "rejected, by reason", "answer positions", "candidates/min"):
        assert heading in printed
    assert all((out / name).is_file() for name in OUTPUTS)
    report = json.loads((out / "report.json").read_text())
    assert sum(report["allocation"].values()) == 6 and len([n for n, c in report["allocation"].items() if c]) == 2
    assert report["generation"]["requested"] == 6 and report["added_candidates"] == 1
    candidates = read_jsonl(out / "candidates.jsonl", GeneratedItem)
    assert "planted-1" in {c.id for c in candidates}
    rejected = {r["id"]: r for r in read_jsonl(out / "rejected.jsonl")}
    assert rejected["planted-1"]["stage"] == "contamination" and setup["victim"] in rejected["planted-1"]["reason"]
    accepted = read_jsonl(out / "validated.jsonl", GeneratedItem)
    # every request and the planted item end up exactly once: accepted, or rejected with a reason
    assert len(accepted) + len(rejected) == 6 + 1
    assert all(r["stage"] and r["reason"] for r in rejected.values())
    assert report["validation"]["rejected_by_stage"]["contamination"] >= 1
    assert report["items_per_minute"]["candidates"] > 0

    # Nothing already written is overwritten without --force.
    before = (out / "report.json").read_bytes()
    assert main(argv) == 2
    assert "already holds" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before


def test_validate_an_existing_file_with_the_solver_alone(setup, tiny_teacher_path, capsys):
    out = setup["dir"] / "val"
    argv = ["validate", "--candidates", str(setup["planted"]), "--solver", f"hf:{tiny_teacher_path}", "--acceptance", "solver",
            "--solver-samples", "2", "--domain", str(setup["domain"]), "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["candidates"] == 1 and report["critic"] == ""
    assert [r["stage"] for r in read_jsonl(out / "rejected.jsonl")] == ["contamination"]
    assert report["verifier"] == "" and report["validation"]["verifier"] is None  # clinical has none, and the line says so
    assert "no verifier: keys judged by the agents alone" in " ".join(capsys.readouterr().out.split())  # rich wraps the line


def test_bad_input_is_a_clear_error_naming_file_and_line(setup, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(setup["planted"].read_text() + '{"id": "x", "question": \n')
    assert main(["validate", "--candidates", str(bad), "--teacher", "smollm2", "--domain", str(setup["domain"]), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["validate", "--candidates", str(setup["planted"]), "--acceptance", "critic", "--domain", str(setup["domain"]), "--out", str(tmp_path / "o")]) == 2
    assert "needs a critic" in capsys.readouterr().err
    assert main(["validate", "--candidates", str(setup["planted"]), "--teacher", "smollm2", "--verifier", "checks.py:verify",
                 "--domain", str(setup["domain"]), "--out", str(tmp_path / "o")]) == 2
    assert "--verifier: 'checks.py:verify': file checks.py not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
