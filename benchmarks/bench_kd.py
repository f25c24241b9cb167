"""One distillation training step: KDTrainer vs TRL's GKDTrainer (lmbda=0), with the floor beside them.

    python benchmarks/bench_kd.py                          # CPU: batch 2 x 256 tokens, fp32
    python benchmarks/bench_kd.py --batch 8 --seq-len 1024  # GPU (bf16): the anchor shape of TARGETS.md

Student: the SmolLM2-135M architecture, teacher: the SmolLM2-360M architecture, random weights (speed
and memory do not depend on them), 25% of each sequence masked as prompt. Every variant runs in its own
process, so peak memory is its own:

    ce       the student's plain CE step (HF forward with labels, backward, AdamW step)
    teacher  the teacher's forward alone (no grad)
    gkd      trl.experimental.gkd.GKDTrainer.training_step (lmbda=0: off-policy) + optimizer step
    kd       training.KDTrainer.training_step + optimizer step, same loss (generalized JSD, beta, T)

With alpha=1 and top_k=0 (the defaults here) both trainers compute the same loss (GKD's compute_loss
uses T = 1 whatever GKDConfig.temperature says, so T is 1 unless changed); the first step's loss of each
is printed as a check. Time is the median over --steps steps after one warm-up step; memory is the peak
over those steps: torch.cuda.max_memory_allocated on a GPU, the process's peak resident memory (VmHWM,
reset before the steps) on CPU. Ratios are printed and a row per variant goes to
benchmarks/results/kd.csv with the device name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("ce", "teacher", "gkd", "kd")


def _configs(vocab: int):
    from transformers import LlamaConfig

    common = dict(vocab_size=vocab, max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000.0,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    student = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, **common)  # SmolLM2-135M
    teacher = LlamaConfig(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                          num_key_value_heads=5, **common)  # SmolLM2-360M
    return student, teacher


def _rss_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux)
        except OSError as e:
            print(f"warning: cannot reset the peak-memory mark ({e}); peak_mib includes model set-up", file=sys.stderr)


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_mib("VmHWM")


def _batch(args, vocab: int, device: str):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.batch, args.seq_len), generator=g)
    labels = ids.clone()
    labels[:, : args.seq_len // 4] = -100  # the prompt
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def run_variant(args) -> dict[str, Any]:
    """Build one variant in this process, run warm-up + steps, return its time, memory and first loss."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from engines.smollm2 import converted_path

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_num_threads(args.threads or torch.get_num_threads())
    tokenizer = AutoTokenizer.from_pretrained(converted_path())
    s_cfg, t_cfg = _configs(len(tokenizer))
    torch.manual_seed(0)
    student = teacher = None
    if args.variant != "teacher":
        student = LlamaForCausalLM(s_cfg).to(device=device, dtype=dtype)
    if args.variant != "ce":
        teacher = LlamaForCausalLM(t_cfg).to(device=device, dtype=dtype).eval()
    batch = _batch(args, s_cfg.vocab_size, device)
    num_items = int((batch["labels"][:, 1:] != -100).sum())
    out_dir = tempfile.mkdtemp(prefix="bench_kd_")
    common = dict(output_dir=out_dir, report_to="none", per_device_train_batch_size=args.batch, max_steps=10,
                  bf16=device == "cuda", gradient_checkpointing=False, learning_rate=1e-5, disable_tqdm=True,
                  use_cpu=device == "cpu")

    if args.variant == "ce":
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)

        def step():
            loss = student(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()
    elif args.variant == "teacher":
        def step():
            with torch.no_grad():
                return teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().mean().item()
    else:
        from datasets import Dataset

        rows = [{"input_ids": batch["input_ids"][i].tolist(), "labels": batch["labels"][i].tolist()} for i in range(args.batch)]
        dataset = Dataset.from_list(rows)
        if args.variant == "gkd":
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            config = GKDConfig(lmbda=0.0, beta=args.beta, temperature=args.temperature, **common)
            trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                                 processing_class=tokenizer)
        else:
            from training import KDConfig, KDTrainer

            config = KDConfig(alpha=args.alpha, kd_loss_type="jsd", beta=args.beta, temperature=args.temperature,
                              top_k=args.top_k, loss_chunk_size=args.chunk_size, **common)
            trainer = KDTrainer(student, args=config, teacher_model=teacher, train_dataset=dataset, processing_class=tokenizer)
        trainer.create_optimizer()
        model, optimizer = trainer.model, trainer.optimizer
        model.train()

        def step():
            loss = trainer.training_step(model, dict(batch), num_items_in_batch=torch.tensor(num_items, device=device))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()

    rss_before = _rss_mib("VmRSS") if device == "cpu" else torch.cuda.memory_allocated() / 2**20
    _reset_peak(device)
    first_loss = step()  # warm-up: allocates optimizer state, compiles kernels
    times = []
    for _ in range(args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = _peak_mib(device)
    return {
        "variant": args.variant,
        "step_ms": statistics.median(times) * 1000,
        "peak_mib": peak,
        "step_mib": peak - rss_before,
        "first_loss": first_loss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="sequences per step (default 2; 8 on a GPU for the anchor)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256; 1024 on a GPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (default 3)")
    parser.add_argument("--beta", type=float, default=0.5, help="generalized JSD beta for both trainers (default 0.5)")
    parser.add_argument("--temperature", type=float, default=1.0, help="T for both (GKD's loss always uses 1)")
    parser.add_argument("--alpha", type=float, default=1.0, help="KDTrainer's KD weight (1 = the same loss as GKD)")
    parser.add_argument("--top-k", type=int, default=0, help="KDTrainer's online top-k (0 = full distribution, as GKD)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="KDTrainer's loss_chunk_size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--no-csv", action="store_true", help="print only, append nothing to benchmarks/results/kd.csv")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.variant:
        result = run_variant(args)
        Path(args.json_out).write_text(json.dumps(result))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    results: dict[str, dict[str, Any]] = {}
    passthrough = [f"--batch={args.batch}", f"--seq-len={args.seq_len}", f"--steps={args.steps}", f"--beta={args.beta}",
                   f"--temperature={args.temperature}", f"--alpha={args.alpha}", f"--top-k={args.top_k}",
                   f"--chunk-size={args.chunk_size}", f"--threads={args.threads}"]
    for variant in variants:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        print(f"running {variant} (batch {args.batch} x {args.seq_len}) ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, *passthrough, f"--variant={variant}", f"--json-out={out}"])
        if proc.returncode != 0:
            results[variant] = {"variant": variant, "step_ms": float("nan"), "peak_mib": float("nan"), "step_mib": float("nan"),
                                "first_loss": float("nan"), "error": f"exit {proc.returncode} (out of memory?)"}
        else:
            results[variant] = json.loads(Path(out).read_text())
        os.unlink(out)

    from benchmarks.harness import append_rows, print_table

    rows = [{"batch": args.batch, "seq_len": args.seq_len, **r} for r in results.values()]
    print_table(rows)

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in results and b in results and results[b][key] == results[b][key] and results[b][key] > 0:
            return results[a][key] / results[b][key]
        return None

    summary = {}
    if "kd" in results and "gkd" in results:
        summary["kd_over_gkd_time"] = ratio("kd", "gkd", "step_ms")
        summary["kd_over_gkd_peak"] = ratio("kd", "gkd", "peak_mib")
        summary["kd_over_gkd_step_mem"] = ratio("kd", "gkd", "step_mib")
        summary["loss_kd_minus_gkd"] = results["kd"]["first_loss"] - results["gkd"]["first_loss"]
    if {"kd", "ce", "teacher"} <= set(results):
        floor = results["ce"]["step_ms"] + results["teacher"]["step_ms"]
        summary["kd_over_floor_time"] = results["kd"]["step_ms"] / floor if floor == floor and floor > 0 else None
    for key, value in summary.items():
        print(f"{key}: {'n/a' if value is None else f'{value:.4g}'}")
    if not args.no_csv:
        path = append_rows("kd", [{**r, **summary} for r in rows])
        print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
