"""Model specs and the engines: batching never changes results; the HTTP client against a real loopback server."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from engines import EngineConfig, SamplingParams, SpecError, load_engine, parse_spec
from engines.hf_engine import TransformersEngine, free_cores
from engines.smollm2 import derive_student, layer_indices
from tests.testing_utils import require_vllm


@pytest.mark.parametrize(
    "spec, kind, path, model, layers",
    [
        ("smollm2", "smollm2", "", "", None),
        ("smollm2?layers=6", "smollm2", "", "", 6),
        ("hf:/models/x", "hf", "/models/x", "", None),
        ("hf:/models/x?layers=3", "hf", "/models/x", "", 3),
        ("vllm:/models/y", "vllm", "/models/y", "", None),
        ("openai:http://127.0.0.1:8000/v1#served", "openai", "http://127.0.0.1:8000/v1", "served", None),
    ],
)
def test_parse_spec(spec, kind, path, model, layers):
    s = parse_spec(spec)
    assert (s.kind, s.path, s.model, s.layers) == (kind, path, model, layers)


@pytest.mark.parametrize("bad", ["", "gpt4", "hf:", "smollm2?layers=0", "smollm2?layers=x", "smollm2?depth=3", "openai:http://x", "openai:ftp://x#m", "vllm:/m?layers=2"])
def test_bad_specs(bad):
    with pytest.raises(SpecError):
        parse_spec(bad)


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="not a model folder"):
        parse_spec(f"hf:{tmp_path}/nothing").local_path()


def test_layer_indices():
    assert layer_indices(30, 6) == [0, 6, 12, 17, 23, 29]
    assert layer_indices(30, 30) == list(range(30))
    assert layer_indices(30, 1) == [29]
    with pytest.raises(ValueError):
        layer_indices(4, 5)


def test_derived_student_keeps_teacher_layers(tiny_teacher_path, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = derive_student(tiny_teacher_path, 1, tmp_path / "student")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_path)
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 1
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)


@pytest.fixture(scope="module")
def engine(tiny_teacher_path) -> TransformersEngine:
    return load_engine(f"hf:{tiny_teacher_path}", EngineConfig(engine="transformers", batch_size=3))


PROMPTS = [
    [{"role": "user", "content": "What is the first-line drug for anaphylaxis?"}],
    "Plain text prompt",
    [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is"}],
    [{"role": "user", "content": "A much longer question about the management of diabetic ketoacidosis in adults"}],
]


def test_batched_generate_equals_one_by_one(engine):
    params = SamplingParams(max_new_tokens=12)
    batched = engine.generate(PROMPTS, params)
    single = [engine.generate([p], params)[0] for p in PROMPTS]
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.num_tokens <= 12 for c in batched)


def test_seeded_sampling_is_reproducible(engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    assert [c.text for c in engine.generate(PROMPTS, params)] == [c.text for c in engine.generate(PROMPTS, params)]


def test_stop_strings_trim_output(engine):
    free = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=16))[0].text
    assert len(free) > 2
    stop = free[1:3]
    cut = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=16, stop=[stop]))[0]
    assert stop not in cut.text and free.startswith(cut.text) and cut.finish_reason == "stop"


def test_choice_logprobs_equal_unpadded_forward(engine):
    import torch

    letters = ["A", "B", "C", "D"]
    got = engine.choice_logprobs(PROMPTS, letters)
    for prompt, scores in zip(PROMPTS, got):
        ids = engine.tokenizer(engine.render(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(engine.model(input_ids=ids).logits[0, -1].float(), -1)
        for c in letters:
            want = max(float(lp[t]) for t in engine._choice_token_ids(c))
            assert scores[c] == pytest.approx(want, abs=1e-4)


def test_topk_logprobs_equal_full_softmax(engine):
    import torch

    seqs = [engine.tokenizer("the heart pumps blood through the body")["input_ids"], engine.tokenizer("a b")["input_ids"]]
    out = engine.topk_logprobs(seqs, 5)
    for seq, (ids, lps) in zip(seqs, out):
        assert ids.shape == lps.shape == (len(seq) - 1, 5) and ids.dtype == np.int32
        with torch.no_grad():
            full = torch.log_softmax(engine.model(input_ids=torch.tensor([seq])).logits[0, :-1].float(), -1)
        want_lp, want_ids = full.topk(5, dim=-1)
        np.testing.assert_allclose(lps, want_lp.numpy(), atol=1e-4)
        assert (np.diff(lps, axis=1) <= 1e-6).all(), "sorted descending"


def test_free_cores_in_range():
    n = free_cores()
    assert 1 <= n <= (os.cpu_count() or 1)


# ----------------------------------------------------------------------- OpenAI-compatible HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _serve(backend: TransformersEngine, fail_first: int = 0):
    """A real OpenAI-protocol server on 127.0.0.1 backed by a real (tiny) model."""
    state = {"fail": fail_first, "in_flight": 0, "max_in_flight": 0, "requests": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            return

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["requests"] += 1
                if state["fail"] > 0:
                    state["fail"] -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            try:
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"] if chat else body["prompt"]
                if body.get("max_tokens") == 1 and (body.get("logprobs") or body.get("top_logprobs")):
                    scores = backend.choice_logprobs([prompt], ["A", "B", "C", "D"])[0]
                    if chat:
                        choice = {"message": {"content": "A"}, "logprobs": {"content": [{"token": "A", "top_logprobs": [{"token": k, "logprob": v} for k, v in scores.items()]}]}}
                    else:
                        choice = {"text": "A", "logprobs": {"top_logprobs": [scores]}}
                else:
                    with lock:  # the tiny backend is one model: serialise its use, not the HTTP handling
                        c = backend.generate([prompt], SamplingParams(max_new_tokens=body["max_tokens"]))[0]
                    choice = {"message": {"content": c.text}} if chat else {"text": c.text}
                    choice["finish_reason"] = c.finish_reason
                payload = json.dumps({"choices": [choice], "usage": {"completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            finally:
                with lock:
                    state["in_flight"] -= 1

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


def test_openai_engine_against_loopback_server(engine):
    server, state = _serve(engine, fail_first=1)
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        client = load_engine(f"openai:{url}#tiny", EngineConfig(concurrency=3, max_retries=2))
        params = SamplingParams(max_new_tokens=6)
        got = client.generate(PROMPTS * 2, params)
        assert [c.text for c in got] == [c.text for c in engine.generate(PROMPTS * 2, params)]
        assert state["requests"] == len(PROMPTS) * 2 + 1, "the 503 was retried once"
        assert 1 <= state["max_in_flight"] <= 3
        scores = client.choice_logprobs(PROMPTS[:2], ["A", "B"])
        local = engine.choice_logprobs(PROMPTS[:2], ["A", "B"])
        for s, l in zip(scores, local):
            assert s["A"] == pytest.approx(l["A"], abs=1e-5)
        with pytest.raises(Exception, match="label with a local engine"):
            client.topk_logprobs([[1, 2, 3]], 4)
    finally:
        server.shutdown()


def test_openai_engine_gives_up_after_retries(engine):
    server, state = _serve(engine, fail_first=10)
    try:
        client = load_engine(f"openai:http://127.0.0.1:{server.server_port}/v1#tiny", EngineConfig(max_retries=1))
        with pytest.raises(RuntimeError, match="HTTP 503"):
            client.generate(["x"], SamplingParams(max_new_tokens=2))
        assert state["requests"] == 2
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------ real weights


@pytest.mark.slow
@pytest.mark.vllm
@require_vllm
def test_vllm_engine_matches_transformers_on_smollm2(smollm2_path):
    from data.domains import get_domain
    from prompts.mcq import mcq_messages

    items = get_domain("clinical").seed_items()[:6]
    prompts = [mcq_messages(i.question, i.options) for i in items]
    gen_prompts = [[{"role": "user", "content": "Name one beta blocker."}], "The heart has four"]
    seq = None
    v = load_engine("smollm2", EngineConfig(engine="vllm"))
    try:
        v_scores = v.choice_logprobs(prompts, ["A", "B", "C", "D"])
        v_text = [c.text for c in v.generate(gen_prompts, SamplingParams(max_new_tokens=16))]
        seq = v.tokenizer("The patient presented with chest pain and shortness of breath.")["input_ids"]
        v_top = v.topk_logprobs([seq], 8)[0]
        structured = v.generate(gen_prompts[:1], SamplingParams(max_new_tokens=40, json_schema={"type": "object", "properties": {"drug": {"type": "string"}}, "required": ["drug"]}))[0]
    finally:
        v.close()
    assert "drug" in json.loads(structured.text)
    h = load_engine("smollm2", EngineConfig(engine="transformers"))
    h_scores = h.choice_logprobs(prompts, ["A", "B", "C", "D"])
    for a, b in zip(v_scores, h_scores):
        assert max(abs(a[k] - b[k]) for k in a) < 2e-3
    assert v_text == [c.text for c in h.generate(gen_prompts, SamplingParams(max_new_tokens=16))]
    h_top = h.topk_logprobs([seq], 8)[0]
    assert (v_top[0][:, :3] == h_top[0][:, :3]).mean() > 0.95
    np.testing.assert_allclose(v_top[1][:, 0], h_top[1][:, 0], atol=2e-3)
