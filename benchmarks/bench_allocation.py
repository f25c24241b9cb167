"""Does data aimed at the student's weak skills teach more than the same amount spread evenly?

    python -m scratch build                                  # once: the arithmetic teacher and student
    python benchmarks/bench_allocation.py                    # every arm, 10 seeds (5 for the controls), 2 iterations
    python benchmarks/bench_allocation.py --seeds 0,1,2 --control-seeds 0 --stop-after 60   # a pilot
    python benchmarks/bench_allocation.py --report-only      # the tables of the runs finished so far (nothing written)

The loop runs on the arithmetic domain with its own teacher and student, with an eval pool of
``--eval-per-skill`` items per skill (the shipped 12 plus more drawn by the domain's builder, none of
them a seed or dev question: a domain folder of its own under ``--out``). Arms, each the same loop but
for the factor named:

- ``oracle-weakness`` / ``oracle-uniform``: the domain's own problem generator writes the items
  (``--generator oracle --acceptance none``: right keys, worked solutions) for the weakness or the
  uniform allocation. They answer "can aiming the data help at all?", apart from the teacher.
- ``weakness`` / ``uniform``: the teacher writes them and validation judges them, as a user runs it.
  They answer "does the system deliver it?".
- ``rehearsal``: no generation (``--budget 0``): the replay and rehearsal items only.
- ``none``: no training at all: the starting student (no runs; its scores are every run's start).

The allocation's contrast is set by ``--floor``, ``--max-nodes`` and ``--allocation-temperature`` (the
loop's ``--allocation-*`` options), recorded per run: the weakness arms put the budget on the
``--max-nodes`` nodes that the student's probe answers show weakest, the uniform arms spread it evenly
over every target node. The share of the budget each run put on the bottom quartile is printed beside
the pre-registered minimum.

The primary endpoint and its test are fixed in ``PREREGISTERED`` below, written before any run of
this design: accuracy on the bottom quartile of leaves (the quarter where the starting student is
weakest on the eval pool, the same for every run since every run starts from the same student) after
the last iteration, weakness minus uniform, paired by seed, once for the oracle and once for the teacher
generator (two primary comparisons, each at alpha 0.025: Bonferroni). Printed with it: the 95%
interval, the paired t-test and exact sign-flip p-values, and the minimal detectable effect at 80% power
from the observed spread of the paired differences, with the seeds that would bring it to 2 points.
Every other comparison is printed as secondary, with how many there are.

Each run is a separate ``python -m agents.loop`` process with its own folder under ``--out``; a finished
run is read again, a partial one resumed, so the benchmark continues where it stopped, across sessions;
CSV rows are written once every run has finished.
Runs go seed by seed, every arm of a seed before the next seed, so a stopped benchmark leaves complete
pairs. Rows go to benchmarks/results/allocation.csv (per run and iteration) and allocation_nodes.csv
(per arm, iteration and node: what was asked for, accepted and trained on, and how many keys were
right by the domain's own arithmetic). The result is reported as measured, whatever its sign.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("infer", "analyze", "generate", "validate", "label", "train", "gate", "evaluate")


@dataclass(frozen=True)
class Arm:
    """One arm: who writes the generated items ("" for none) and how the budget is allocated."""

    generator: str
    allocation: str
    primary: bool  # in a primary comparison: --seeds; else a control: --control-seeds
    trains: bool = True

    def loop_options(self, budget: int) -> list[str]:
        if not self.generator:
            return ["--budget", "0"]
        options = ["--budget", str(budget), "--allocation", self.allocation, "--generator", self.generator]
        return options + (["--acceptance", "none"] if self.generator == "oracle" else [])


ARMS: dict[str, Arm] = {
    "oracle-weakness": Arm("oracle", "weakness", primary=True),
    "oracle-uniform": Arm("oracle", "uniform", primary=True),
    "weakness": Arm("teacher", "weakness", primary=True),
    "uniform": Arm("teacher", "uniform", primary=True),
    "rehearsal": Arm("", "", primary=False),
    "none": Arm("", "", primary=False, trains=False),
}


@dataclass(frozen=True)
class Preregistration:
    """The primary analysis, fixed before the runs of this design (2026-12-08) and not changed after."""

    endpoint: str = "bottom-quartile accuracy after the last iteration"
    primary: tuple[tuple[str, str], ...] = (("oracle-weakness", "oracle-uniform"), ("weakness", "uniform"))
    alpha: float = 0.025  # each primary comparison: 0.05 over two (Bonferroni)
    power: float = 0.8
    mde_target: float = 0.02  # the minimal detectable effect the design must reach, in accuracy
    min_weak_share: float = 0.5  # contrast: the weakness arms put at least this share of the budget on the bottom quartile
    # Every arm's update goes through the loop's McNemar gate (refuse only a significant drop on dev): the
    # margin-0 gate refused a 2-of-208-item dev drop in the manipulation check (docs/allocation.md).
    gate: str = "mcnemar"
    learning_rate: float = 1e-4  # by the pre-stated rule on the student of the runs (docs/allocation.md)


PREREGISTERED = Preregistration()


# ------------------------------------------------------------------------------------------ data


def bench_domain(out: Path, eval_per_skill: int) -> Path:
    """A copy of the arithmetic domain whose eval pool has ``eval_per_skill`` items per skill: the shipped
    ones first, then more drawn by the domain's builder, none repeating a seed, dev or eval question.
    Written once (deterministic); its domain.yaml path."""
    import shutil

    import yaml

    from data.arithmetic.build import draw_items
    from data.arithmetic.skills import SKILLS
    from data.domains import get_domain
    from data.records import atomic_write_text, write_jsonl

    folder = out / f"domain-eval{eval_per_skill}"
    if (folder / "domain.yaml").is_file():
        return folder / "domain.yaml"
    shipped = get_domain("arithmetic")
    seed, dev, evals = shipped.seed_items(), shipped.dev_items(), shipped.eval_items()
    held = {it.question for it in (*seed, *dev, *evals)}
    by_skill: dict[str, list] = defaultdict(list)
    for it in evals:
        by_skill["/".join(it.ability_path[1:])].append(it)
    pool = []
    for s in SKILLS:
        own = by_skill[s.key][:eval_per_skill]
        more = draw_items(s, "eval-more", max(0, eval_per_skill - len(own)), 0, held)
        held |= {it.question for it in more}
        pool += own + [it.model_copy(update={"id": it.id.replace("arith-eval-more-", "arith-evalx-")}) for it in more]
    stage = out / f".{folder.name}.tmp"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("seed.jsonl", "dev.jsonl"):
        shutil.copy(shipped.file.parent / name, stage / name)
    write_jsonl(stage / "eval.jsonl", pool)
    raw = yaml.safe_load(shipped.file.read_text())
    raw["name"] = f"arithmetic-eval{eval_per_skill}"
    atomic_write_text(stage / "domain.yaml", yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=110))
    stage.rename(folder)
    return folder / "domain.yaml"


# ------------------------------------------------------------------------------------------ runs


def loop_options(arm: str, seed: int, domain: Path, args: argparse.Namespace) -> list[str]:
    targeted = ARMS[arm].allocation == "weakness"  # the uniform arm spreads over every target node
    return ["--domain", str(domain), "--teacher", args.teacher, "--student", args.student, "--iterations", str(args.iterations),
            *ARMS[arm].loop_options(args.budget), "--allocation-floor", str(args.floor),
            "--allocation-max-nodes", str(args.max_nodes if targeted else 0), "--allocation-temperature", str(args.allocation_temperature),
            "--probe-size", str(args.probe_size), "--gate", PREREGISTERED.gate, "--learning-rate", str(PREREGISTERED.learning_rate),
            "--seed", str(seed), *args.loop_args]


def run_all(todo: list[tuple[str, int]], runs: dict[tuple[str, int], Path], domain: Path, args: argparse.Namespace) -> None:
    """The runs of ``todo`` in order, ``args.jobs`` at a time (each then on its share of the cores: one
    torch thread per job, so that they do not oversubscribe them); none started after ``--stop-after``."""
    import os
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from benchmarks.harness import run_loop_logged

    started = time.monotonic()
    extra: list[str] = []
    if args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the loop processes inherit it (torch's training threads)
        extra = ["--threads", str(threads)]  # and the engines'
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        running = set()
        for arm, s in todo:
            if args.stop_after and time.monotonic() - started > 60 * args.stop_after:
                print(f"--stop-after {args.stop_after:g}: no new run started; reporting the finished ones", flush=True)
                break
            if len(running) >= args.jobs:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()  # a failed run stops the benchmark with its log's last lines
            running.add(pool.submit(run_loop_logged, runs[(arm, s)], [*loop_options(arm, s, domain, args), *extra], f"{arm} seed {s}", ROOT))
        for f in running:
            f.result()


def is_done(run_dir: Path, iterations: int) -> bool:
    return (run_dir / f"iteration_{iterations}" / "G_eval" / ".done.json").is_file()


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


def _summary(run_dir: Path, i: int, stage: str) -> dict[str, Any]:
    from data.run_layout import MARKER, STAGE_DIRS

    marker = run_dir / f"iteration_{i}" / STAGE_DIRS[stage] / MARKER
    return json.loads(marker.read_text())["summary"] if marker.is_file() else {}


def collect(run_dir: Path, iterations: int, weakest: set[str] | None) -> dict[str, Any]:
    """Per iteration (0 = the starting student): eval accuracy overall and on ``weakest``; per
    iteration 1..N the generated items' counts, the budget's share on ``weakest``, the gate's verdict,
    the keys' correctness and the seconds per stage."""
    from data.run_layout import STAGE_DIRS
    from tree.allocate import share_of

    first = _replies(run_dir / "iteration_1" / "G_eval" / "before.jsonl")
    out: dict[str, Any] = {"start": first, "acc": [_accuracy(first)], "after": [], "accepted": [], "candidates": [], "requested": [],
                           "seconds": defaultdict(list), "new_nodes": [], "keys": [], "rejected": [], "adopted": [], "weak_share": [],
                           "nodes": []}
    for i in range(1, iterations + 1):
        evaluated = _summary(run_dir, i, "evaluate")
        # The student the run goes on with: the trained one where the gate adopted it, else the one before.
        adopted = evaluated.get("adopted", True)
        after = _replies(run_dir / f"iteration_{i}" / "G_eval" / ("after.jsonl" if adopted else "before.jsonl"))
        out["acc"].append(_accuracy(after))
        out["after"].append(after)
        out["adopted"].append(bool(adopted))
        for stage in STAGES:
            out["seconds"][stage].append(_summary(run_dir, i, stage).get("seconds", float("nan")))  # no gate in older runs
        out["requested"].append(_summary(run_dir, i, "generate").get("requested", 0))
        validated = _summary(run_dir, i, "validate")
        out["candidates"].append(validated.get("candidates", 0))
        out["accepted"].append(validated.get("accepted", 0))
        out["rejected"].append(validated.get("rejected_by_stage", {}))  # unparsed drafts included
        out["new_nodes"].append(len(_summary(run_dir, i, "analyze").get("new_abilities", []) or []))
        folder = run_dir / f"iteration_{i}"
        out["keys"].append(key_counts(folder / STAGE_DIRS["validate"] / "validated.jsonl"))
        allocation_file = folder / STAGE_DIRS["generate"] / "allocation.json"
        allocation = json.loads(allocation_file.read_text()) if allocation_file.is_file() else {}
        out["weak_share"].append(share_of(allocation, weakest) if weakest and allocation else float("nan"))
        out["nodes"].append(node_counts(folder, allocation))
    return out


