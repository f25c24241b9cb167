"""SIGTERM, what a scheduler (Slurm, Kubernetes, systemd) sends before it kills: the loop stops like a
kill would leave it, says how to continue, and ``--resume`` repeats no finished stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agents.loop import main
from tests.test_loop_gate import loop_args, own_key_domain  # noqa: F401  (the module fixture)

ROOT = Path(__file__).resolve().parents[1]
BEFORE_TRAIN = ("A_student_reply", "B_student_tree", "C_distill_data", "D_validated_data", "E_teacher_logits")


def test_sigterm_during_train_then_resume_repeats_no_finished_stage(tmp_path, own_key_domain, tiny_teacher_path, tiny_model_path):  # noqa: F811
    run = tmp_path / "run"
    args = loop_args(run, own_key_domain, tiny_teacher_path, tiny_model_path, "--train-epochs", "10", "--no-select-epoch")
    log = (tmp_path / "loop.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "agents.loop", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    training = run / "iteration_1" / ".F_student_model.tmp"  # distill's temporary folder: the trainer is running
    deadline = time.monotonic() + 240
    while not training.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert training.exists(), f"the train stage never started:\n{(tmp_path / 'loop.log').read_text()[-3000:]}"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    log.close()
    output = (tmp_path / "loop.log").read_text()
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == f"stopped by SIGTERM; the finished stages are kept; continue with: python -m agents.loop --run-dir {run} --resume"
    assert not training.exists() and not (run / "iteration_1" / "F_student_model" / ".done.json").exists()
    markers = {stage: (run / "iteration_1" / stage / ".done.json") for stage in BEFORE_TRAIN}
    finished = {stage: m.read_bytes() for stage, m in markers.items()}
    stamps = {stage: m.stat().st_mtime_ns for stage, m in markers.items()}

    assert main(["--run-dir", str(run), "--resume"]) == 0
    assert {stage: m.read_bytes() for stage, m in markers.items()} == finished
    assert {stage: m.stat().st_mtime_ns for stage, m in markers.items()} == stamps, "a finished stage was run again"
    train = json.loads((run / "iteration_1" / "F_student_model" / ".done.json").read_text())["summary"]
    assert train["steps"] > 0
    assert (run / "iteration_1" / "G_eval" / ".done.json").is_file()
