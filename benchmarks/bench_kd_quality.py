"""Does distillation work? CE-only vs KD (online teacher) vs KD (stored top-k logits), same seed and steps.

    python benchmarks/bench_kd_quality.py                      # smollm2 -> smollm2?layers=15 on CPU
    python benchmarks/bench_kd_quality.py --steps 40 --train-items 320 --eval-items 200

Training items and evaluation items are disjoint draws (fixed seed) from the clinical dev files. For each
run the student's token-level KL(teacher || student) and top-1 agreement with the teacher on the
evaluation items' completion tokens are measured before and after (``training.fidelity``); KD should
beat CE-only on both. The offline run first stores the teacher's top-k log-probs for the training items
and reports bytes/token. A row per run goes to benchmarks/results/kd_quality.csv.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "clinical"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="smollm2?layers=15", help="student spec (default smollm2?layers=15)")
    parser.add_argument("--teacher", default="smollm2", help="teacher spec (default smollm2)")
    parser.add_argument("--data", nargs="+", default=None, help=f"MCQ files (default {SHARED}/*_dev.jsonl)")
    parser.add_argument("--train-items", type=int, default=160, help="training items (default 160)")
    parser.add_argument("--eval-items", type=int, default=200, help="other items to measure on (default 200)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    parser.add_argument("--max-tokens", type=int, default=192,
                        help="use only items of at most this many tokens (prompt + answer; default 192, 0 = all): keeps CPU runs short")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="(default 5e-5)")
    parser.add_argument("--alpha", type=float, default=0.5, help="KD weight of the KD runs (default 0.5)")
    parser.add_argument("--temperature", type=float, default=2.0, help="KD temperature (default 2)")
    parser.add_argument("--k", type=int, default=32, help="stored top-k of the offline run (default 32)")
    parser.add_argument("--runs", default="ce,kd_online,kd_offline", help="comma list of ce, kd_online, kd_offline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for the trained students (default: a temporary one)")
    parser.add_argument("--no-csv", action="store_true")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from benchmarks.harness import append_rows, print_table
    from engines import load_engine
    from training.distill import distill, distill_config, resolve_model_path
    from training.fidelity import teacher_fidelity, teacher_targets
    from training.mcq_data import read_training_items, tokenize_item
    from training.teacher_logits import extract_teacher_logits

    files = args.data or sorted(str(p) for p in SHARED.glob("*_dev.jsonl"))
    items = read_training_items(files)
    random.Random(args.seed).shuffle(items)
    student, teacher = resolve_model_path(args.student), resolve_model_path(args.teacher)
    tokenizer = AutoTokenizer.from_pretrained(student)
    if args.max_tokens:
        items = [item for item in items if len(tokenize_item(item, tokenizer)["input_ids"]) <= args.max_tokens]
    if len(items) < args.train_items + args.eval_items:
        parser.error(f"{len(items)} items (of at most --max-tokens), fewer than --train-items + --eval-items")
    train, held_out = items[: args.train_items], items[args.train_items : args.train_items + args.eval_items]
    out = Path(args.out or tempfile.mkdtemp(prefix="kd_quality_"))
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    targets = teacher_targets(teacher, held_out, tokenizer)  # the teacher's side, once for every run
    before = teacher_fidelity(student, targets)
    print(f"before: KL {before.kl:.4f}, top-1 agreement {before.top1_agreement:.4f} on {before.tokens} tokens "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    common = dict(max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
                  seed=args.seed, data_seed=args.seed, temperature=args.temperature, disable_tqdm=False)
    rows = []
    for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
        extra: dict = {}
        bytes_per_token = None
        if run == "ce":
            config = distill_config(str(out / run), alpha=0.0, **common)
        elif run == "kd_online":
            config = distill_config(str(out / run), alpha=args.alpha, top_k=0, **common)  # the full distribution
            extra["teacher_path"] = teacher
        elif run == "kd_offline":
            t1 = time.perf_counter()
            engine = load_engine(args.teacher, "transformers")
            stats = extract_teacher_logits(engine, train, out / "logits", args.k)
            engine.close()
            bytes_per_token = stats["bytes_per_token"]
            print(f"stored top-{args.k} logits: {stats['tokens']} tokens, {bytes_per_token} bytes/token "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
            config = distill_config(str(out / run), alpha=args.alpha, top_k=args.k, **common)
            extra["logits_dir"] = out / "logits"
        else:
            parser.error(f"unknown run {run!r}")
        metrics = distill(student, train, out / run, config, **extra)
        after = teacher_fidelity(out / run, targets)
        row = {
            "run": run, "student": args.student, "teacher": args.teacher, "train_items": len(train),
            "eval_items": len(held_out), "eval_tokens": after.tokens, "steps": metrics["steps"],
            "alpha": config.alpha, "T": config.temperature, "top_k": config.top_k if run != "ce" else "",
            "train_s": round(metrics["train_time"], 1),
            "kl_before": round(before.kl, 4), "kl_after": round(after.kl, 4),
            "top1_before": round(before.top1_agreement, 4), "top1_after": round(after.top1_agreement, 4),
            "nll_before": round(before.student_nll, 4), "nll_after": round(after.student_nll, 4),
            "teacher_nll": round(after.teacher_nll, 4), "bytes_per_token": bytes_per_token or "",
        }
        print({k: row[k] for k in ("run", "steps", "train_s", "kl_after", "top1_after", "nll_after")}, flush=True)
        rows.append(row)
    print_table(rows)
    if not args.no_csv:
        print(f"rows appended to {append_rows('kd_quality', rows)}")
    print(f"students in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
