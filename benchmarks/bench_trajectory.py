"""Dataset distillation by trajectory matching on the shipped clinical benchmark, against its baselines;
and the memory and accuracy of the three meta-gradient modes.

    python -m benchmarks.bench_trajectory --groups clinical,memory [--per-class 10] [--seeds 5]

- clinical: question -> source dataset (6 classes; the clinical dev items of ../shared, 80/20 split by
  a hash of the question). Experts: the head:minilm student (a small position-aware classifier over
  all-MiniLM-L6-v2's frozen token embeddings), 5 experts x 20 epochs of plain SGD. Synthetic sets of
  --per-class rows per class (real initialisation; hard and soft labels), then one table from
  ``training.trajectory evaluate``: each set, a random subset of the same size, K-center, herding, a
  random subset with expert soft labels, full data and the experts themselves, mean ± std over --seeds
  fresh students each. Also the matching loss beside the validation accuracy along the distillation.
- memory: one outer step on the clinical synthetic set with 5, 10, 20 and 40 inner steps, for each
  meta-gradient mode, each in a fresh process, measured on its second call (the allocator's steady
  state): peak resident memory above the process's level before the step (Linux: VmHWM reset through
  /proc/self/clear_refs) and the whole process's peak, seconds, and the cosine of the adjoint's and
  TESLA's meta-gradients with the exact one.

Work (experts, sets) is kept in --work (default ~/.cache/atkd/bench_trajectory) and reused; rows are
appended to benchmarks/results/trajectory.csv.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import append_rows, print_table

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "clinical"
GROUPS = ("clinical", "memory")


def experts_config(args: argparse.Namespace, work: Path):
    from training.trajectory.config import ExpertsConfig

    return ExpertsConfig(out=str(work / "experts"), data=str(work / "data" / "train.jsonl"), test=str(work / "data" / "test.jsonl"), model="head:minilm",
                         experts=args.experts, epochs=args.epochs, learning_rate=args.expert_lr, max_length=args.max_length, progress=True)


def prepare(args: argparse.Namespace, work: Path) -> Any:
    from training.trajectory.data import write_benchmark
    from training.trajectory.experts import train_experts

    if not (work / "data" / "benchmark.json").is_file():
        write_benchmark("clinical-source", sorted(glob.glob(str(SHARED / "*_dev.jsonl"))), work / "data")
    t0 = time.perf_counter()
    _, records = train_experts(experts_config(args, work))
    return time.perf_counter() - t0, records


def distill(args: argparse.Namespace, work: Path, name: str, **options: Any):
    """A synthetic set into work/<name>, reused when its card holds the same settings."""
    from training.trajectory.config import TTMConfig
    from training.trajectory.distill import distill_set

    cfg = TTMConfig(experts=str(work / "experts"), out=str(work / name), per_class=args.per_class, iterations=args.iterations, **options)
    card = work / name / "card.json"
    wanted = {k: v for k, v in vars(cfg).items() if k not in ("experts", "out", "progress")}
    if card.is_file() and json.loads(card.read_text())["distillation"] == json.loads(json.dumps(wanted)):
        print(f"{name}: distilled before, reused")
        return None
    result = distill_set(cfg)
    print(f"{name}: {len(result.log)} iterations in {result.seconds:.0f} s, {result.synthetic.card['selected']}; stopped: {result.stopped}; peak memory {result.peak_memory_mb:.0f} MB above the start")
    return result


def group_clinical(args: argparse.Namespace, work: Path) -> None:
    from training.trajectory.config import EvaluateConfig
    from training.trajectory.evaluate import evaluate_sets
    from training.trajectory.evaluate import print_table as print_eval

    secs, records = prepare(args, work)
    print(f"experts: {len(records)} in {secs:.0f} s; final test accuracy " + ", ".join(f"{r['test_accuracy'][-1]:.3f}" for r in records))
    sets = {"ttm-hard": {"labels": "hard"}, "ttm-soft": {"labels": "soft"}}
    for name, options in sets.items():
        distill(args, work, name, eval_every=args.eval_every, **options)
        log = (work / name / "log.csv").read_text().splitlines()
        header = log[0].split(",")
        rows = [dict(zip(header, line.split(","))) for line in log[1:]]
        tracked = [r for r in rows if r["val_accuracy"] not in ("", "None")]
        print(f"{name}: matching loss (running) and validation accuracy along the distillation:")
        for r in tracked:
            print(f"  iteration {r['iteration']:>5}: loss {float(r['running_loss']):.3f}, lr {float(r['lr']):.3g}, validation accuracy {float(r['val_accuracy']):.3f}")
    ev = evaluate_sets(EvaluateConfig(synthetic=[str(work / n) for n in sets], seeds=args.seeds, steps=args.steps, out=str(work / "table.csv")))
    print_eval(ev.rows, len(ev.classes))
    chance = 1 / len(ev.classes)
    full = next(r.mean for r in ev.rows if r.name == "full data")
    append_rows("trajectory", [{"benchmark": "trajectory", "group": "clinical", "name": r.name, "rows": r.rows, "accuracy_mean": round(r.mean, 4), "accuracy_std": round(r.std, 4),
                                "seeds": len(r.accuracies), "share_of_full_gain": round((r.mean - chance) / (full - chance), 4), "chosen": " | ".join(r.chosen), "seconds": round(r.seconds, 1),
                                "per_class": args.per_class, "note": r.note} for r in ev.rows])


def probe(mode: str, steps: int, work: Path, per_class: int) -> dict[str, Any]:
    """One outer step's meta-gradient, in this (fresh) process: peak memory above the level before it."""
    import torch

    from training.trajectory.config import TTMConfig
    from training.trajectory.distill import PeakMemory, initial_set
    from training.trajectory.experts import load_experts
    from training.trajectory.synthetic import SyntheticSet
    from training.trajectory.unroll import make_schedule, meta_gradient, problem_for

    experts = load_experts(work / "experts")
    init = initial_set(TTMConfig(experts=str(work / "experts"), out="-", per_class=per_class), experts)
    syn = SyntheticSet.create(init.embeds, torch.ones(init.embeds.shape[:2], dtype=torch.long), init.classes, len(experts.setup.names), "soft", experts.settings["learning_rate"])
    names = experts.settings["trained"]
    start, target = experts.checkpoint(0, 1), experts.checkpoint(0, 3)
    problem = problem_for(experts.setup.student(0), start, names)
    schedule = make_schedule(syn.embeds.shape[0], steps, syn.embeds.shape[0], torch.Generator().manual_seed(0))
    meta_gradient(problem, syn, start, target, schedule, mode)  # once first: the allocator's steady state, as in a long run

    memory = PeakMemory()
    memory.start()
    t0 = time.perf_counter()
    mg = meta_gradient(problem, syn, start, target, schedule, mode)
    seconds = time.perf_counter() - t0
    extra = memory.peak_mb()
    torch.save(mg.flat(), work / f"metagrad-{mode}-{steps}.pt")
    return {"mode": mode, "steps": steps, "peak_extra_mb": round(extra, 1), "peak_process_mb": round(memory.base + extra, 1), "seconds": round(seconds, 2), "loss": mg.loss}


