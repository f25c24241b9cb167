"""A controlled experiment whose answer is known: does multi-teacher KV distillation route to, and learn
from, the teacher that knows the task?

    python benchmarks/bench_multiteacher.py                    # 5 seeds, every method, ~CPU minutes
    python benchmarks/bench_multiteacher.py --seeds 0 1 --methods ce fixed learned --student-steps 150

Two tasks with a known answer: ``reverse`` (space-separated letters, reversed) and ``sort`` (a run of
digits, sorted); the teachers learn strings of 3 to 6, the student's items have 3 to --max-len. Two teachers with different tokenizers and shapes are each trained to competence on one
task only: a character-level decoder (its own WordLevel tokenizer, no chat template; 3 layers, 4 K/V
heads) for ``reverse`` and a SmolLM2-tokenizer decoder (its chat template; 2 layers, 2 K/V heads) for
``sort``. A student (SmolLM2 tokenizer, 2 layers) sees a small mixed training set of both tasks. For each
seed and method the same student initialisation and data order are trained for the same steps with CE
on the answer plus, except for ``ce``, the KV objective (``KDTrainer`` with ``kv_teachers``):

    ce        CE only                       kv_reverse / kv_sort   KV from one teacher
    fixed     both, 0.5 / 0.5               similarity   routing to teacher prototypes
    mince     FuseLLM MinCE per sequence    domain       hard routing by the item's task tag (an oracle)
    learned   learned router trained end to end by the fused KV loss + "diverse" entropy term (0.1)
    learned_balanced   the same with the entropy term at 1.0
    learned_ce   learned router trained to predict softmax(-CE per character) of the teachers
    learned_ce_sharp   the same with softmax(-CE / 0.1): sharper targets
    learned_ce_attention   learned_ce with an attention-pooling router instead of a mean-pooling MLP

Reported, mean ± std over seeds: held-out exact match per task (greedy decoding), and the routing weight
on the matching teacher per task (over the held-out items' tokens). The teachers' own exact match is
printed first. Rows go to benchmarks/results/multiteacher.csv.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TASKS = ("reverse", "sort")
METHODS = ("ce", "kv_reverse", "kv_sort", "fixed", "similarity", "mince", "domain", "learned", "learned_balanced",
           "learned_ce", "learned_ce_sharp", "learned_ce_attention")
LETTERS = "abcdefghijklmnop"


def make_examples(task: str, n: int, rng: random.Random, lo: int = 3, hi: int = 6) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        if task == "reverse":
            xs = [rng.choice(LETTERS) for _ in range(k)]
            prompt, answer = "reverse: " + " ".join(xs), " ".join(reversed(xs))
        else:
            xs = [rng.choice("0123456789") for _ in range(k)]
            prompt, answer = "sort: " + "".join(xs), "".join(sorted(xs))
        out.append({"task": task, "prompt": prompt, "answer": answer,
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    for i, ex in enumerate(out):
        ex["id"] = f"{task}-{rng.random():.12f}-{i}"
    return out


def char_tokenizer(folder: Path):
    """A character-level fast tokenizer (offsets per character) with <bos> ... <eos> around every text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(LETTERS + "0123456789" + " :\nabcdefghijklmnopqrstuvwxyz"))
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters back to text without spaces between them
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def char_rows(examples, tokenizer) -> list[dict[str, Any]]:
    """The char teacher reads what KVTeacher.view gives an encoder-less, template-less decoder:
    the contents joined by newlines between its <bos> and <eos>; the loss covers the answer and <eos>."""
    rows = []
    for ex in examples:
        ids = tokenizer(ex["prompt"] + "\n" + ex["answer"])["input_ids"]
        start = 1 + len(ex["prompt"]) + 1  # <bos>, the prompt's characters, the newline
        rows.append({"id": ex["id"], "input_ids": ids, "labels": [-100] * start + ids[start:]})
    return rows


def chat_rows(examples, tokenizer) -> list[dict[str, Any]]:
    from training.mcq_data import tokenize_conversation

    return [tokenize_conversation(ex["id"], ex["messages"], tokenizer) for ex in examples]


def tiny_llama(tokenizer, out: Path, *, hidden: int, layers: int, heads: int, kv_heads: int, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train(model_dir: Path, tokenizer, rows, out: Path, *, steps: int, lr: float, batch: int, seed: int,
          kv: dict[str, Any] | None = None, conversations=None, tags=None):
    """KDTrainer with CE on the answer (alpha 0), plus the KV objective when ``kv`` names teachers."""
    from datasets import Dataset

    from training import KDConfig, KDTrainer

    config = KDConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=min(20, steps // 10), logging_steps=max(1, steps // 10),
        report_to="none", save_strategy="no", alpha=0.0, seed=seed, data_seed=seed, disable_tqdm=True, **(kv or {}),
    )
    trainer = KDTrainer(str(model_dir), args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                        kv_conversations=conversations, kv_tags=tags)
    trainer.train()
    return trainer


def exact_match(model, tokenizer, examples, *, chat: bool, batch: int = 64) -> float:
    """Greedy decoding; an answer counts when the decoded completion equals it exactly (stripped)."""
    import torch

    model.eval()
    tokenizer.padding_side = "left"
    hits = 0
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        if chat:
            texts = [tokenizer.apply_chat_template(ex["messages"][:1], tokenize=False, add_generation_prompt=True) for ex in chunk]
            enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
        else:
            texts = [ex["prompt"] + "\n" for ex in chunk]
            ids = [tokenizer(t)["input_ids"][:-1] for t in texts]  # drop the <eos> the template appends
            width = max(map(len, ids))
            enc = {
                "input_ids": torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids]),
                "attention_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids]),
            }
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        for ex, row in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
            hits += tokenizer.decode(row, skip_special_tokens=True).strip() == ex["answer"]
    tokenizer.padding_side = "right"
    return hits / len(examples)


