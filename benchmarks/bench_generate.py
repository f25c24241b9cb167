"""Generation + validation throughput: the batched path of the loop against a one-item-at-a-time loop.

    python benchmarks/bench_generate.py                         # SmolLM2 teacher, 16 items over 4 nodes
    python benchmarks/bench_generate.py --teacher vllm:PATH --items 64

Both paths use the same engine, prompts, seeds and settings (one generation round, acceptance "both"):
* batched: ``generate_items`` for the whole allocation (one engine call), then ``validate_items`` on all
  candidates (one solver call, one critic call);
* one at a time: for each requested item, ``generate_items`` for that item alone, then ``validate_items``
  on it alone: what a per-item agent loop does.
Reported per path: seconds, candidates, accepted, candidates/min and requested items/min; and the ratio
batched / one-at-a-time of requested items per minute. Rows go to benchmarks/results/generate.csv.
The tree is built from the domain's seed items; the nodes with the most seed items are the targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="smollm2", help="model spec (default: smollm2)")
    parser.add_argument("--domain", default="clinical", help="domain preset (default: clinical)")
    parser.add_argument("--items", type=int, default=16, help="items requested (default: 16)")
    parser.add_argument("--nodes", type=int, default=4, help="target nodes (default: 4)")
    parser.add_argument("--engine", default="auto", help="auto, transformers, vllm (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from benchmarks.harness import append_rows, print_table
    from data.domains import get_domain
    from engines import EngineConfig, load_engine
    from synth.generate import SynthConfig, generate_items
    from synth.targets import node_briefs, node_exemplars
    from synth.validate import ValidationConfig, validate_items
    from tree.build import build_tree

    domain = get_domain(args.domain)
    seeds, evals = domain.seed_items(), domain.eval_items()
    tree = build_tree(seeds, root=domain.root).tree
    counts = Counter(tree.node_of(i) for i in seeds)
    targets = [n for n, _ in counts.most_common(args.nodes)]
    allocation = {n: args.items // len(targets) + (i < args.items % len(targets)) for i, n in enumerate(targets)}
    briefs = node_briefs(tree, targets)
    exemplars = node_exemplars(tree, seeds, targets, 4, args.seed)
    synth = SynthConfig(rounds=1, seed=args.seed, domain=domain.root)
    vconfig = ValidationConfig(seed=args.seed, domain=domain.root)
    engine = load_engine(args.teacher, EngineConfig(engine=args.engine, progress=False))

    def run(allocations: list[dict[str, int]]) -> tuple[float, int, int]:
        t0 = time.perf_counter()
        candidates = accepted = 0
        for i, alloc in enumerate(allocations):
            # A request repeated alone would repeat its prompt: each single call samples with its own seed.
            config = replace(synth, seed=synth.seed + i)
            generated = generate_items(engine, alloc, briefs, exemplars, config, iteration=i)
            result = validate_items(generated.items, solver=engine, critic=engine, seed_pool=seeds, eval_items=evals, config=vconfig)
            candidates += len(generated.items)
            accepted += len(result.accepted)
        return time.perf_counter() - t0, candidates, accepted

    singles = [{node: 1} for node, count in allocation.items() for _ in range(count)]
    rows = []
    for path, allocations in (("batched", [allocation]), ("one_at_a_time", singles)):
        seconds, candidates, accepted = run(allocations)
        rows.append({
            "teacher": args.teacher, "engine": type(engine).__name__, "structured": getattr(engine, "enforces_json_schema", False),
            "path": path, "requested": args.items, "engine_rounds": len(allocations), "seconds": round(seconds, 1),
            "candidates": candidates, "accepted": accepted,
            "requested_per_min": round(60 * args.items / seconds, 2), "candidates_per_min": round(60 * candidates / seconds, 2),
        })
    engine.close()
    ratio = rows[0]["requested_per_min"] / rows[1]["requested_per_min"]
    for row in rows:
        row["batched_over_single"] = round(ratio, 2)
    print_table(rows)
    print(f"batched / one-at-a-time throughput (requested items per minute): {ratio:.2f}x")
    print(f"appended to {append_rows('generate', rows)}")


if __name__ == "__main__":
    main()