def group_memory(args: argparse.Namespace, work: Path) -> None:
    import torch

    prepare(args, work)
    rows = []
    for steps in args.memory_steps:
        for mode in ("exact", "adjoint", "tesla"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_trajectory", "--probe", mode, str(steps), "--work", str(work), "--per-class", str(args.per_class)],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            exact = torch.load(work / f"metagrad-exact-{steps}.pt")
            row["cosine_to_exact"] = round(float(torch.nn.functional.cosine_similarity(torch.load(work / f"metagrad-{mode}-{steps}.pt").double(), exact.double(), dim=0)), 6)
            rows.append(row)
            print(row, flush=True)
    for mode in ("exact", "adjoint", "tesla"):
        peaks = [r["peak_extra_mb"] for r in rows if r["mode"] == mode]
        total = [r["peak_process_mb"] for r in rows if r["mode"] == mode]
        # The whole process's peak is the figure to judge by: the step above its level can reuse what the
        # warm-up call left with the allocator, so it understates growth (and can be <= 0).
        ratio = f"max/min {max(peaks) / min(peaks):.2f}" if min(peaks) >= 1 else "max/min undefined: a minimum under 1 MB"
        print(f"{mode}: the whole process's peak {min(total):.0f} .. {max(total):.0f} MB over {args.memory_steps} inner steps (max/min {max(total) / min(total):.3f}); "
              f"peak above the level before the step {min(peaks):.1f} .. {max(peaks):.1f} MB ({ratio})")
    print_table(rows)
    append_rows("trajectory", [{"benchmark": "trajectory", "group": "memory", "name": f"{r['mode']} {r['steps']} steps", **r, "per_class": args.per_class} for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_trajectory", description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", default="clinical,memory", help=f"comma-separated, from {', '.join(GROUPS)}")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--experts", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--expert-lr", type=float, default=0.05)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--steps", type=int, default=300, help="training steps of each evaluated student")
    p.add_argument("--memory-steps", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--work", default="~/.cache/atkd/bench_trajectory")
    p.add_argument("--probe", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work).expanduser()
    if args.probe:
        print(json.dumps(probe(args.probe[0], int(args.probe[1]), work, args.per_class)))
        return 0
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    if any(g not in GROUPS for g in groups):
        p.error(f"--groups takes {', '.join(GROUPS)}")
    for g in groups:
        {"clinical": group_clinical, "memory": group_memory}[g](args, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