def routing_on(trainer, examples, tokenizer) -> dict[str, list[float]] | None:
    """Mean routing weight per teacher on each task's held-out tokens: ``{task: [w_reverse, w_sort]}``."""
    import torch

    from training.mcq_data import tokenize_conversation

    objective = next((o for o in trainer.objectives if o.name == "kv"), None)
    if objective is None or len(objective.active) < 2:
        return None
    out = {}
    collator = trainer.data_collator
    collator.conversations = {**(collator.conversations or {}), **{ex["id"]: ex["messages"] for ex in examples}}
    if collator.tags is not None:
        collator.tags = {**collator.tags, **{ex["id"]: ex["task"] for ex in examples}}
    trainer.model.eval()
    for task in TASKS:
        chunk = [ex for ex in examples if ex["task"] == task][:64]
        batch = collator([tokenize_conversation(ex["id"], ex["messages"], tokenizer) for ex in chunk])
        with torch.no_grad():
            trainer.compute_loss(trainer.model, {k: v.to(trainer.args.device) for k, v in batch.items()})
        out[task] = [objective.history[-1][name] for name in objective.teacher_names]
        objective.history.pop()
    return out


def method_settings(method: str, teachers: dict[str, str]) -> dict[str, Any]:
    both = [teachers["reverse"], teachers["sort"]]
    common = {"kv_beta": 0.5}
    return {
        "ce": {},
        "kv_reverse": {"kv_teachers": [teachers["reverse"]], **common},
        "kv_sort": {"kv_teachers": [teachers["sort"]], **common},
        "fixed": {"kv_teachers": both, "kv_fusion": "fixed", "kv_weights": [0.5, 0.5], **common},
        "similarity": {"kv_teachers": both, "kv_fusion": "similarity", **common},
        "mince": {"kv_teachers": both, "kv_fusion": "mince", **common},
        "domain": {"kv_teachers": both, "kv_fusion": "domain", "kv_teacher_domains": ["reverse", "sort"], **common},
        "learned": {"kv_teachers": both, "kv_fusion": "learnable", "kv_router": "mlp", "kv_granularity": "sequence",
                    "kv_entropy": "diverse", "kv_entropy_weight": 0.1, **common},
        "learned_balanced": {"kv_teachers": both, "kv_fusion": "learnable", "kv_router": "mlp",
                             "kv_granularity": "sequence", "kv_entropy": "diverse", "kv_entropy_weight": 1.0, **common},
        "learned_ce": {"kv_teachers": both, "kv_fusion": "learnable", "kv_router": "mlp", "kv_granularity": "sequence",
                       "kv_router_target": "teacher_ce", **common},
        "learned_ce_attention": {"kv_teachers": both, "kv_fusion": "learnable", "kv_router": "attention",
                                 "kv_granularity": "sequence", "kv_router_target": "teacher_ce", **common},
        "learned_ce_sharp": {"kv_teachers": both, "kv_fusion": "learnable", "kv_router": "mlp", "kv_granularity": "sequence",
                             "kv_router_target": "teacher_ce", "kv_ce_temperature": 0.1, **common},
    }[method]


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="student seeds (default 0..4)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run (default all)")
    parser.add_argument("--teacher-steps", type=int, default=1500, help="optimizer steps per teacher (default 1500)")
    parser.add_argument("--teacher-examples", type=int, default=6000, help="training examples per teacher (default 6000)")
    parser.add_argument("--student-examples", type=int, default=128, help="student training examples per task (default 128)")
    parser.add_argument("--student-steps", type=int, default=300, help="optimizer steps per student run (default 300)")
    parser.add_argument("--eval-examples", type=int, default=200, help="held-out examples per task (default 200)")
    parser.add_argument("--max-len", type=int, default=4,
                        help="longest string of the student's training and held-out items, 3..6 (default 4; the teachers "
                        "learn 3..6)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    parser.add_argument("--teacher-lr", type=float, default=3e-3, help="(default 3e-3)")
    parser.add_argument("--student-lr", type=float, default=3e-3, help="(default 3e-3)")
    parser.add_argument("--work", default=None, help="folder for the teachers (kept and reused across runs); default a temp dir")
    parser.add_argument("--no-csv", action="store_true", help="do not append to benchmarks/results/multiteacher.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.harness import append_rows, print_table
    from engines.smollm2 import converted_path

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_multiteacher."))
    work.mkdir(parents=True, exist_ok=True)
    data_rng = random.Random(1234)
    hi = args.max_len
    eval_set = make_examples("reverse", args.eval_examples, data_rng, hi=hi) + make_examples("sort", args.eval_examples, data_rng, hi=hi)
    smol_tok = AutoTokenizer.from_pretrained(converted_path())

    # --- teachers, each competent on one task (trained once; reused from --work when present)
    teachers, teacher_em = {}, {}
    t0 = time.perf_counter()
    for task in TASKS:
        folder = work / f"teacher-{task}"
        final = work / f"{task}-teacher"  # its folder name is the teacher's name in logs and tables
        done = final / "config.json"
        chat = task == "sort"
        if not done.is_file():
            tok = smol_tok if chat else char_tokenizer(work / "char-tokenizer")
            init = tiny_llama(tok, folder / "init", hidden=64, layers=2 if chat else 3, heads=4, kv_heads=2 if chat else 4, seed=100)
            examples = make_examples(task, args.teacher_examples, random.Random(7 if chat else 8))
            rows = chat_rows(examples, tok) if chat else char_rows(examples, tok)
            trainer = train(init, tok, rows, folder / "run", steps=args.teacher_steps, lr=args.teacher_lr, batch=args.batch_size, seed=0)
            trainer.save_model(str(final))
        teachers[task] = str(final)
        tok = AutoTokenizer.from_pretrained(teachers[task])
        model = AutoModelForCausalLM.from_pretrained(teachers[task])
        teacher_em[task] = {t: exact_match(model, tok, [e for e in eval_set if e["task"] == t], chat=chat) for t in TASKS}
    print(f"teachers ready in {time.perf_counter() - t0:.0f} s; exact match on held-out items:")
    for task in TASKS:
        print(f"  {task} teacher: " + ", ".join(f"{t} {teacher_em[task][t]:.3f}" for t in TASKS))

    # --- students
    student_rng = random.Random(99)
    train_set = (make_examples("reverse", args.student_examples, student_rng, hi=hi)
                 + make_examples("sort", args.student_examples, student_rng, hi=hi))
    rows = chat_rows(train_set, smol_tok)
    conversations = {ex["id"]: ex["messages"] for ex in train_set}
    tags = {ex["id"]: ex["task"] for ex in train_set}
    results: list[dict[str, Any]] = []
    for seed in args.seeds:
        init = tiny_llama(smol_tok, work / f"student-init-{seed}", hidden=64, layers=2, heads=4, kv_heads=2, seed=seed)
        for method in args.methods:
            t1 = time.perf_counter()
            trainer = train(init, smol_tok, rows, work / f"run-{method}-{seed}", steps=args.student_steps, lr=args.student_lr,
                            batch=args.batch_size, seed=seed, kv=method_settings(method, teachers),
                            conversations=conversations, tags=tags)
            em = {t: exact_match(trainer.model, smol_tok, [e for e in eval_set if e["task"] == t], chat=True) for t in TASKS}
            routing = routing_on(trainer, eval_set, smol_tok)
            row = {"method": method, "seed": seed, "em_reverse": em["reverse"], "em_sort": em["sort"],
                   "w_match_reverse": routing["reverse"][0] if routing else None,
                   "w_match_sort": routing["sort"][1] if routing else None,
                   "seconds": round(time.perf_counter() - t1, 1)}
            results.append(row)
            print(json.dumps(row))
            del trainer

    table = []
    for method in args.methods:
        mine = [r for r in results if r["method"] == method]
        table.append({
            "method": method,
            "EM reverse": mean_std([r["em_reverse"] for r in mine]),
            "EM sort": mean_std([r["em_sort"] for r in mine]),
            "w on matching teacher, reverse": mean_std([r["w_match_reverse"] for r in mine if r["w_match_reverse"] is not None]),
            "w on matching teacher, sort": mean_std([r["w_match_sort"] for r in mine if r["w_match_sort"] is not None]),
        })
    print_table(table)
    # Paired over seeds: each learned router against fixed fusion and CE only, per task.
    by = {(r["method"], r["seed"]): r for r in results}
    for learned in ("learned", "learned_balanced", "learned_ce", "learned_ce_sharp", "learned_ce_attention"):
        for other in ("fixed", "ce"):
            if learned in args.methods and other in args.methods:
                for task in TASKS:
                    diffs = [by[(learned, s)][f"em_{task}"] - by[(other, s)][f"em_{task}"] for s in args.seeds]
                    print(f"{learned} - {other}, {task}: {mean_std(diffs)} (paired over {len(diffs)} seeds; "
                          f"{sum(d > 0 for d in diffs)} better, {sum(d < 0 for d in diffs)} worse)")
    if not args.no_csv:
        path = append_rows("multiteacher", [
            {**r, "teacher_em_reverse": teacher_em["reverse"]["reverse"], "teacher_em_sort": teacher_em["sort"]["sort"],
             "student_steps": args.student_steps, "student_examples": args.student_examples} for r in results
        ])
        print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
