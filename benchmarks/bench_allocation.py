"""Does data aimed at the student's weak skills teach more than the same amount spread evenly?

    python -m scratch build                                  # once: the arithmetic teacher and student
    python benchmarks/bench_allocation.py                    # 5 seeds x (weakness, uniform, replay only), 2 iterations
    python benchmarks/bench_allocation.py --seeds 0,1,2 --iterations 1 --out runs/alloc-quick

The loop runs on the arithmetic domain (``--domain arithmetic``, its own teacher and student), with the
same budget, replay and seeds in every arm; only the allocation of the generation budget differs:
``weakness`` (the loop's default: the nodes of largest expected shortfall), ``uniform`` (every node
alike) and ``replay`` (no generation at all, the student trains on the replayed seed items only: the
floor). Each run is a separate ``python -m agents.loop`` process with its own run directory under
``--out``; a finished run is read again, not rerun (a partial one is resumed), so an interrupted
benchmark continues where it stopped.

Reported per arm and iteration, as mean ± std over seeds: the student's held-out accuracy on the whole
eval pool and on the nodes that were weakest at the start (the bottom quartile of leaves by the
initial student's eval accuracy, the same for every run since every run starts from the same student),
the acceptance rate of the generated items and what rejected the others, how many accepted items have
a right key by the domain's own arithmetic (``data.arithmetic.answer_key``: the loop's solver and critic
are the teacher itself, so its mistakes pass them) and the seconds per stage. Then the paired difference
of the arms per seed (weakness − uniform, and each against replay) at every iteration, with its 95%
t-interval, the paired t-test p-value and the exact sign-flip p-value, and the child nodes the
teacher's diagnoses grew. Rows go to benchmarks/results/allocation.csv, one per run and iteration, with
the teacher's and the student's own eval accuracy from their ``build_info.json`` (which models ran).
Whatever the sign of the difference, it is reported as measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARMS = ("weakness", "uniform", "replay")
STAGES = ("infer", "analyze", "generate", "validate", "label", "train", "gate", "evaluate")


def run_loop(run_dir: Path, arm: str, seed: int, args: argparse.Namespace) -> None:
    """One loop run of ``arm`` (resumed when its folder exists); its output goes to run.log beside it."""
    done = run_dir / f"iteration_{args.iterations}" / "G_eval" / ".done.json"
    if done.is_file():
        return
    options = ["--domain", "arithmetic", "--teacher", args.teacher, "--student", args.student,
               "--iterations", str(args.iterations), "--budget", "0" if arm == "replay" else str(args.budget),
               "--allocation", "uniform" if arm == "uniform" else "weakness", "--replay", str(args.replay), "--seed", str(seed),
               *args.loop_args]
    from benchmarks.harness import run_loop_logged

    run_loop_logged(run_dir, options, f"{arm} seed {seed}", ROOT)


def _replies(path: Path) -> list[dict[str, Any]]:
    from data.records import read_jsonl

    return read_jsonl(path)


def _accuracy(replies: list[dict[str, Any]], nodes: set[str] | None = None) -> float:
    chosen = [r for r in replies if nodes is None or r.get("node") in nodes]
    return sum(bool(r["correct"]) for r in chosen) / len(chosen) if chosen else float("nan")


def bottom_quartile(replies: list[dict[str, Any]]) -> list[str]:
    """The quarter of nodes (at least one) with the lowest accuracy; ties broken by node name."""
    per: dict[str, list[bool]] = defaultdict(list)
    for r in replies:
        per[r["node"]].append(bool(r["correct"]))
    ranked = sorted(per, key=lambda n: (sum(per[n]) / len(per[n]), n))
    return ranked[: max(1, len(ranked) // 4)]


def collect(run_dir: Path, iterations: int, weakest: set[str] | None) -> dict[str, Any]:
    """Per iteration (0 = the starting student): eval accuracy overall and on ``weakest``; per
    iteration 1..N the generated items' counts and the seconds per stage."""
    first = _replies(run_dir / "iteration_1" / "G_eval" / "before.jsonl")
    out: dict[str, Any] = {"start": first, "acc": [_accuracy(first)], "weak": [], "accepted": [], "candidates": [],
                           "requested": [], "seconds": defaultdict(list), "new_nodes": [], "keys": [], "rejected": []}
    from data.run_layout import MARKER, STAGE_DIRS

    for i in range(1, iterations + 1):
        evaluated = json.loads((run_dir / f"iteration_{i}" / "G_eval" / MARKER).read_text())["summary"]
        # The student the run goes on with: the trained one where the gate adopted it, else the one before.
        after = _replies(run_dir / f"iteration_{i}" / "G_eval" / ("after.jsonl" if evaluated.get("adopted", True) else "before.jsonl"))
        out["acc"].append(_accuracy(after))
        out.setdefault("after", []).append(after)
        for stage in STAGES:
            marker = run_dir / f"iteration_{i}" / STAGE_DIRS[stage] / MARKER
            summary = json.loads(marker.read_text())["summary"] if marker.is_file() else {}  # no gate in older runs
            out["seconds"][stage].append(summary.get("seconds", float("nan")))
            if stage == "generate":
                out["requested"].append(summary.get("requested", 0))
            if stage == "validate":
                out["candidates"].append(summary.get("candidates", 0))
                out["accepted"].append(summary.get("accepted", 0))
                out["rejected"].append(summary.get("rejected_by_stage", {}))  # unparsed drafts included
            if stage == "analyze":
                out["new_nodes"].append(len(summary.get("new_abilities", []) or []))
        out["keys"].append(key_counts(run_dir / f"iteration_{i}" / "D_validated_data" / "validated.jsonl"))
    return out


