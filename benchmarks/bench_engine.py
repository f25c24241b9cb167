"""Output tokens/s of the inference engines on SmolLM2-135M, idle and beside a busy process.

    python benchmarks/bench_engine.py                # transformers threads auto/2/1, idle and busy; vLLM if importable
    python benchmarks/bench_engine.py --no-vllm --prompts 16

32 chat prompts of ~60 tokens, 64 new tokens, greedy, batch 16, fp32. The "busy" rows start their own
neighbour (a torch matmul loop with torch's default threads, bounded in time) to show what happens to
spinning OpenMP threads that share cores; ``load1`` is the machine's 1-minute load before each row, so a
reader can tell whether "idle" was idle (other users of the machine count too). Results are appended to
benchmarks/results/engine.csv.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

BUSY = "import torch, time\nx = torch.randn(768, 768)\nt = time.time()\nwhile time.time() - t < {s}:\n    x @ x\n"


def make_prompts(n: int) -> list:
    topics = ["hypertension", "asthma", "sepsis", "anemia", "stroke", "diabetes", "gout", "migraine"]
    return [
        [{"role": "user", "content": f"Explain how a physician diagnoses and treats {topics[i % len(topics)]} in a "
                                     f"{30 + i}-year-old patient: first tests, drugs of first choice, side effects."}]
        for i in range(n)
    ]


def measure(engine, prompts, repeats: int, fixed_length: bool) -> float:
    from benchmarks.harness import timed
    from engines import SamplingParams

    params = SamplingParams(max_new_tokens=64, ignore_eos=fixed_length)
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up
    seconds, outs = timed(lambda: engine.generate(prompts, params), repeats)
    return sum(c.num_tokens for c in outs) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description="engine throughput (output tok/s)")
    ap.add_argument("--no-vllm", action="store_true", help="skip vllm (eager) even if it is importable")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--fixed-length", action="store_true", help="every prompt generates exactly 64 tokens (EOS ignored)")
    ap.add_argument("--loads", default="idle,busy", help="comma-separated: idle, busy (default: both)")
    args = ap.parse_args()
    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    if not loads or set(loads) - {"idle", "busy"}:
        ap.error("--loads takes idle and/or busy")
    if args.prompts < 1 or args.repeats < 1:
        ap.error("--prompts and --repeats must be >= 1")

    from benchmarks.harness import append_rows, print_table
    from engines import EngineConfig, load_engine

    prompts = make_prompts(args.prompts)
    rows = []
    engine = load_engine("smollm2", EngineConfig(engine="transformers", batch_size=16))
    for load in loads:
        busy = subprocess.Popen([sys.executable, "-c", BUSY.format(s=900)]) if load == "busy" else None
        try:
            if busy:
                time.sleep(3)  # let it start its threads
            for threads in ("auto", 2, 1):
                engine.governor.threads = threads
                load1 = os.getloadavg()[0]
                tps = measure(engine, prompts, args.repeats, args.fixed_length)
                used = "/".join(map(str, engine.governor.applied))
                rows.append({"engine": "transformers", "threads": f"{threads} (used {used})", "machine": load,
                             "load1": round(load1, 2), "batch": 16, "new_tokens": "64" if args.fixed_length else "<=64 (EOS)",
                             "out_tok_s": round(tps, 1)})
                print(rows[-1], flush=True)
        finally:
            if busy:
                busy.kill()
                busy.wait()
    engine.close()
    if not args.no_vllm and importlib.util.find_spec("vllm") is not None:
        t0 = time.perf_counter()
        engine = load_engine("smollm2", EngineConfig(engine="vllm", max_model_len=2048))
        start = time.perf_counter() - t0
        load1 = os.getloadavg()[0]
        tps = measure(engine, prompts, args.repeats, args.fixed_length)
        rows.append({"engine": f"vllm eager (start {start:.0f} s)", "threads": "bound", "machine": "idle",
                     "load1": round(load1, 2), "batch": len(prompts), "new_tokens": "64" if args.fixed_length else "<=64 (EOS)",
                     "out_tok_s": round(tps, 1)})
        print(rows[-1], flush=True)
        engine.close()
    print_table(rows)
    print("written to", append_rows("engine", rows))


if __name__ == "__main__":
    main()