def node_counts(folder: Path, allocation: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per node of one iteration: items asked for, written (parsed), accepted, trained on (generated items
    left after the label stage), and accepted keys right / wrong by the domain's arithmetic."""
    from data.arithmetic.answer_key import key_is_right
    from data.run_layout import STAGE_DIRS

    per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("asked", "written", "accepted", "trained", "right", "wrong"), 0))
    for node, n in allocation.items():
        per[node]["asked"] += n
    candidates = folder / STAGE_DIRS["generate"] / "candidates.jsonl"
    for item in _replies(candidates) if candidates.is_file() else []:
        per[item["target_node"]]["written"] += 1
    validated = folder / STAGE_DIRS["validate"] / "validated.jsonl"
    for item in _replies(validated) if validated.is_file() else []:
        per[item["target_node"]]["accepted"] += 1
        verdict = key_is_right(item["question"], item["options"], item["answer_idx"])
        if verdict is not None:
            per[item["target_node"]]["right" if verdict else "wrong"] += 1
    composition = folder / STAGE_DIRS["label"] / "composition.json"
    for node, parts in (json.loads(composition.read_text()) if composition.is_file() else {}).items():
        per[node]["trained"] += parts.get("generated", 0)
    return dict(per)


def key_counts(validated: Path) -> dict[str, int]:
    """Accepted items whose key is right, wrong, or not readable (``answer_of`` knows no answer)."""
    from data.arithmetic.answer_key import key_is_right

    counts = {"right": 0, "wrong": 0, "unread": 0}
    for item in _replies(validated) if validated.is_file() else []:
        verdict = key_is_right(item["question"], item["options"], item["answer_idx"])
        counts["unread" if verdict is None else "right" if verdict else "wrong"] += 1
    return counts


