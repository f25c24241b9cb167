"""The OpenAI-compatible HTTP engine against real HTTP servers on 127.0.0.1.

The server speaks the OpenAI protocol (chat and completions, logprobs/top_logprobs) and answers with a
real tiny transformers model, so the client's results can be compared with the local engine's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from data.records import MCQItem
from engines import EngineCapabilityError, EngineConfig, SamplingParams, load_engine
from engines.hf_engine import TransformersEngine
from engines.openai_engine import HTTPEngineError
from engines.replicas import ReplicaPool
from synth.generate import NodeBrief, SynthConfig, generate_items
from tests.openai_server import serve

ROOT = Path(__file__).resolve().parents[1]
POOL_NODES = {
    "root/anatomy": NodeBrief("root/anatomy", "anatomy", "Gross anatomy", ("confuses nerves",), ("root", "anatomy")),
    "root/virology": NodeBrief("root/virology", "virology", "", ("confuses DNA and RNA viruses",), ("root", "virology")),
}
POOL_EXEMPLARS = {
    node: [MCQItem(id=f"seed-{node}-{i}", question=f"Seed question {i} about {node}?", options={k: f"option {k}{i}" for k in "ABCD"},
                   answer_idx="A", ability_path=["root", node.split("/")[1]]) for i in range(2)]
    for node in POOL_NODES
}
PROMPTS = [
    [{"role": "user", "content": "What is the first-line drug for anaphylaxis?"}],
    "Plain text prompt",
    [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is"}],
    [{"role": "user", "content": "A much longer question about the management of diabetic ketoacidosis in adults"}],
]


@pytest.fixture(scope="module")
def backend(tiny_teacher_path) -> TransformersEngine:
    return load_engine(f"hf:{tiny_teacher_path}", "transformers", batch_size=4, threads=1)


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_port}/v1"


def test_generate_and_scores_match_the_local_engine_after_a_503(backend):
    server, state = serve(backend, fail_first=1)
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
    server, state = serve(backend, delay_s=0.3)
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
    server, state = serve(backend)
    try:
        client = load_engine(f"openai:{_url(server)}#tiny", EngineConfig(concurrency=2))
        client.generate(["same"] * 3, SamplingParams(max_new_tokens=2, temperature=0.7, seed=40))
        assert sorted(b["seed"] for b in state["bodies"]) == [40, 41, 42]
        client.generate(["same"], SamplingParams(max_new_tokens=2))
        assert "seed" not in state["bodies"][-1]
    finally:
        server.shutdown()


def test_round_robin_skips_a_dead_replica_and_sends_the_key(backend, monkeypatch):
    a, state_a = serve(backend)
    b, state_b = serve(backend)
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
    server, state = serve(backend, fail_first=10)
    try:
        client = load_engine(f"openai:{_url(server)}#tiny", EngineConfig(max_retries=1))
        with pytest.raises(HTTPEngineError, match="HTTP 503"):
            client.generate(["x"], SamplingParams(max_new_tokens=2))
        assert state["requests"] == 2
    finally:
        server.shutdown()


def test_replica_pool_rotation_cooldown_and_return():
    now = [0.0]
    pool = ReplicaPool(["a", "b"], cooldown_s=2.0, max_cooldown_s=5.0, clock=lambda: now[0])
    assert [pool.pick() for _ in range(4)] == ["a", "b", "a", "b"]
    assert pool.failed("a", "connection refused") == 2.0
    assert pool.failed("a", "connection reset") == 2.0, "requests in flight when it went out do not lengthen the cool-down"
    assert [pool.pick() for _ in range(3)] == ["b", "b", "b"]
    assert pool.failed("b", "timed out") == 2.0
    assert pool.pick() is None and pool.wait_s() == 2.0
    assert pool.describe() == "a: connection reset; b: timed out"
    now[0] = 2.0  # both back: a fails again (4 s), then again (5 s: the cap)
    assert {pool.pick(), pool.pick()} == {"a", "b"}
    assert pool.failed("a", "refused") == 4.0
    now[0] = 6.0
    assert pool.failed("a", "refused") == 5.0
    pool.answered("a")  # its first answer brings it back at once, and resets the doubling
    assert "a" in {pool.pick(), pool.pick()} and pool.failed("a", "refused") == 2.0


def _server_process(model: Path, delay_s: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--model", str(model), "--delay-s", str(delay_s)],
                            stdout=subprocess.PIPE, text=True, env=env)
    first = proc.stdout.readline().split()
    assert first[:1] == ["listening"], first
    return proc, f"http://127.0.0.1:{first[1]}/v1"


def test_a_replica_killed_mid_stage_loses_no_request_and_repeats_none(tiny_teacher_path):
    """Two server processes; one is SIGKILLed after its third answer, in the middle of a generate stage
    (synth.generate_items, what the loop's generate node runs): the stage completes on the other, with
    every requested item's result exactly once."""
    (a, url_a), (b, url_b) = _server_process(tiny_teacher_path, 0.2), _server_process(tiny_teacher_path, 0.2)
    answered: dict[str, list[str]] = {"a": [], "b": []}
    killed = threading.Event()

    def watch(proc: subprocess.Popen, key: str) -> None:
        for line in proc.stdout:
            if line.startswith("answered "):
                answered[key].append(line.split()[1])
                if key == "a" and len(answered["a"]) == 3:
                    proc.send_signal(signal.SIGKILL)
                    killed.set()

    watchers = [threading.Thread(target=watch, args=(p, k), daemon=True) for p, k in ((a, "a"), (b, "b"))]
    for t in watchers:
        t.start()
    try:
        client = load_engine(f"openai:{url_a},{url_b}#tiny", EngineConfig(concurrency=4, max_retries=3, progress=False))
        requested = {"root/anatomy": 8, "root/virology": 8}
        result = generate_items(client, requested, POOL_NODES, POOL_EXEMPLARS, SynthConfig(seed=1, rounds=1, max_new_tokens=16))
        assert killed.is_set(), "the replica was not killed during the stage; nothing was tested"
        ids = [item.id for item in result.items] + [r["id"] for r in result.rejected]
        assert len(ids) == len(set(ids)) == sum(requested.values()), "each requested item is there once, parsed or not"
        stats = client.stats
        assert stats["answered"] == 16 and stats["failed_over"] >= 1 and stats["sent"] == stats["answered"] + stats["failed_over"]
        b.terminate()
        b.wait(timeout=30)
        assert len(answered["b"]) >= 16 - len(answered["a"]) and len(set(answered["a"] + answered["b"])) == len(answered["a"] + answered["b"])
        print(f"pool: {stats['sent']} sent, {stats['failed_over']} failed over, {stats['answered']} answered "
              f"(a {len(answered['a'])} before its kill, b {len(answered['b'])}), {len(ids)} results, {len(ids) - len(set(ids))} duplicates")
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
