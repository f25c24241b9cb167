"""Build the shipped clinical seed pool and eval set from the shared development data.

    python scripts/make_seed_data.py --src ../shared/data/clinical --out data/clinical

Deterministic (no random seed): items are ordered by sha256 of their id, near-identical questions are
grouped so that a group never straddles seed and eval, and no eval item shares a 13-gram with a seed
item. The dev split (model selection: the loop's acceptance gate) is carved out of the seed pool, the
last items of each source's share, so it is stratified over the sources (the tree's first leaves) and
disjoint from the seed pool the probe and replay come from; no dev question equals a seed question.
Only the source benchmarks' dev splits are used; their held-out splits stay unseen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

SOURCES = {  # source -> (seed items, eval items, dev items); short sources get more, very long ones fewer
    "mmlu": (160, 50, 24),
    "mmlu_pro": (100, 30, 15),
    "medqa": (120, 40, 18),
    "medmcqa": (160, 50, 24),
    "pubmedqa": (40, 15, 6),
    "medxpertqa": (60, 20, 9),
}


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def item_text(r: dict) -> str:
    return r["question"] + " " + " ".join(r["options"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    seed, evals = [], []
    seed_keys: set[str] = set()
    eval_keys: set[str] = set()
    dev: list[dict] = []
    seed_of: dict[str, list[dict]] = {}
    for source, (n_seed, n_eval, _) in SOURCES.items():
        rows = [json.loads(l) for l in open(args.src / f"{source}_dev.jsonl", encoding="utf-8") if l.strip()]
        rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        s, e = [], []
        for r in rows:
            key = norm(r["question"])
            # Same question as one already placed (mmlu_pro repeats mmlu): go to the same side or skip.
            if key in eval_keys:
                if len(e) < n_eval:
                    e.append(r)
                continue
            if key in seed_keys:
                if len(s) < n_seed:
                    s.append(r)
                continue
            if len(e) < n_eval:
                e.append(r)
                eval_keys.add(key)
            elif len(s) < n_seed:
                s.append(r)
                seed_keys.add(key)
            if len(s) >= n_seed and len(e) >= n_eval:
                break
        seed += s
        evals += e
        seed_of[source] = s

    # The dev split: the last n_dev seed items of each source whose question no other seed item repeats.
    repeats = Counter(norm(r["question"]) for r in seed)
    for source, (_, _, n_dev) in SOURCES.items():
        picked = [r for r in reversed(seed_of[source]) if repeats[norm(r["question"])] == 1][:n_dev]
        dev += picked[::-1]
    seed_grams: set[tuple[str, ...]] = set()
    for r in seed:  # seed and dev items alike
        seed_grams |= ngrams(item_text(r))
    dev_ids = {r["id"] for r in dev}
    seed = [r for r in seed if r["id"] not in dev_ids]
    clean_eval = [r for r in evals if not (ngrams(item_text(r)) & seed_grams)]
    dropped = len(evals) - len(clean_eval)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("seed.jsonl", seed), ("eval.jsonl", clean_eval), ("dev.jsonl", dev)):
        with open(args.out / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"seed: {len(seed)} items, dev: {len(dev)} items, eval: {len(clean_eval)} items "
          f"({dropped} eval items dropped for 13-gram overlap)")


if __name__ == "__main__":
    main()
