"""The loop's acceptance gate, end to end on tiny models, in-process (``main(argv)``).

The domain's keys are the tiny student's own answers, so the student starts at 100% on its dev split
and any update that changes its answers is worse there: a huge learning rate must be rejected, and the
run must go on with the old student. A kill inside the gate, resumed, must repeat no finished work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.loop import main
from data.domains import get_domain
from data.records import write_jsonl
from tests.testing_utils import first_per_source


@pytest.fixture(scope="module")
def own_key_domain(tmp_path_factory, tiny_model_path) -> Path:
    """Small clinical-like domain whose every key is the letter the tiny student picks."""
    from engines import EngineConfig, load_engine
    from eval.mcq import score_items

    d = get_domain("clinical")
    engine = load_engine(f"hf:{tiny_model_path}", EngineConfig(engine="transformers", threads=1))

    def rekeyed(items):
        answers = score_items(engine, items).replies
        return [it.model_copy(update={"answer_idx": r.parsed_answer}) for it, r in zip(items, answers)]

    out = tmp_path_factory.mktemp("own_keys")
    write_jsonl(out / "seed.jsonl", rekeyed(first_per_source(d.seed_items(), 4)))
    write_jsonl(out / "dev.jsonl", rekeyed(first_per_source(d.dev_items(), 4)))
    write_jsonl(out / "eval.jsonl", rekeyed(first_per_source(d.eval_items(), 2)))
    engine.close()
    (out / "domain.yaml").write_text("name: own\nroot: clinical medicine\nseed_files: [seed.jsonl]\n"
                                     "eval_files: [eval.jsonl]\ndev_files: [dev.jsonl]\n")
    return out / "domain.yaml"


def loop_args(run: Path, domain: Path, teacher: Path, student: Path, *extra: str) -> list[str]:
    return ["--run-dir", str(run), "--domain", str(domain), "--teacher", f"hf:{teacher}", "--student", f"hf:{student}",
            "--engine", "transformers", "--threads", "1", "--probe-size", "12", "--budget", "0", "--replay", "4",
            "--rehearsal", "4", "--train-epochs", "1", "--train-batch-size", "4", "--seed", "3", *extra]


def stage_summary(run: Path, iteration: int, folder: str) -> dict:
    return json.loads((run / f"iteration_{iteration}" / folder / ".done.json").read_text())["summary"]


def test_a_harmful_update_is_rejected_and_the_run_goes_on_with_the_old_student(tmp_path, own_key_domain, tiny_teacher_path, tiny_model_path):
    run = tmp_path / "run"
    assert main(loop_args(run, own_key_domain, tiny_teacher_path, tiny_model_path, "--learning-rate", "1000", "--iterations", "2")) == 0
    for it in (1, 2):
        gate = json.loads((run / f"iteration_{it}" / "G_dev_gate" / "gate.json").read_text())
        assert gate["before"] == 1.0 and gate["after"] < 1.0 and gate["adopted"] is False, gate
        assert "rejected" in gate["reason"]
        ev = stage_summary(run, it, "G_eval")
        assert ev["adopted"] is False and ev["student"] == ev["before"]
    # Iteration 2 starts from the student of iteration 1 (the old one): its probe, dev and eval scores are
    # the ones iteration 1 made, reused rather than scored again.
    assert stage_summary(run, 2, "A_student_reply")["reused_scores"] is True
    assert "current" in stage_summary(run, 2, "G_dev_gate")["reused_scores"]
    assert "before" in stage_summary(run, 2, "G_eval")["reused_scores"]
    assert stage_summary(run, 2, "G_eval")["before"] == stage_summary(run, 1, "G_eval")["before"]
    # The epoch choice scored the trained student on the dev split; the gate reused that score.
    assert stage_summary(run, 1, "F_student_model")["epochs_scored"][0]["epoch"] == 1.0
    assert "candidate" in stage_summary(run, 1, "G_dev_gate")["reused_scores"]
    report = (run / "report.md").read_text()
    assert "REJECTED: dev 100.0% →" in report and "Training data per node" in report
    composition = json.loads((run / "iteration_1" / "E_teacher_logits" / "composition.json").read_text())
    assert sum(p["replay"] for p in composition.values()) <= 4 and sum(p["rehearsal"] for p in composition.values()) <= 4


def test_a_harmless_update_is_adopted(tmp_path, own_key_domain, tiny_teacher_path, tiny_model_path):
    run = tmp_path / "run"
    assert main(loop_args(run, own_key_domain, tiny_teacher_path, tiny_model_path, "--learning-rate", "1e-12", "--no-select-epoch",
                          "--rehearsal-target", "student")) == 0
    gate = json.loads((run / "iteration_1" / "G_dev_gate" / "gate.json").read_text())
    assert gate["adopted"] is True and gate["after"] == gate["before"] == 1.0
    assert "epochs_scored" not in stage_summary(run, 1, "F_student_model")
    # The rehearsal items were distilled towards the student's own top-k (the label stage says whose).
    label = stage_summary(run, 1, "E_teacher_logits")
    assert label["rehearsal"] > 0
    index = json.loads((run / "iteration_1" / "E_teacher_logits" / "index.json").read_text())
    assert f"and hf:{tiny_model_path} on {label['rehearsal']} sequences" in json.dumps(index)


class Killed(Exception):
    """Stands for the process being killed inside the gate."""


def test_a_kill_inside_the_gate_resumes_without_repeating_finished_work(tmp_path, monkeypatch, own_key_domain, tiny_teacher_path, tiny_model_path):
    import eval.gate
    import eval.score_cache
    import training.distill

    run = tmp_path / "run"
    real_decide = eval.gate.decide

    def killed(*args, **kwargs):
        raise Killed("killed inside the gate, after both students' dev scores were made")

    monkeypatch.setattr(eval.gate, "decide", killed)
    with pytest.raises(Killed):
        main(loop_args(run, own_key_domain, tiny_teacher_path, tiny_model_path, "--learning-rate", "1000", "--no-select-epoch"))
    assert (run / "iteration_1" / "F_student_model" / ".done.json").is_file()
    assert not (run / "iteration_1" / "G_dev_gate" / ".done.json").exists()

    monkeypatch.setattr(eval.gate, "decide", real_decide)
    trained, scored = [], []
    real_distill, real_score = training.distill.distill, eval.score_cache.score_items
    monkeypatch.setattr(training.distill, "distill", lambda *a, **k: trained.append(1) or real_distill(*a, **k))
    monkeypatch.setattr(eval.score_cache, "score_items", lambda engine, items, **k: scored.append(len(items)) or real_score(engine, items, **k))
    assert main(["--run-dir", str(run), "--resume"]) == 0
    dev_n = len(get_domain(str(own_key_domain)).dev_items())
    eval_n = len(get_domain(str(own_key_domain)).eval_items())
    assert trained == []  # the train stage was finished: not run again
    # Only the evaluation was left: the trained student's eval score (and the starting student's, unless an
    # earlier test of this session made it); both dev scores were kept.
    assert dev_n != eval_n and scored and set(scored) == {eval_n} and len(scored) <= 2
    gate = json.loads((run / "iteration_1" / "G_dev_gate" / "gate.json").read_text())
    assert gate["adopted"] is False