def key_counts(validated: Path) -> dict[str, int]:
    """Accepted items whose key is right, wrong, or not readable (``answer_of`` knows no answer)."""
    from data.arithmetic.answer_key import key_is_right

    counts = {"right": 0, "wrong": 0, "unread": 0}
    for item in _replies(validated) if validated.is_file() else []:
        verdict = key_is_right(item["question"], item["options"], item["answer_idx"])
        counts["unread" if verdict is None else "right" if verdict else "wrong"] += 1
    return counts


def mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """a − b per seed: mean, 95% t-interval, paired t-test p and the exact two-sided sign-flip p."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = statistics.mean(d)
    if n < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "t_p": float("nan"), "sign_p": float("nan"), "n": n}
    sd = statistics.stdev(d)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    t_p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
    flips = [sum(s * x for s, x in zip(signs, d)) / n for signs in itertools.product((1, -1), repeat=n)]
    sign_p = sum(abs(f) >= abs(mean) - 1e-12 for f in flips) / len(flips)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "t_p": t_p, "sign_p": sign_p, "n": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated loop seeds (default 0,1,2,3,4)")
    parser.add_argument("--iterations", type=int, default=2, help="loop iterations per run (default 2)")
    parser.add_argument("--budget", type=int, default=32, help="items generated per iteration (default 32, the loop's)")
    parser.add_argument("--replay", type=int, default=32, help="replayed seed items per iteration (default 32, the loop's)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"arms to run (default {','.join(ARMS)})")
    from benchmarks.harness import add_loop_run_args

    add_loop_run_args(parser, ROOT / "runs" / "bench_allocation")
    args = parser.parse_args(argv)
    args.loop_args = [a for a in args.loop_args if a != "--"]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not seeds or any(a not in ARMS for a in arms) or args.iterations < 1:
        parser.error(f"--seeds needs at least one seed, --arms only {', '.join(ARMS)}, --iterations >= 1")
    from engines import parse_spec
    from engines.spec import SpecError

    built_acc = {}  # the models' own eval accuracy from their build_info.json, so the rows say which models ran
    for who, spec in (("teacher", args.teacher), ("student", args.student)):
        try:
            info = parse_spec(spec).local_path() / "build_info.json"
        except SpecError as e:
            raise SystemExit(f"error: {e}") from None
        built_acc[f"{who}_eval_acc"] = json.loads(info.read_text())["eval"]["accuracy"] if info.is_file() else ""

    out = Path(args.out)
    runs = {(arm, seed): out / f"{arm}-s{seed}" for arm in arms for seed in seeds}
    for (arm, seed), run_dir in runs.items():
        run_loop(run_dir, arm, seed, args)

    first = next(iter(runs.values()))
    weakest = set(bottom_quartile(_replies(first / "iteration_1" / "G_eval" / "before.jsonl")))
    results = {key: collect(path, args.iterations, weakest) for key, path in runs.items()}
    for key, r in results.items():  # every run starts from the same student on the same eval pool
        if [x["correct"] for x in r["start"]] != [x["correct"] for x in results[(arms[0], seeds[0])]["start"]]:
            raise SystemExit(f"{key}: the starting student's eval replies differ from the other runs'; the runs are not comparable")
    for r in results.values():
        r["weak"] = [_accuracy(r["start"], weakest)] + [_accuracy(a, weakest) for a in r["after"]]

    print(f"\nbottom quartile at the start ({len(weakest)} nodes): " + "; ".join(sorted(n.split("/", 1)[-1] for n in weakest)))
    rows = []
    for arm in arms:
        for i in range(args.iterations + 1):
            rs = [results[(arm, s)] for s in seeds]
            row = {"arm": arm, "iteration": i, "seeds": len(seeds), "eval_acc": mean_std([r["acc"][i] for r in rs]),
                   "weakest_quartile_acc": mean_std([r["weak"][i] for r in rs])}
            if i:
                cand = [r["candidates"][i - 1] for r in rs]
                acc_items = [r["accepted"][i - 1] for r in rs]
                row["accepted / candidates"] = f"{sum(acc_items)} / {sum(cand)}" + (f" ({100 * sum(acc_items) / sum(cand):.0f}%)" if sum(cand) else "")
                row["requested"] = sum(r["requested"][i - 1] for r in rs)
                rejected: dict[str, int] = defaultdict(int)
                for r in rs:
                    for reason, n in r["rejected"][i - 1].items():
                        rejected[reason] += n
                row["rejected by"] = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1]) if v) or "–"
                row["accepted keys right / wrong / unread"] = " / ".join(str(sum(r["keys"][i - 1][k] for r in rs)) for k in ("right", "wrong", "unread"))
                for stage in STAGES:
                    row[f"{stage}_s"] = round(statistics.mean(r["seconds"][stage][i - 1] for r in rs), 1)
            rows.append(row)
    from benchmarks.harness import append_rows, print_table

    print_table(rows)
    pairs = [(a, b) for a, b in (("weakness", "uniform"), ("weakness", "replay"), ("uniform", "replay")) if a in arms and b in arms]
    diff_rows = []
    for a, b in pairs:
        for i in range(1, args.iterations + 1):
            for what in ("acc", "weak"):
                p = paired([results[(a, s)][what][i] for s in seeds], [results[(b, s)][what][i] for s in seeds])
                diff_rows.append({"difference": f"{a} − {b}", "iteration": i, "on": "eval pool" if what == "acc" else "weakest quartile",
                                  "mean": f"{p['mean']:+.3f}", "95% interval": f"[{p['lo']:+.3f}, {p['hi']:+.3f}]",
                                  "t-test p": f"{p['t_p']:.3f}", "sign-flip p": f"{p['sign_p']:.3f}", "seeds": p["n"]})
    if diff_rows:
        print_table(diff_rows)
    print("child nodes grown from diagnoses (all seeds and iterations): "
          + ", ".join(f"{a} {sum(sum(results[(a, s)]['new_nodes']) for s in seeds)}" for a in arms))
    csv_rows = [{"arm": arm, "seed": s, "iteration": i, "eval_acc": results[(arm, s)]["acc"][i], "weakest_acc": results[(arm, s)]["weak"][i],
                 "accepted": results[(arm, s)]["accepted"][i - 1] if i else "", "candidates": results[(arm, s)]["candidates"][i - 1] if i else "",
                 **({f"keys_{k}": results[(arm, s)]["keys"][i - 1][k] for k in ("right", "wrong", "unread")} if i else {}),
                 **({f"rejected_{k}": v for k, v in results[(arm, s)]["rejected"][i - 1].items()} if i else {}),
                 "new_nodes": results[(arm, s)]["new_nodes"][i - 1] if i else "", **built_acc,
                 "budget": 0 if arm == "replay" else args.budget, "replay": args.replay, "weakest_nodes": len(weakest),
                 **({f"{st}_s": results[(arm, s)]["seconds"][st][i - 1] for st in STAGES} if i else {})}
                for arm in arms for s in seeds for i in range(args.iterations + 1)]
    print(f"appended to {append_rows('allocation', csv_rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
