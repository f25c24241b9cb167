"""One distillation training step: KDTrainer vs TRL's GKDTrainer (lmbda=0), with the floor beside them.

    python benchmarks/bench_kd.py                          # CPU: batch 2 x 256 tokens, fp32
    python benchmarks/bench_kd.py --batch 8 --seq-len 1024  # GPU (bf16): the anchor shape of TARGETS.md
    python benchmarks/bench_kd.py --variants ce,teacher,kd --profile prof/   # + per-op profile, memory timeline

Student: the SmolLM2-135M architecture, teacher: the SmolLM2-360M architecture, random weights (speed
and memory do not depend on them), 25% of each sequence masked as prompt. Every variant runs in its own
process, so peak memory is its own:

    ce       the student's plain CE step (HF forward with labels, backward, AdamW step)
    teacher  the teacher's forward alone (no grad)
    gkd      trl.experimental.gkd.GKDTrainer.training_step (lmbda=0: off-policy) + optimizer step
    kd       training.KDTrainer.training_step + optimizer step, same loss (generalized JSD, beta, T)
    ce_gc, gkd_gc, kd_gc   the same with gradient checkpointing on the student (the memory-lean setting)

With alpha=1 and top_k=0 (the defaults here) both trainers compute the same loss (GKD's compute_loss
uses T = 1 whatever GKDConfig.temperature says, so T is 1 unless changed); the first step's loss of each
is printed as a check. Time is the median over --steps steps after one warm-up step; memory is the peak
over those steps: torch.cuda.max_memory_allocated on a GPU, the process's peak resident memory (VmHWM,
reset before the steps) on CPU. Ratios are printed and a row per variant goes to
benchmarks/results/kd.csv with the device name.

After the timed steps one more step is timed part by part (synchronised wall clock, forward hooks on the
student's and the teacher's backbones): backbone forwards, the rest of the forward (LM head and losses;
the fused KD loss also computes its gradients there), backward, optimizer. ``--profile DIR`` adds one step
under torch.profiler per variant: the time per operation (self time, summed by op name), the operations
where the KD step spends more than the floor (student CE step + teacher forward), and a memory timeline
per variant (DIR/memory.png, by category: parameters, optimizer state, activations, gradients, ...).
"""

from __future__ import annotations

import argparse
import csv
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

VARIANTS = ("ce", "teacher", "gkd", "kd", "ce_gc", "gkd_gc", "kd_gc")
DEFAULT_VARIANTS = ("ce", "teacher", "gkd", "kd")
PARTS = ("student_forward", "teacher_forward", "head_and_loss", "backward", "optimizer", "other")
# Memory timeline categories, in the order torch.profiler's export_memory_timeline writes them.
MEMORY_CATEGORIES = ("parameter", "optimizer state", "input", "temporary", "activation", "gradient",
                     "autograd detail", "unknown")


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


def measure_steps(step, device: str, steps: int) -> tuple[Any, list[float], float, float]:
    """A warm-up call of ``step`` then ``steps`` timed ones: ``(first result, seconds each, peak MiB, MiB before)``.

    Peak memory covers the warm-up and the timed steps: CUDA max allocated, or the process's VmHWM on CPU.
    """
    import torch

    rss_before = _rss_mib("VmRSS") if device == "cpu" else torch.cuda.memory_allocated() / 2**20
    _reset_peak(device)
    first = step()  # warm-up: allocates optimizer state, compiles kernels
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return first, times, _peak_mib(device), rss_before


