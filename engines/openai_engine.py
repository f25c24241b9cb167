"""OpenAI-compatible HTTP engine: any ``vllm serve`` replica or hosted model.

Requests run concurrently (a thread pool, ``concurrency`` in flight) and rotate round-robin over several
base URLs (``openai:http://a:8000/v1,http://b:8000/v1#model``) — the path to many machines. A replica
that stops answering leaves the rotation for a while (engines.replicas) and its requests go to the
others; 429/5xx answers are retried with exponential backoff. Chat messages go to
``/chat/completions``, raw strings to ``/completions``. stdlib only: no client library needed.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

import numpy as np

from engines.base import (
    Completion,
    EngineCapabilityError,
    Prompt,
    SamplingParams,
    progress_bar,
)
from engines.replicas import ReplicaPool

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class HTTPEngineError(RuntimeError):
    """A request that failed for good (after retries, or with a status that retrying cannot fix)."""


class OpenAIEngine:
    """An OpenAI-compatible server (or several, round-robin) behind the Engine protocol."""

    # Chat requests carry SamplingParams.json_schema as response_format (vLLM and OpenAI constrain
    # decoding with it), so callers need not prefill the reply.
    enforces_json_schema = True

    def __init__(self, spec: Any, config: Any) -> None:
        self.name = spec.raw
        self.model = spec.model
        self.base_urls = [u.rstrip("/") for u in spec.path.split(",") if u.strip()]
        self.concurrency = config.concurrency
        self.timeout_s = config.timeout_s
        self.max_retries = config.max_retries
        self.api_key = os.environ.get(config.api_key_env, "")
        self.progress = config.progress
        self._pool = ReplicaPool(self.base_urls, cooldown_s=config.replica_cooldown_s)
        self._lock = threading.Lock()
        # Requests sent (every attempt), answered, and moved to another replica after one did not answer.
        self.stats: collections.Counter = collections.Counter(sent=0, answered=0, failed_over=0)

    # ------------------------------------------------------------------------------------ transport

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to a replica that answers. A replica that does not is taken out of rotation and the
        request goes to another at once (its id in ``X-Request-Id``; only one answer is ever used);
        429/5xx answers are retried with backoff. Fails only when no replica is left or retries run out."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        delay, refused, all_out = 0.5, 0, 0
        while True:
            url = self._pool.pick()
            if url is None:  # every replica is out: wait for the first to come back, max_retries times
                if all_out == self.max_retries:
                    raise HTTPEngineError(f"{self.name}: no replica answers ({self._pool.describe()}); start the server(s) or fix the URL(s)")
                all_out += 1
                wait = self._pool.wait_s()
                logger.warning("%s: every replica is out of rotation; trying again in %.1f s", self.name, wait)
                time.sleep(wait)
                continue
            self._count("sent")
            try:
                req = urllib.request.Request(url + route, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    answer = json.loads(resp.read())
                self._pool.answered(url)
                self._count("answered")
                return answer
            except urllib.error.HTTPError as e:  # the replica answered, with an error
                self._pool.answered(url)
                detail = e.read()[:300].decode(errors="replace")
                if e.code not in RETRY_STATUS or refused == self.max_retries:
                    raise HTTPEngineError(f"{url}{route}: HTTP {e.code}: {detail}") from None
                refused += 1
                retry_after = e.headers.get("Retry-After") if e.headers else None
                wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else delay
                logger.warning("%s: HTTP %d, retrying in %.1f s", url, e.code, wait)
                time.sleep(wait)
                delay = min(delay * 2, 30.0)
            except (urllib.error.URLError, http.client.HTTPException, OSError, json.JSONDecodeError) as e:
                reason = str(getattr(e, "reason", "") or e) or type(e).__name__
                cooldown = self._pool.failed(url, reason)
                self._count("failed_over")
                logger.warning("%s: %s; out of rotation for %.0f s, the request goes to another replica", url, reason, cooldown)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _map(self, fn, items: Sequence[Any]) -> list[Any]:
        """``fn`` over ``items`` with at most ``concurrency`` requests in flight; results in input order."""
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(items)))) as pool, progress_bar(
            self.progress, len(items), "requests", unit="req"
        ) as bar:
            futures = [pool.submit(fn, item) for item in items]
            for future in as_completed(futures):
                bar.update(1)
                if (error := future.exception()) is not None:
                    for f in futures:  # requests not yet started are dropped; running ones finish
                        f.cancel()
                    raise error
            return [f.result() for f in futures]

    def _request(self, prompt: Prompt, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if isinstance(prompt, str):
            return "/completions", {"model": self.model, "prompt": prompt, **extra}
        messages = list(prompt)
        body: dict[str, Any] = {"model": self.model, "messages": messages, **extra}
        if messages and messages[-1]["role"] == "assistant":
            # vLLM's extension: continue the assistant prefix instead of opening a new turn.
            body.update(add_generation_prompt=False, continue_final_message=True)
        return "/chat/completions", body

    # --------------------------------------------------------------------------------- protocol

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        extra: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p}
        if params.stop:
            extra["stop"] = list(params.stop)
        if params.ignore_eos:
            extra["ignore_eos"] = True  # a vLLM server extension; other servers may refuse it
        if params.json_schema is not None:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "item", "schema": params.json_schema}}

        def one(indexed: tuple[int, Prompt]) -> Completion:
            i, prompt = indexed
            route, body = self._request(prompt, extra if params.seed is None else {**extra, "seed": params.seed + i})
            if route == "/completions":
                body.pop("response_format", None)
            resp = self._post(route, body)
            choice = resp["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            tokens = (resp.get("usage") or {}).get("completion_tokens", 0)
            return Completion(text=text or "", finish_reason="length" if choice.get("finish_reason") == "length" else "stop", num_tokens=tokens)

        return self._map(one, list(enumerate(prompts)))

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[dict[str, float]]:
        def one(prompt: Prompt) -> dict[str, float]:
            route, body = self._request(prompt, {"max_tokens": 1, "temperature": 0.0})
            if route == "/completions":
                body["logprobs"] = 20
            else:
                body.update(logprobs=True, top_logprobs=20)
            choice = self._post(route, body)["choices"][0]
            top = _top_logprobs(choice)
            floor = min(top.values()) if top else -100.0
            # A choice outside the returned top 20 gets a bound below the 20th: not exact, never above it.
            return {c: max(top.get(c, floor - 1.0), top.get(" " + c, floor - 1.0)) for c in choices}

        return self._map(one, prompts)

    def topk_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        raise EngineCapabilityError(
            f"{self.name}: top-k log-probs over token sequences need the model's tokenizer and weights; "
            "label with a local engine (hf:/vllm: spec of the same model)"
        )

    def close(self) -> None:
        """Nothing to free: connections are not kept."""


def _top_logprobs(choice: dict[str, Any]) -> dict[str, float]:
    lp = choice.get("logprobs") or {}
    if "content" in lp:  # chat format: content[0].top_logprobs = [{token, logprob}, ...]
        first = (lp.get("content") or [{}])[0]
        return {t["token"]: t["logprob"] for t in first.get("top_logprobs", [])}
    tops = lp.get("top_logprobs") or [{}]  # completions format: top_logprobs[0] = {token: logprob}
    return dict(tops[0] or {})
