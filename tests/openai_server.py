"""A small OpenAI-compatible server over the transformers engine, for the tests: in a thread (``serve``)
or as a process of its own (``python -m tests.openai_server --model FOLDER``, which prints
``listening PORT`` and then ``answered REQUEST_ID`` after each reply, so a test can kill it mid-stage).

It speaks chat and completions with logprobs/top_logprobs and ``GET /models``, and answers with a real
(tiny) model, so clients' results can be compared with the local engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engines import SamplingParams


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def serve(backend: Any, fail_first: int = 0, delay_s: float = 0.0, port: int = 0, on_answer: Callable[[str], None] | None = None, model: str = "tiny"):
    """Start a server in a thread; ``fail_first`` requests get a 503, each answer waits ``delay_s`` (to
    see concurrency); ``on_answer`` gets each answered request's X-Request-Id. Returns (server, state)."""
    state = {"fail": fail_first, "in_flight": 0, "max_in_flight": 0, "requests": 0, "auth": set(), "bodies": [], "answered": []}
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

        def do_GET(self):
            if self.path.rstrip("/").endswith("/models"):
                return self._reply(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            return self._reply(404, {"error": "no route"})

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
            counted = True
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
                # Out of flight before the reply leaves: the client may send its next request as soon as
                # it reads this one, and counting both would see one more in flight than it ever had.
                with lock:
                    state["in_flight"] -= 1
                    counted = False
                self._reply(200, {"choices": [choice], "usage": {"completion_tokens": tokens}})
                request_id = self.headers.get("X-Request-Id", "")
                with lock:
                    state["answered"].append(request_id)
                if on_answer is not None:
                    on_answer(request_id)
            finally:
                if counted:
                    with lock:
                        state["in_flight"] -= 1

    server = _Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.openai_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a transformers model folder")
    p.add_argument("--name", default="tiny", help="the model id the server lists and expects")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-s", type=float, default=0.0, help="wait before each answer")
    args = p.parse_args(argv)
    from engines import load_engine

    backend = load_engine(f"hf:{args.model}", "transformers", batch_size=1, threads=1, progress=False)
    server, _ = serve(backend, delay_s=args.delay_s, port=args.port, model=args.name, on_answer=lambda rid: print(f"answered {rid}", flush=True))
    print(f"listening {server.server_port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