class Breakdown:
    """Wall-clock time per part of one step, synchronised at every boundary (used for one extra step only)."""

    def __init__(self, device: str) -> None:
        self.device, self.on = device, False
        self.seconds: dict[str, float] = {}
        self._open: dict[str, float] = {}

    def _now(self) -> float:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self, name: str) -> None:
        # A backbone re-run by gradient checkpointing inside backward counts as backward.
        if self.on and not (name.endswith("_forward") and "backward" in self._open):
            self._open[name] = self._now()

    def stop(self, name: str) -> None:
        if self.on and name in self._open:
            self.seconds[name] = self.seconds.get(name, 0.0) + self._now() - self._open.pop(name)

    def hook(self, module, name: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.start(name))
        module.register_forward_hook(lambda *_: self.stop(name))

    def wrap(self, obj, attr: str, name: str) -> None:
        original = getattr(obj, attr)

        def timed_call(*a, **k):
            self.start(name)
            try:
                return original(*a, **k)
            finally:
                self.stop(name)

        setattr(obj, attr, timed_call)

    def parts(self) -> dict[str, float]:
        """Milliseconds per part; ``head_and_loss`` is the forward minus the backbones."""
        s = self.seconds
        forward = s.get("forward", 0.0)
        parts = {
            "student_forward": s.get("student_forward", 0.0),
            "teacher_forward": s.get("teacher_forward", 0.0),
            "backward": s.get("backward", 0.0),
            "optimizer": s.get("optimizer", 0.0),
        }
        parts["head_and_loss"] = max(forward - parts["student_forward"] - parts["teacher_forward"], 0.0)
        parts["other"] = max(s.get("step", 0.0) - forward - parts["backward"] - parts["optimizer"], 0.0)
        return {k: parts[k] * 1000 for k in PARTS}


