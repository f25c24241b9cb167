"""The loop's pre-flight: a setting that would fail a stage later fails first, as one line, exit 2, with
no run directory written; ``--dry-run`` prints the plan and writes nothing. Real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engines.check import check_spec
from engines.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]


def run_loop(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "agents.loop", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    """The process failed as the loop's usage errors do: exit 2, one line on stderr, no traceback."""
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-2000:]
    return lines[0]


@pytest.fixture()
def models_server():
    """An OpenAI-compatible server on loopback that lists one model, ``tiny`` (GET /v1/models)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            return

        def do_GET(self):
            code, payload = (200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]}) if self.path == "/v1/models" else (404, {"error": "no route"})
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_two_late_failures_of_the_issue_now_fail_first(tmp_path):
    run = tmp_path / "run"
    p = run_loop("--student", "hf:/no/such/folder", "--run-dir", str(run), cwd=tmp_path)
    line = one_error_line(p)
    assert line.startswith("error: --student: 'hf:/no/such/folder': /no/such/folder is not a model folder")
    p = run_loop("--teacher", "openai:http://127.0.0.1:9/v1#m", "--run-dir", str(run), cwd=tmp_path)
    line = one_error_line(p)
    assert line.startswith("error: --teacher: http://127.0.0.1:9/v1 does not answer") and "start the server" in line
    assert not run.exists() and not (tmp_path / "runs").exists()


def test_each_bad_option_is_named_and_nothing_is_written(tmp_path, models_server, tiny_model_path):
    run = tmp_path / "run"
    no_tokenizer = tmp_path / "weights-only"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((tiny_model_path / "config.json").read_text())
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [
        (["--student", f"hf:{no_tokenizer}"], "error: --student: ", "no tokenizer"),
        (["--student", "minilm"], "error: --student: ", "is a sentence encoder"),
        (["--student", f"openai:{models_server}#tiny"], "error: --student openai:", "must be a local model"),
        (["--teacher", f"openai:{models_server}#other"], "error: --teacher: ", "does not serve 'other' (it lists 'tiny')"),
        (["--teacher", f"openai:{models_server}#tiny"], "error: --teacher openai:", "cannot return"),
        (["--teacher", f"openai:{models_server}#tiny", "--label-teacher", f"openai:{models_server}#tiny"], "error: --label-teacher openai:", "cannot return"),
        (["--teacher", f"openai:{models_server}#tiny", "--label-teacher", f"hf:{tmp_path / 'gone'}"], "error: --label-teacher: ", "is not a model folder"),
        (["--critic", "openai:http://127.0.0.1:9/v1#m"], "error: --critic: ", "does not answer"),
        (["--solver", f"smollm2,hf:{tmp_path / 'gone'}"], "error: --solver: ", "is not a model folder"),
        (["--kv-teachers", f"st:{tmp_path}"], "error: --kv-teachers: ", "no modules.json"),
        (["--encoder", str(tmp_path), "--near-dup-metric", "embedding"], "error: --encoder: ", "no modules.json"),
    ]
    for args, start, detail in cases:
        line = one_error_line(run_loop(*args, "--run-dir", str(run), cwd=tmp_path))
        assert line.startswith(start) and detail in line, (args, line)
        assert not run.exists(), args
    line = one_error_line(run_loop("--run-dir", str(a_file / "run"), cwd=tmp_path))
    assert line == f"error: --run-dir: {a_file} exists and is not a folder; choose another --run-dir"
    assert a_file.read_text() == "not a folder"


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, models_server, tiny_model_path, tiny_teacher_path):
    run = tmp_path / "run"
    p = run_loop("--teacher", f"hf:{tiny_teacher_path}", "--student", f"hf:{tiny_model_path}", "--critic", f"openai:{models_server}#tiny",
                 "--engine", "transformers", "--kv-teachers", "minilm", "--budget", "5", "--run-dir", str(run), "--dry-run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert f"run directory: {run}" in out
    assert f"--teacher      hf:{tiny_teacher_path}  on transformers: {tiny_teacher_path}" in out
    assert f"--critic       openai:{models_server}#tiny  on openai: {models_server} (model tiny)" in out
    assert "--kv-teachers  minilm  on encoder: " in out and "all-MiniLM-L6-v2" in out
    assert "seed pool: " in out and "eval set: " in out
    assert "devices: CPU only" in out or "CUDA device" in out
    assert "stages per iteration: infer → analyze → generate → validate → label → train → gate → evaluate" in out
    assert "budget (items generated) 5" in out
    assert not run.exists()


def test_an_http_teacher_labels_with_its_local_weights(tmp_path, models_server, tiny_model_path, tiny_teacher_path):
    p = run_loop("--teacher", f"openai:{models_server}#tiny", "--label-teacher", f"hf:{tiny_teacher_path}", "--student", f"hf:{tiny_model_path}",
                 "--engine", "transformers", "--run-dir", str(tmp_path / "run"), "--dry-run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"--teacher        openai:{models_server}#tiny  on openai: {models_server} (model tiny)" in p.stdout
    assert f"--label-teacher  hf:{tiny_teacher_path}  on transformers: {tiny_teacher_path}" in p.stdout


def test_a_resumed_dry_run_shows_the_stored_plan_without_taking_the_run(tmp_path, tiny_model_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"student: hf:{tiny_model_path}\nbudget: 3\n")
    p = run_loop("--run-dir", str(run), "--resume", "--dry-run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"--student  hf:{tiny_model_path}" in p.stdout and "budget (items generated) 3" in p.stdout
    assert sorted(x.name for x in run.iterdir()) == ["config.yaml"]


def test_check_spec_in_python(tiny_model_path):
    check = check_spec(f"hf:{tiny_model_path}", "transformers")
    assert (check.backend, check.where) == ("transformers", str(tiny_model_path))
    assert check_spec(f"hf:{tiny_model_path}?layers=1", "transformers").note == "1 evenly spaced layers kept (derived on first use)"
    assert check_spec("minilm", generates=False).backend == "encoder"
    with pytest.raises(SpecError, match="does not answer"):
        check_spec("openai:http://127.0.0.1:9/v1#m", timeout_s=2)


def test_gpus_asked_for_must_exist(tmp_path, monkeypatch):
    """vLLM tensor parallelism and accelerate processes beyond the CUDA devices present are refused
    (the CUDA count is faked: this machine has none)."""
    import torch

    from agents.config import parse_config
    from agents.preflight import PreflightError, preflight
    from data.domains import get_domain

    pytest.importorskip("vllm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config, _ = parse_config(["--teacher", "vllm:smollm2", "--vllm-tensor-parallel-size", "2"])
    with pytest.raises(PreflightError, match=r"--vllm-tensor-parallel-size 2: this machine has 1 CUDA device\(s\)"):
        preflight(config, tmp_path / "run", get_domain("clinical"))
    config, _ = parse_config(["--train-launcher", "accelerate", "--train-num-processes", "4"])
    with pytest.raises(PreflightError, match=r"--train-num-processes 4: this machine has 1 CUDA device\(s\)"):
        preflight(config, tmp_path / "run", get_domain("clinical"))
    assert not (tmp_path / "run").exists()