def start_only(start: list[dict[str, Any]], iterations: int) -> dict[str, Any]:
    """The ``none`` arm: the starting student at every iteration (nothing is trained)."""
    return {"start": start, "acc": [_accuracy(start)] * (iterations + 1), "after": [start] * iterations}


# ------------------------------------------------------------------------------------------ statistics


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
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "t_p": float("nan"), "sign_p": float("nan"), "n": n, "sd": float("nan")}
    sd = statistics.stdev(d)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    t_p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
    flips = [sum(s * x for s, x in zip(signs, d)) / n for signs in itertools.product((1, -1), repeat=n)]
    sign_p = sum(abs(f) >= abs(mean) - 1e-12 for f in flips) / len(flips)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "t_p": t_p, "sign_p": sign_p, "n": n, "sd": sd}


def mde(sd: float, n: int, alpha: float, power: float) -> float:
    """The smallest true paired mean difference a two-sided paired t-test at ``alpha`` detects with
    probability ``power`` over ``n`` seeds, given the differences' standard deviation ``sd``."""
    from scipy import stats

    if n < 2 or math.isnan(sd):
        return float("nan")
    return (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, target: float, alpha: float, power: float, most: int = 200) -> int | None:
    """The fewest seeds whose ``mde`` is at most ``target`` (None: more than ``most``)."""
    if math.isnan(sd):
        return None
    return next((n for n in range(2, most + 1) if mde(sd, n, alpha, power) <= target), None)


