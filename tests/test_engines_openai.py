"""The OpenAI-compatible HTTP engine against real HTTP servers on 127.0.0.1.

The server speaks the OpenAI protocol (chat and completions, logprobs/top_logprobs) and answers with a
real tiny transformers model, so the client's results can be compared with the local engine's.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engines import EngineCapabilityError, EngineConfig, SamplingParams, load_engine
from engines.hf_engine import TransformersEngine
from engines.openai_engine import HTTPEngineError

PROMPTS = [
    [{"role": "user", "content": "What is the first-line drug for anaphylaxis?"}],
    "Plain text prompt",
    [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is"}],
    [{"role": "user", "content": "A much longer question about the management of diabetic ketoacidosis in adults"}],
]


@pytest.fixture(scope="module")
def backend(tiny_teacher_path) -> TransformersEngine:
    return load_engine(f"hf:{tiny_teacher_path}", "transformers", batch_size=4, threads=1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _serve(backend: TransformersEngine, fail_first: int = 0, delay_s: float = 0.0):
    """Start a server; ``fail_first`` requests get a 503, each answer waits ``delay_s`` (to see concurrency)."""
    state = {"fail": fail_first, "in_flight": 0, "max_in_flight": 0, "requests": 0, "auth": set(), "bodies": []}
    lock, model_lock = threading.Lock(), threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            return

        def _reply(self, code: int, payload: dict | None = None) -> None:
            data = json.dumps(payload or {}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["requests"] += 1
                state["auth"].add(self.headers.get("Authorization"))
                state["bodies"].append(body)
                if state["fail"] > 0:
                    state["fail"] -= 1
                    return self._reply(503, {"error": "overloaded"})
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            try:
                time.sleep(delay_s)
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"] if chat else body["prompt"]
                with model_lock:  # one model: serialise its use, not the HTTP handling
                    if body.get("max_tokens") == 1 and (body.get("logprobs") or body.get("top_logprobs")):
                        scores = backend.choice_logprobs([prompt], ["A", "B", "C", "D"])[0]
                        top = {t: v for c, v in scores.items() for t in (c, " " + c)}
                        if chat:
                            entries = [{"token": k, "logprob": v} for k, v in top.items()]
                            choice = {"message": {"content": "A"}, "logprobs": {"content": [{"token": "A", "top_logprobs": entries}]}}
                        else:
                            choice = {"text": "A", "logprobs": {"top_logprobs": [top]}}
                        tokens = 1
                    else:
                        c = backend.generate([prompt], SamplingParams(max_new_tokens=body["max_tokens"], stop=body.get("stop") or []))[0]
                        choice = {"message": {"content": c.text}} if chat else {"text": c.text}
                        choice["finish_reason"] = c.finish_reason
                        tokens = c.num_tokens
                self._reply(200, {"choices": [choice], "usage": {"completion_tokens": tokens}})
            finally:
                with lock:
                    state["in_flight"] -= 1

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_port}/v1"


def test_generate_and_scores_match_the_local_engine_after_a_503(backend):
    server, state = _serve(backend, fail_first=1)
    try:
        client = load_engine(f"openai:{_url(server)}#tiny", EngineConfig(concurrency=3, max_retries=2))
        params = SamplingParams(max_new_tokens=6)
        got = client.generate(PROMPTS * 2, params)
        want = backend.generate(PROMPTS * 2, params)
        assert [(c.text, c.num_tokens, c.finish_reason) for c in got] == [(c.text, c.num_tokens, c.finish_reason) for c in want]
        assert state["requests"] == len(PROMPTS) * 2 + 1, "the 503 was retried once"
        # Requests run concurrently, so bodies arrive in any order; the retried one is counted twice.
        routes = Counter(("messages" in b, b.get("continue_final_message", False)) for b in state["bodies"])
        expected = Counter({(True, False): 4, (False, False): 2, (True, True): 2})  # chat, raw text, continued chat
        assert sum(routes.values()) == len(PROMPTS) * 2 + 1 and not expected - routes
        scores = client.choice_logprobs(PROMPTS, ["A", "B"])
        local = backend.choice_logprobs(PROMPTS, ["A", "B"])
        for s, l in zip(scores, local):
            assert s == pytest.approx(l, abs=1e-5)
        with pytest.raises(EngineCapabilityError, match="label with a local engine"):
            client.topk_logprobs([[1, 2, 3]], 4)
    finally:
        server.shutdown()


def test_requests_run_concurrently_up_to_the_limit(backend):
    server, state = _serve(backend, delay_s=0.3)
    try:
        client = load_engine(f"openai:{_url(server)}#tiny", EngineConfig(concurrency=3))
        t0 = time.perf_counter()
        client.generate(["x"] * 6, SamplingParams(max_new_tokens=2))
        elapsed = time.perf_counter() - t0
        assert state["max_in_flight"] == 3
        assert elapsed < 6 * 0.3, "6 requests of 0.3 s took as long as running them one by one"
    finally:
        server.shutdown()


def test_a_seeded_call_gives_each_prompt_its_own_seed(backend):
    """The same prompt repeated in one call must be able to sample differently: prompt i gets seed + i."""
    server, state = _serve(backend)
    try:
        client = load_engine(f"openai:{_url(server)}#tiny", EngineConfig(concurrency=2))
        client.generate(["same"] * 3, SamplingParams(max_new_tokens=2, temperature=0.7, seed=40))
        assert sorted(b["seed"] for b in state["bodies"]) == [40, 41, 42]
        client.generate(["same"], SamplingParams(max_new_tokens=2))
        assert "seed" not in state["bodies"][-1]
    finally:
        server.shutdown()


def test_round_robin_skips_a_dead_replica_and_sends_the_key(backend, monkeypatch):
    a, state_a = _serve(backend)
    b, state_b = _serve(backend)
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    monkeypatch.setenv("ATKD_TEST_KEY", "sekret")
    try:
        client = load_engine(f"openai:{_url(a)},{dead},{_url(b)}#tiny", EngineConfig(concurrency=2, max_retries=3, api_key_env="ATKD_TEST_KEY"))
        out = client.generate(["x"] * 6, SamplingParams(max_new_tokens=2))
        assert len(out) == 6
        assert state_a["requests"] >= 1 and state_b["requests"] >= 1
        assert state_a["requests"] + state_b["requests"] == 6
        assert state_a["auth"] | state_b["auth"] == {"Bearer sekret"}
    finally:
        a.shutdown()
        b.shutdown()


def test_gives_up_after_retries(backend):
    server, state = _serve(backend, fail_first=10)
    try:
        client = load_engine(f"openai:{_url(server)}#tiny", EngineConfig(max_retries=1))
        with pytest.raises(HTTPEngineError, match="HTTP 503"):
            client.generate(["x"], SamplingParams(max_new_tokens=2))
        assert state["requests"] == 2
    finally:
        server.shutdown()
