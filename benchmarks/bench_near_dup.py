"""Calibrate the embedding near-duplicate gate on real SmolLM2 exemplar copies.

    python -m benchmarks.bench_near_dup [--encoder minilm|st:<folder>] [--threshold 0.9]

Every generate record of tests/fixtures/smollm2_outputs (SmolLM2-135M-Instruct answering the loop's
generate prompt, one seed exemplar shown) is parsed strictly; each generated item is compared with the
exemplar its prompt showed, by ROUGE-L (the default gate, >= 0.7) and by the encoder's cosine
(synth.dedup.embedding_text). The embedding gate must catch every copy ROUGE-L catches: the highest
threshold that does is the smallest copy cosine. The false-positive rate is measured on all pairs of
distinct items of the clinical seed pool (data/clinical/seed.jsonl), where no pair is a copy, for the
chosen threshold and a few around it, with ROUGE-L's own rate on the same pairs beside it.
Rows go to benchmarks/results/near_dup.csv.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from benchmarks.harness import append_rows, print_table
from data.records import MCQItem, read_items, read_jsonl
from prompts.parse import MCQDraft, parse_completion
from synth.dedup import embedding_text, rouge_l, similarity_tokens, unit_rows

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "smollm2_outputs"
SEED_POOL = ROOT / "data" / "clinical" / "seed.jsonl"


def exemplar_copies() -> list[tuple[str, MCQItem, MCQItem]]:
    """(record id, generated item, the exemplar shown) for every strictly parseable generate record."""
    out = []
    for file in ("outputs.jsonl", "outputs_draft_prompt.jsonl"):
        for r in read_jsonl(FIXTURES / file):
            user = r["messages"][0]["content"]
            if r.get("kind", "generate") != "generate" or "Example:" not in user:
                continue
            parsed = parse_completion(r["completion"], MCQDraft, r.get("prefill", ""))
            if parsed.value is None:
                continue
            body = user[user.index("Example:") + len("Example:") :]
            end = min(i for i in (body.find("\n\nNow write"), body.find("\nNow write"), len(body)) if i >= 0)
            try:
                ex = json.loads(body[:end])
            except json.JSONDecodeError:
                continue
            d = parsed.value
            out.append((r["id"], MCQItem(id="generated", question=d.question, options=d.options, answer_idx=d.answer_idx),
                        MCQItem(id="exemplar", question=ex["question"], options=ex["options"], answer_idx=ex["answer_idx"])))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_near_dup", description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="minilm", help="sentence encoder spec or folder (default minilm)")
    p.add_argument("--threshold", type=float, default=None, help="threshold to report (default: the largest that catches every ROUGE-L copy, floored to 0.01)")
    p.add_argument("--rouge", type=float, default=0.7, help="ROUGE-L threshold of the default gate (0.7)")
    args = p.parse_args(argv)

    from synth.validate import encoder_embed

    embed = encoder_embed(args.encoder)
    pairs = exemplar_copies()
    gen = unit_rows(embed([embedding_text(g.question, g.options) for _, g, _ in pairs]))
    ex = unit_rows(embed([embedding_text(e.question, e.options) for _, _, e in pairs]))
    cos = (gen * ex).sum(1)
    rouge = np.array([rouge_l(similarity_tokens(g.question, g.options), similarity_tokens(e.question, e.options)) for _, g, e in pairs])
    copies = rouge >= args.rouge
    print(f"{len(pairs)} parsed generations; ROUGE-L >= {args.rouge} marks {int(copies.sum())} as copies of their exemplar")
    if not copies.any():
        print("no ROUGE-L copy among the fixtures: nothing to calibrate on")
        return 1
    min_copy = float(cos[copies].min())
    threshold = args.threshold if args.threshold is not None else math.floor(min_copy * 100) / 100
    caught = int((cos[copies] >= threshold).sum())

    seeds = read_items([SEED_POOL])
    sv = unit_rows(embed([embedding_text(s.question, s.options) for s in seeds]))
    sim = sv @ sv.T
    iu = np.triu_indices(len(seeds), k=1)
    pair_cos = sim[iu]
    tokens = [similarity_tokens(s.question, s.options) for s in seeds]
    rouge_fp = sum(rouge_l(tokens[i], tokens[j]) >= args.rouge for i, j in zip(*iu))
    n_pairs = len(pair_cos)

    rows = []
    for t in sorted({threshold, 0.8, 0.85, 0.9, 0.95, round(min_copy - 0.05, 2)}):
        rows.append({"benchmark": "near_dup", "encoder": args.encoder, "threshold": t,
                     "rouge_copies": int(copies.sum()), "copies_caught": int((cos[copies] >= t).sum()),
                     "other_generations_flagged": int((cos[~copies] >= t).sum()), "other_generations": int((~copies).sum()),
                     "seed_pairs": n_pairs, "false_positive_pairs": int((pair_cos >= t).sum()),
                     "false_positive_rate": round(float((pair_cos >= t).mean()), 6),
                     "rouge_false_positive_rate": round(rouge_fp / n_pairs, 6), "chosen": t == threshold})
    print_table(rows)
    print(f"copy cosines: min {min_copy:.4f}, median {float(np.median(cos[copies])):.4f}; non-copy generations: "
          f"min {float(cos[~copies].min()) if (~copies).any() else float('nan'):.4f}")
    print(f"threshold {threshold:.2f}: catches {caught}/{int(copies.sum())} ROUGE-L copies; false-positive rate on "
          f"{n_pairs} distinct seed pairs {float((pair_cos >= threshold).mean()):.5f} "
          f"({int((pair_cos >= threshold).sum())} pairs); ROUGE-L's own: {rouge_fp / n_pairs:.5f} ({rouge_fp} pairs)")
    print(f"rows appended to {append_rows('near_dup', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