def _profile_step(step, device: str, out_dir: Path, variant: str) -> None:
    """One step under torch.profiler: self time per op name (JSON) and the memory timeline (JSON)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    ops = []
    for evt in prof.key_averages():
        self_us = evt.self_device_time_total if device == "cuda" else evt.self_cpu_time_total
        # Operators, and the kernels torch.compile fused (their call's self time); with_stack adds Python frames.
        name = "compiled graph (fused kernels)" if evt.key.startswith("## Call CompiledFxGraph") else evt.key
        if self_us > 0 and (name.startswith("aten::") or name.startswith("compiled graph")):
            ops.append({"op": name, "self_ms": self_us / 1000, "calls": evt.count})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{variant}_ops.json").write_text(json.dumps(sorted(ops, key=lambda o: -o["self_ms"])))
    prof.export_memory_timeline(str(out_dir / f"{variant}_memory.json"), device="cuda:0" if device == "cuda" else "cpu")


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
    kind, lean = args.variant.removesuffix("_gc"), args.variant.endswith("_gc")
    student = teacher = None
    if kind != "teacher":
        student = LlamaForCausalLM(s_cfg).to(device=device, dtype=dtype)
        if lean:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if kind != "ce":
        teacher = LlamaForCausalLM(t_cfg).to(device=device, dtype=dtype).eval()
    batch = _batch(args, s_cfg.vocab_size, device)
    num_items = int((batch["labels"][:, 1:] != -100).sum())
    out_dir = tempfile.mkdtemp(prefix="bench_kd_")
    common = dict(output_dir=out_dir, report_to="none", per_device_train_batch_size=args.batch, max_steps=10,
                  bf16=device == "cuda", gradient_checkpointing=lean, learning_rate=1e-5, disable_tqdm=True,
                  use_cpu=device == "cpu")
    if lean:
        common["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    parts = Breakdown(device)
    if student is not None:
        parts.hook(student.model, "student_forward")
    if teacher is not None:
        parts.hook(teacher.model, "teacher_forward")

    if kind == "ce":
        student.train()
        # The optimizer the trainers get (Trainer's default optim is adamw_torch_fused).
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)

        def step():
            parts.start("forward")
            loss = student(**batch).loss
            parts.stop("forward")
            parts.start("backward")
            loss.backward()
            parts.stop("backward")
            parts.start("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            parts.stop("optimizer")
            return loss.item()
    elif kind == "teacher":
        def step():
            parts.start("forward")
            with torch.no_grad():
                loss = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().mean()
            parts.stop("forward")
            return loss.item()
    else:
        from datasets import Dataset

        rows = [{"input_ids": batch["input_ids"][i].tolist(), "labels": batch["labels"][i].tolist()} for i in range(args.batch)]
        dataset = Dataset.from_list(rows)
        if kind == "gkd":
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            config = GKDConfig(lmbda=0.0, beta=args.beta, temperature=args.temperature, **common)
            trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                                 processing_class=tokenizer)
        else:
            from training import KDConfig, KDTrainer

            config = KDConfig(alpha=args.alpha, kd_loss_type="jsd", beta=args.beta, temperature=args.temperature,
                              top_k=args.top_k, loss_chunk_size=args.chunk_size,
                              loss_compile={"auto": None, "on": True, "off": False}[args.loss_compile], **common)
            trainer = KDTrainer(student, args=config, teacher_model=teacher, train_dataset=dataset, processing_class=tokenizer)
        trainer.create_optimizer()
        model, optimizer = trainer.model, trainer.optimizer
        model.train()
        parts.wrap(trainer, "compute_loss", "forward")
        parts.wrap(trainer.accelerator, "backward", "backward")

        def step():
            loss = trainer.training_step(model, dict(batch), num_items_in_batch=torch.tensor(num_items, device=device))
            parts.start("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            parts.stop("optimizer")
            return loss.item()

    first_loss, times, peak, rss_before = measure_steps(step, device, args.steps)
    parts.on = True  # one more step, timed part by part (the synchronisation would disturb the median)
    parts.start("step")
    step()
    parts.stop("step")
    parts.on = False
    if args.profile:
        _profile_step(step, device, Path(args.profile), args.variant)
    return {
        "variant": args.variant,
        "step_ms": statistics.median(times) * 1000,
        "peak_mib": peak,
        "step_mib": peak - rss_before,
        "first_loss": first_loss,
        **{f"{name}_ms": ms for name, ms in parts.parts().items()},
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
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="KDTrainer's loss_chunk_size (default: automatic, training.losses.auto_chunk_size)")
    parser.add_argument("--loss-compile", choices=("auto", "on", "off"), default="auto",
                        help="KDTrainer's loss_compile (default auto: on for a vocabulary of at least 8192)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma list of {', '.join(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--profile", metavar="DIR", default="",
                        help="also profile one step per variant: DIR/<variant>_ops.json, ops_above_floor_<kd variant>.csv, memory.png")
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
                   f"--loss-compile={args.loss_compile}", f"--threads={args.threads}"]
    if args.chunk_size is not None:
        passthrough.append(f"--chunk-size={args.chunk_size}")
    if args.profile:
        passthrough.append(f"--profile={Path(args.profile).resolve()}")
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

    rows = [{"batch": args.batch, "seq_len": args.seq_len, "chunk_size": "auto" if args.chunk_size is None else args.chunk_size,
             "loss_compile": args.loss_compile, **r} for r in results.values()]
    print_table([{k: v for k, v in r.items() if not k.endswith("_ms") or k == "step_ms"} for r in rows])
    print("one step, part by part (ms; head_and_loss: LM head + losses, which for kd include their gradients):")
    print_table([{"variant": r["variant"], **{p: r.get(f"{p}_ms", float("nan")) for p in PARTS}} for r in rows])

    summary = ratios(results)
    for key, value in summary.items():
        print(f"{key}: {'n/a' if value is None else f'{value:.4g}'}")
    if args.profile:
        report_profile(Path(args.profile), [r["variant"] for r in rows if "error" not in r])
    if not args.no_csv:
        path = append_rows("kd", [{**r, **summary} for r in rows])
        print(f"rows appended to {path}")
    return 0


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """KD over GKD (time, peak, memory above the resident models), KD over the floor, with and without
    gradient checkpointing; the first-step loss difference as the check that both compute the same loss."""

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in results and b in results and results[b][key] == results[b][key] and results[b][key] > 0:
            return results[a][key] / results[b][key]
        return None

    summary: dict[str, float | None] = {}
    for suffix in ("", "_gc"):
        kd, gkd, ce = f"kd{suffix}", f"gkd{suffix}", f"ce{suffix}"
        if kd in results and gkd in results:
            summary[f"{kd}_over_{gkd}_time"] = ratio(kd, gkd, "step_ms")
            summary[f"{kd}_over_{gkd}_peak"] = ratio(kd, gkd, "peak_mib")
            summary[f"{kd}_over_{gkd}_step_mem"] = ratio(kd, gkd, "step_mib")
            summary[f"loss_{kd}_minus_{gkd}"] = results[kd]["first_loss"] - results[gkd]["first_loss"]
        if {kd, ce, "teacher"} <= set(results):
            floor = results[ce]["step_ms"] + results["teacher"]["step_ms"]
            summary[f"{kd}_over_floor_time"] = results[kd]["step_ms"] / floor if floor == floor and floor > 0 else None
    return summary


def report_profile(directory: Path, variants: list[str]) -> None:
    """Print where the KD step spends more than the floor, per op; plot the memory timelines."""
    from benchmarks.harness import print_table

    ops = {v: {o["op"]: o for o in json.loads((directory / f"{v}_ops.json").read_text())}
           for v in variants if (directory / f"{v}_ops.json").exists()}
    for kd, ce in (("kd", "ce"), ("kd_gc", "ce_gc")):
        if not {kd, ce, "teacher"} <= set(ops):
            continue
        names = set(ops[kd]) | set(ops[ce]) | set(ops["teacher"])
        rows = []
        for name in names:
            floor = sum(ops[v].get(name, {}).get("self_ms", 0.0) for v in (ce, "teacher"))
            mine = ops[kd].get(name, {}).get("self_ms", 0.0)
            rows.append({"op": name, f"{kd}_ms": mine, "floor_ms": floor, "above_floor_ms": mine - floor,
                         f"{kd}_calls": ops[kd].get(name, {}).get("calls", 0)})
        rows.sort(key=lambda r: -abs(r["above_floor_ms"]))
        total = {"op": "(all ops)", f"{kd}_ms": sum(r[f"{kd}_ms"] for r in rows), "floor_ms": sum(r["floor_ms"] for r in rows),
                 "above_floor_ms": sum(r["above_floor_ms"] for r in rows), f"{kd}_calls": sum(r[f"{kd}_calls"] for r in rows)}
        print(f"per op, one profiled step: {kd} against the floor ({ce} + teacher), largest differences first")
        print_table([total, *rows[:20]])
        with (directory / f"ops_above_floor_{kd}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(total))
            writer.writeheader()
            writer.writerows([total, *rows])
    timelines = {v: json.loads((directory / f"{v}_memory.json").read_text())
                 for v in variants if (directory / f"{v}_memory.json").exists()}
    if timelines:
        plot_memory(timelines, directory / "memory.png")
        print(f"memory timelines in {directory / 'memory.png'}")


def plot_memory(timelines: dict[str, list], path: Path) -> None:
    """One panel per variant: memory over the profiled step, stacked by category (GiB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 2.6 * len(timelines)), squeeze=False)
    for ax, (variant, (times, sizes)) in zip(axes[:, 0], timelines.items()):
        if not times:
            ax.set_title(f"{variant}: no allocations recorded")
            continue
        t = [(x - times[0]) / 1e6 for x in times]  # us -> s
        # Column 0 of each row is unused by torch; 1.. follow MEMORY_CATEGORIES.
        layers = [[row[i + 1] / 2**30 for row in sizes] for i in range(len(MEMORY_CATEGORIES))]
        ax.stackplot(t, layers, labels=MEMORY_CATEGORIES, step="post")
        peak = max(sum(row) for row in sizes) / 2**30
        ax.set_title(f"{variant}: peak {peak:.2f} GiB")
        ax.set_ylabel("GiB")
        ax.set_xlim(0, max(t[-1], 1e-9))
    axes[-1, 0].set_xlabel("seconds into the profiled step")
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