# ------------------------------------------------------------------------------------------ report


def arm_rows(arms: list[str], seeds: dict[str, list[int]], results: dict[tuple[str, int], dict[str, Any]], iterations: int) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        rs = [results[(arm, s)] for s in seeds[arm]]
        if not rs:
            continue
        for i in range(iterations + 1):
            row: dict[str, Any] = {"arm": arm, "iteration": i, "seeds": len(rs), "eval_acc": mean_std([r["acc"][i] for r in rs]),
                                   "bottom_quartile_acc": mean_std([r["weak"][i] for r in rs])}
            if i and ARMS[arm].trains:
                row["budget on bottom quartile"] = mean_std([r["weak_share"][i - 1] for r in rs]) if ARMS[arm].generator else "–"
                cand, acc_items = sum(r["candidates"][i - 1] for r in rs), sum(r["accepted"][i - 1] for r in rs)
                row["accepted / candidates"] = f"{acc_items} / {cand}" + (f" ({100 * acc_items / cand:.0f}%)" if cand else "")
                row["keys right / wrong / unread"] = " / ".join(str(sum(r["keys"][i - 1][k] for r in rs)) for k in ("right", "wrong", "unread"))
                row["adopted"] = f"{sum(r['adopted'][i - 1] for r in rs)} / {len(rs)}"
                rejected: dict[str, int] = defaultdict(int)
                for r in rs:
                    for reason, n in r["rejected"][i - 1].items():
                        rejected[reason] += n
                row["rejected by"] = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1]) if v) or "–"
                row["minutes"] = round(statistics.mean(sum(v for v in (r["seconds"][st][i - 1] for st in STAGES) if not math.isnan(v)) for r in rs) / 60, 1)
            rows.append(row)
    return rows


