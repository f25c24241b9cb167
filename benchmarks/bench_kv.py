"""The cost of KV-cache distillation: one training step with 0, 1, 2, 3 online KV teachers and with stored
K/V, beside a CE-only step and a logit-KD step on the same batch.

    python benchmarks/bench_kv.py                       # CPU: 2 clinical MCQs per step, fp32
    python benchmarks/bench_kv.py --batch 8 --steps 6   # GPU (bf16)

Student: the SmolLM2-135M architecture (30 layers, 3 K/V heads x 64), random weights. KV teachers, in
this order, random weights and each with its own tokenizer: the SmolLM2-360M architecture (32 layers, 5 K/V
heads x 64), a second SmolLM2-135M-architecture decoder, and the all-MiniLM-L6-v2 architecture (a BERT
encoder, 6 layers, 12 heads x 32, WordPiece). Variants, each in its own process so that its peak memory
is its own:

    ce        KDTrainer with alpha 0 and no teacher (the floor)
    kd        logit KD from an online teacher (the 360M decoder), alpha 0.5
    kv1..kv3  CE + the KV objective with the first 1, 2 or 3 teachers online (fixed equal weights)
    kv2_stored  the same as kv2 from K/V stored by training.kv.store (no teacher in memory)

The batch is the first --batch clinical MCQs (their own lengths, padded). Time is the median of --steps
steps after a warm-up step (training_step + optimizer step); memory is the peak over them (CUDA max
allocated, or the process's VmHWM on CPU). Printed: each variant, and per added teacher the step-time and
peak-memory overhead. Rows go to benchmarks/results/kv.csv.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("ce", "kd", "kv1", "kv2", "kv3", "kv2_stored")
SHARED = ROOT.parent / "shared" / "data" / "clinical" / "mmlu_dev.jsonl"


def _teachers(device, dtype):
    """The three KV teachers as in-memory KVTeacher objects (random weights)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaForCausalLM

    from benchmarks.bench_kd import _configs
    from engines import parse_spec
    from engines.smollm2 import converted_path
    from training.kv.models import attention_layout
    from training.kv.teachers import KVTeacher

    smol = AutoTokenizer.from_pretrained(converted_path())
    student_cfg, big_cfg = _configs(len(smol))
    minilm_tok = AutoTokenizer.from_pretrained(parse_spec("minilm").local_path())
    torch.manual_seed(1)
    models = [
        ("smollm2-360m-arch", LlamaForCausalLM(big_cfg).model, smol, None),
        ("smollm2-135m-arch", LlamaForCausalLM(student_cfg).model, smol, None),
        ("minilm-arch", BertModel(BertConfig(vocab_size=len(minilm_tok), hidden_size=384, num_hidden_layers=6,
                                             num_attention_heads=12, intermediate_size=1536,
                                             max_position_embeddings=512)), minilm_tok, 512),
    ]
    out = []
    for name, model, tok, max_length in models:
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        out.append(KVTeacher(spec=name, path="", model=model, tokenizer=tok, layout=attention_layout(model), max_length=max_length))
    return out


