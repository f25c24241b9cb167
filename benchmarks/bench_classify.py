"""How well and how fast a teacher places items into the ability tree (tree.classify), measured on items
whose true node is known.

    python benchmarks/bench_classify.py                      # SmolLM2, 140 held-out MMLU / MMLU-Pro items
    python benchmarks/bench_classify.py --teacher hf:PATH --held-out 300

The tree is built from the ability paths of ../shared/data/clinical/mmlu_dev.jsonl and mmlu_pro_dev.jsonl;
``--held-out`` of those items (a seeded sample) lose their path and are classified, with and without
the letter calibration. Reported: exact-node accuracy, accuracy of the first level, the share of the
most chosen node (a collapsed classifier puts everything in one node), chance (1 / first-level
choices, "none of these" included) and items/s. Rows go to benchmarks/results/classify.csv.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinical"


def _first_level(node: str) -> str:
    return "/".join(node.split("/")[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="smollm2")
    parser.add_argument("--held-out", type=int, default=140)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / "mmlu_dev.jsonl", SHARED / "mmlu_pro_dev.jsonl"])
    args = parser.parse_args()

    from benchmarks.harness import append_rows, print_table, timed
    from data.records import read_items
    from engines import load_engine
    from tree import AbilityTree
    from tree.classify import ClassifyConfig, classify_items

    items = read_items(args.data)
    held = random.Random(args.seed).sample(items, args.held_out)
    tree = AbilityTree.from_items(items)
    truth = {i.id: tree.node_of(i) for i in held}
    hidden = [i.model_copy(update={"ability_path": None}) for i in held]
    engine = load_engine(args.teacher, progress=False)
    first = len(tree.children(tree.root))
    rows = []
    for calibrate in (False, True):
        config = ClassifyConfig(calibrate=calibrate)
        seconds, result = timed(lambda config=config: classify_items(engine, tree, hidden, config))
        placed = result.nodes
        exact = sum(placed[i] == truth[i] for i in truth) / len(truth)
        level1 = sum(_first_level(placed[i]) == _first_level(truth[i]) for i in truth) / len(truth)
        node, count = Counter(placed.values()).most_common(1)[0]
        rows.append({"teacher": args.teacher, "items": len(hidden), "calibrate": calibrate,
                     "exact_acc_pct": 100 * exact, "level1_acc_pct": 100 * level1, "chance_level1_pct": 100 / (first + 1),
                     "top_node_share_pct": 100 * count / len(hidden), "top_node": node.rsplit("/", 1)[-1],
                     "items_per_s": round(len(hidden) / seconds, 2), "calls": result.calls})
    engine.close()
    print_table(rows)
    print(f"appended to {append_rows('classify', rows)}")


if __name__ == "__main__":
    main()