def comparisons(arms: list[str], iterations: int) -> tuple[list[tuple[str, str, int, str]], list[tuple[str, str, int, str]]]:
    """(primary, secondary): (arm a, arm b, iteration, on) of a − b; "weak" is the bottom quartile, "acc" the pool."""
    primary = [(a, b, iterations, "weak") for a, b in PREREGISTERED.primary if a in arms and b in arms]
    pairs = [*PREREGISTERED.primary, *((g, c) for g in ("oracle-weakness", "oracle-uniform", "weakness", "uniform") for c in ("rehearsal", "none")),
             ("rehearsal", "none")]
    secondary = [(a, b, i, on) for a, b in pairs if a in arms and b in arms for i in range(1, iterations + 1) for on in ("weak", "acc")
                 if (a, b, i, on) not in primary]
    return primary, secondary


def diff_row(a: str, b: str, i: int, on: str, seeds: list[int], results: dict[tuple[str, int], dict[str, Any]], primary: bool) -> dict[str, Any]:
    p = paired([results[(a, s)][on][i] for s in seeds], [results[(b, s)][on][i] for s in seeds])
    row = {"difference": f"{a} − {b}", "iteration": i, "on": "bottom quartile" if on == "weak" else "eval pool", "seeds": p["n"],
           "mean": f"{p['mean']:+.3f}", "95% interval": f"[{p['lo']:+.3f}, {p['hi']:+.3f}]", "t-test p": f"{p['t_p']:.3f}",
           "sign-flip p": f"{p['sign_p']:.3f}"}
    if primary:
        alpha, power = PREREGISTERED.alpha, PREREGISTERED.power
        need = seeds_needed(p["sd"], PREREGISTERED.mde_target, alpha, power)
        row |= {"sd of differences": f"{p['sd']:.3f}", f"MDE (alpha {alpha:g}, power {power:g})": f"{mde(p['sd'], p['n'], alpha, power):.3f}",
                f"seeds for MDE {PREREGISTERED.mde_target:g}": need if need is not None else "> 200",
                "verdict": ("weakness better" if p["mean"] > 0 else "uniform better") if p["t_p"] < alpha else f"no difference at alpha {alpha:g}"}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default=",".join(map(str, range(10))), help="loop seeds of the primary arms (default 0-9)")
    parser.add_argument("--control-seeds", default=",".join(map(str, range(5))), help="loop seeds of the rehearsal arm (default 0-4)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"arms to run and report (default {','.join(ARMS)})")
    parser.add_argument("--iterations", type=int, default=2, help="loop iterations per run (default 2)")
    parser.add_argument("--budget", type=int, default=256, help="items generated per iteration (default 256)")
    parser.add_argument("--floor", type=int, default=0, help="loop --allocation-floor (default 0)")
    parser.add_argument("--max-nodes", type=int, default=6, help="loop --allocation-max-nodes of the weakness arms: the budget goes to the "
                        "nodes the probe finds weakest, as many as the bottom quartile holds (default 6; 0: every target node)")
    parser.add_argument("--allocation-temperature", type=float, default=1.0, help="loop --allocation-temperature (default 1)")
    parser.add_argument("--probe-size", type=int, default=416, help="loop --probe-size: seed items the student answers to find its weak nodes (default 416, 16 per skill)")
    parser.add_argument("--eval-per-skill", type=int, default=48, help="eval-pool items per skill (default 48)")
    parser.add_argument("--stop-after", type=float, default=0, help="start no new run after this many minutes, then report (default 0: no limit)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; print the tables of the runs finished so far (no CSV rows)")
    parser.add_argument("--jobs", type=int, default=1, help="loop runs at once, each with its share of the cores (default 1)")
    from benchmarks.harness import add_loop_run_args

    add_loop_run_args(parser, ROOT / "runs" / "bench_allocation")
    args = parser.parse_args(argv)
    args.loop_args = [a for a in args.loop_args if a != "--"]
    primary_seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    control_seeds = [int(s) for s in args.control_seeds.split(",") if s.strip()]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not primary_seeds or any(a not in ARMS for a in arms) or args.iterations < 1 or args.eval_per_skill < 12 or args.budget < 1 or args.jobs < 1:
        parser.error(f"--seeds needs at least one seed, --arms only {', '.join(ARMS)}, --iterations >= 1, --eval-per-skill >= 12, --budget >= 1, "
                     "--jobs >= 1")
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
    domain = bench_domain(out, args.eval_per_skill)
    seeds = {arm: (primary_seeds if ARMS[arm].primary else control_seeds) if ARMS[arm].trains else [] for arm in arms}
    runs = {(arm, s): out / f"{arm}-s{s}" for arm in arms for s in seeds[arm]}
    order = sorted(runs, key=lambda key: (key[1], arms.index(key[0])))  # seed by seed: a stopped bench leaves whole pairs
    if not args.report_only:
        run_all([key for key in order if not is_done(runs[key], args.iterations)], runs, domain, args)

    finished = {key for key, path in runs.items() if is_done(path, args.iterations)}
    if not finished:
        print("no run has finished yet")
        return 1
    first = runs[min(finished, key=order.index)]
    start = _replies(first / "iteration_1" / "G_eval" / "before.jsonl")
    weakest = set(bottom_quartile(start))
    results: dict[tuple[str, int], dict[str, Any]] = {key: collect(runs[key], args.iterations, weakest) for key in sorted(finished, key=order.index)}
    for key, r in results.items():  # every run starts from the same student on the same eval pool
        if [x["correct"] for x in r["start"]] != [x["correct"] for x in start]:
            raise SystemExit(f"{key}: the starting student's eval replies differ from the other runs'; the runs are not comparable")
    if "none" in arms:
        seeds["none"] = sorted({s for _, s in finished})
        for s in seeds["none"]:
            results[("none", s)] = start_only(start, args.iterations)
    for r in results.values():
        r["weak"] = [_accuracy(r["start"], weakest)] + [_accuracy(a, weakest) for a in r["after"]]
    seeds = {arm: [s for s in ss if (arm, s) in results] for arm, ss in seeds.items()}

    print(f"\neval pool: {len(start)} items; bottom quartile at the start ({len(weakest)} nodes, {sum(r['node'] in weakest for r in start)} items): "
          + "; ".join(sorted(n.split("/", 1)[-1] for n in weakest)))
    print(f"pre-registered: {json.dumps(asdict(PREREGISTERED))}")
    from benchmarks.harness import append_rows, print_table

    print_table(arm_rows(arms, seeds, results, args.iterations))
    shares = [x for arm in arms if ARMS[arm].allocation == "weakness" for s in seeds[arm] for x in results[(arm, s)]["weak_share"]]
    if shares:
        low = min(shares)
        print(f"contrast: the weakness arms put {statistics.mean(shares):.0%} of the budget on the bottom quartile (lowest run-iteration "
              f"{low:.0%}; pre-registered minimum {PREREGISTERED.min_weak_share:.0%}: {'met' if low >= PREREGISTERED.min_weak_share else 'NOT met'})")
    primary, secondary = comparisons(arms, args.iterations)
    common = lambda a, b: [s for s in seeds[a] if s in seeds[b]]  # noqa: E731
    if primary:
        print(f"\nPRIMARY ({PREREGISTERED.endpoint}; two comparisons, each at alpha {PREREGISTERED.alpha:g})")
        print_table([diff_row(a, b, i, on, common(a, b), results, True) for a, b, i, on in primary if len(common(a, b)) > 1])
    if secondary:
        print(f"\nSECONDARY ({len(secondary)} comparisons, unadjusted: at 0.05, about {0.05 * len(secondary):.1f} would fall below by chance alone)")
        print_table([diff_row(a, b, i, on, common(a, b), results, False) for a, b, i, on in secondary if len(common(a, b)) > 1])
    node_rows = []
    for arm in arms:
        if not ARMS[arm].generator:
            continue
        for i in range(1, args.iterations + 1):
            total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for s in seeds[arm]:
                for node, counts in results[(arm, s)]["nodes"][i - 1].items():
                    for k, v in counts.items():
                        total[node][k] += v
            for node, counts in sorted(total.items()):
                node_rows.append({"arm": arm, "iteration": i, "seeds": len(seeds[arm]), "node": node.split("/", 1)[-1],
                                  "bottom_quartile": node in weakest or any(node.startswith(w + "/") for w in weakest), **counts})
    if node_rows:
        print("\nwhere the bottom quartile's items went (summed over seeds): asked → written → accepted → trained; keys right / wrong")
        print_table([{k: v for k, v in r.items() if k != "seeds"} for r in node_rows if r["bottom_quartile"]])
    settings = {"budget": args.budget, "floor": args.floor, "max_nodes": args.max_nodes, "allocation_temperature": args.allocation_temperature,
                "probe_size": args.probe_size, "eval_items": len(start), "weakest_nodes": len(weakest), "loop_args": " ".join(args.loop_args), **built_acc}
    csv_rows = []
    for (arm, s), r in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        for i in range(args.iterations + 1):
            row: dict[str, Any] = {"arm": arm, "seed": s, "iteration": i, "eval_acc": r["acc"][i], "weakest_acc": r["weak"][i], **settings}
            if i and ARMS[arm].trains:
                row |= {"accepted": r["accepted"][i - 1], "candidates": r["candidates"][i - 1], "adopted": r["adopted"][i - 1],
                        "weak_share": r["weak_share"][i - 1], "new_nodes": r["new_nodes"][i - 1],
                        **{f"keys_{k}": r["keys"][i - 1][k] for k in ("right", "wrong", "unread")},
                        **{f"rejected_{k}": v for k, v in r["rejected"][i - 1].items()},
                        **{f"{st}_s": r["seconds"][st][i - 1] for st in STAGES}}
            csv_rows.append(row)
    if args.report_only:
        print("--report-only: nothing written to benchmarks/results")
        return 0
    if len(finished) < len(runs):  # partial results would be appended again, whole, when the rest are done
        print(f"{len(finished)} of {len(runs)} runs finished: nothing written to benchmarks/results until all have")
        return 0
    print(f"appended to {append_rows('allocation', csv_rows)}")
    if node_rows:
        print(f"appended to {append_rows('allocation_nodes', [{**r, **settings} for r in node_rows])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