def run_variant(args) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM

    from benchmarks.bench_kd import _configs, measure_steps
    from engines.smollm2 import converted_path
    from training import KDConfig, KDTrainer
    from training.mcq_data import mcq_conversation, read_training_items, tokenize_item

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(converted_path())
    student_cfg, _ = _configs(len(tokenizer))
    items = read_training_items([args.data])[: args.batch]
    rows = [tokenize_item(item, tokenizer) for item in items]
    conversations = {item.id: mcq_conversation(item) for item in items}
    variant = args.variant
    n_teachers = {"kv1": 1, "kv2": 2, "kv3": 3, "kv2_stored": 2}.get(variant, 0)
    teachers = _teachers(device, dtype)[: max(n_teachers, 1)] if variant != "ce" else []
    torch.manual_seed(0)
    student = LlamaForCausalLM(student_cfg).to(device=device, dtype=dtype)
    work = Path(tempfile.mkdtemp(prefix="bench_kv_"))
    kv: dict[str, Any] = {}
    teacher_model = None
    if variant == "kd":
        teacher_model = LlamaForCausalLM(_configs(len(tokenizer))[1]).to(device=device, dtype=dtype).eval()
    elif variant == "kv2_stored":
        from training.kv.align import layer_map, teacher_layers_used
        from training.kv.store import extract_teacher_kv

        layers = [teacher_layers_used(layer_map("ratio", student_cfg.num_hidden_layers, t.layout.num_layers)) for t in teachers]
        stats = extract_teacher_kv(teachers, list(conversations.items()), layers, work / "kv", progress=False)
        kv = {"kv_dir": str(work / "kv")}
        del teachers
        gc.collect()  # the stored run keeps no teacher: free them before its memory is measured
        teachers = None
    elif n_teachers:
        kv = {"kv_beta": 0.5}
    config = KDConfig(
        output_dir=str(work / "out"), report_to="none", per_device_train_batch_size=args.batch, max_steps=10,
        bf16=device == "cuda", gradient_checkpointing=False, learning_rate=1e-5, disable_tqdm=True,
        use_cpu=device == "cpu", alpha=0.5 if variant == "kd" else 0.0, **kv,
    )
    trainer = KDTrainer(student, args=config, teacher_model=teacher_model, train_dataset=Dataset.from_list(rows),
                        processing_class=tokenizer, kv_teachers=teachers or None, kv_conversations=conversations)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    num_items = int((batch["labels"][:, 1:] != -100).sum())
    trainer.create_optimizer()
    model, optimizer = trainer.model, trainer.optimizer
    model.train()

    def step():
        loss = trainer.training_step(model, dict(batch), num_items_in_batch=torch.tensor(num_items, device=device))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    first, times, peak, rss_before = measure_steps(step, device, args.steps)
    out = {"variant": variant, "teachers": n_teachers, "step_ms": statistics.median(times) * 1000,
           "peak_mib": peak, "step_mib": peak - rss_before, "first_loss": first,
           "batch": args.batch, "seq_len": int(batch["input_ids"].shape[1])}
    if variant == "kv2_stored":
        out["stored_bytes_per_token"] = stats["bytes_per_token"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--batch", type=int, default=2, help="MCQs per step (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument("--data", default=str(SHARED), help=f"MCQ JSONL (default {SHARED})")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # run one variant in this process (internal)
    parser.add_argument("--no-csv", action="store_true", help="do not append to benchmarks/results/kv.csv")
    args = parser.parse_args(argv)
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args)))
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {}
    for variant in variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(args.batch), "--steps", str(args.steps),
               "--data", args.data]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            print(f"error: variant {variant} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        results[variant] = json.loads(line[len("RESULT "):])
        print(json.dumps(results[variant]))
    from benchmarks.harness import append_rows, print_table

    ce = results.get("ce")
    rows = []
    for variant, r in results.items():
        row = {"variant": variant, "step ms": r["step_ms"], "peak MiB": r["peak_mib"]}
        if ce:
            row["time / ce"] = f"{r['step_ms'] / ce['step_ms']:.2f}"
            row["peak - ce MiB"] = r["peak_mib"] - ce["peak_mib"]
        rows.append(row)
    print_table(rows)
    chain = [v for v in ("ce", "kv1", "kv2", "kv3") if v in results]
    for a, b in zip(chain, chain[1:]):
        print(f"teacher added ({a} -> {b}): +{results[b]['step_ms'] - results[a]['step_ms']:.0f} ms per step, "
              f"+{results[b]['peak_mib'] - results[a]['peak_mib']:.0f} MiB peak")
    if "kv2" in results and "kv2_stored" in results:
        print(f"stored K/V instead of 2 online teachers: {results['kv2_stored']['step_ms']:.0f} vs "
              f"{results['kv2']['step_ms']:.0f} ms, {results['kv2_stored']['peak_mib']:.0f} vs "
              f"{results['kv2']['peak_mib']:.0f} MiB peak, {results['kv2_stored']['stored_bytes_per_token']} bytes "
              "per stored teacher token")
    if not args.no_csv:
        print(f"rows appended to {append_rows('kv', list(results.values()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
