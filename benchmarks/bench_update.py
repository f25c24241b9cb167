"""Does a student update ever ship a regression, and which schedule makes one that helps?

    python -m scratch build                                        # once: the arithmetic teacher and student
    python benchmarks/bench_update.py sweep                        # schedule x data sweep: 3 seeds, 1 iteration
    python benchmarks/bench_update.py accept --lr 5e-4 ...         # the chosen schedule: 5 seeds x 3 iterations
    python benchmarks/bench_update.py accept --arms gate,nogate    # and the same without the gate (secondary)

Every run is ``python -m agents.loop --domain arithmetic`` with the scratch teacher and student and no
generation (``--budget 0``): the student trains on replayed seed items only (targeted replay of its weak
nodes plus rehearsal over all nodes), the teacher's worked solutions checked by the domain's verifier.
That is the floor every generation arm builds on: if it cannot move the student up, nothing can.

``sweep`` runs each configuration of ``--grid`` (learning rate x replay/rehearsal sizes; warmup, schedule
and epochs fixed by ``--warmup-ratio --lr-scheduler-type --train-epochs``) for ``--seeds`` (default 3)
with one iteration; the trained student is evaluated whatever the gate says (its verdict and dev
figures are recorded: does the dev split agree with the eval set?); the endpoint is its eval accuracy
minus the start's, per configuration mean ± std over seeds, paired against the first
configuration (the loop's former default). ``accept`` runs the chosen configuration for 5 seeds x 3
iterations with the gate on (arm ``gate``) and, for comparison, off (``nogate``); the endpoint is the
eval accuracy of the student the run ends with (the last adopted one) minus the start, with its 95%
t-interval, the one-sample t-test and sign-flip p-values, and the lowest seed (the issue's target: none
below the start, mean >= +2 points). The control "no training" is the start itself (delta 0 by
construction; every run starts from the same student on the same eval pool, which is checked).

Each run has its own folder under ``--out``; a finished run is read again, not rerun (a partial one is
resumed). Rows go to benchmarks/results/update.csv, one per run and iteration. Results are reported as
measured, whatever their sign (docs/update.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_allocation import mean_std, paired  # noqa: E402  (the same paired statistics)

ARMS = ("gate", "nogate")
DEFAULT_GRID = "5e-5:16:16,5e-4:16:16,2e-3:16:16,5e-4:64:64,2e-3:64:64"


def parse_grid(text: str) -> list[tuple[float, int, int]]:
    """``lr:replay:rehearsal,...`` -> [(lr, replay, rehearsal), ...]."""
    out = []
    for part in text.split(","):
        lr, replay, rehearsal = part.strip().split(":")
        out.append((float(lr), int(replay), int(rehearsal)))
    return out


def config_name(lr: float, replay: int, rehearsal: int) -> str:
    return f"lr{lr:g}-r{replay}-h{rehearsal}"


def run_loop(run_dir: Path, options: list[str], iterations: int) -> None:
    """One loop run (resumed when its folder exists); its output goes to <run>.log beside it."""
    if (run_dir / f"iteration_{iterations}" / "G_eval" / ".done.json").is_file():
        return
    from benchmarks.harness import run_loop_logged

    run_loop_logged(run_dir, ["--iterations", str(iterations), *options], run_dir.name, ROOT)


def summary(run_dir: Path, iteration: int, folder: str) -> dict[str, Any]:
    marker = run_dir / f"iteration_{iteration}" / folder / ".done.json"
    return json.loads(marker.read_text())["summary"] if marker.is_file() else {}


def collect(run_dir: Path, iterations: int) -> dict[str, Any]:
    """Eval accuracy of the student the run goes on with (0 = start), of each trained candidate, and
    the gate's decisions and dev figures, per iteration."""
    from data.run_layout import STAGE_DIRS

    first = summary(run_dir, 1, "G_eval")
    out: dict[str, Any] = {"acc": [first["before"]["accuracy"]], "candidate": [], "adopted": [], "dev_before": [], "dev_after": [],
                           "train_items": [], "steps": [], "best_epoch": [], "seconds": {s: [] for s in STAGE_DIRS}}
    for i in range(1, iterations + 1):
        ev, gate = summary(run_dir, i, "G_eval"), summary(run_dir, i, "G_dev_gate")
        out["acc"].append(ev["student"]["accuracy"] if isinstance(ev.get("student"), dict) else ev["after"]["accuracy"])
        out["candidate"].append(ev["after"]["accuracy"])
        out["adopted"].append(bool(ev.get("adopted", True)))
        out["dev_before"].append(gate.get("before"))
        out["dev_after"].append(gate.get("after"))
        out["train_items"].append(summary(run_dir, i, "E_teacher_logits").get("items"))
        train = summary(run_dir, i, "F_student_model")
        out["steps"].append(train.get("steps"))
        out["best_epoch"].append(train.get("best_epoch"))
        for stage, folder in STAGE_DIRS.items():
            out["seconds"][stage].append(summary(run_dir, i, folder).get("seconds", float("nan")))
    return out


def base_options(args: argparse.Namespace) -> list[str]:
    return ["--domain", "arithmetic", "--teacher", args.teacher, "--student", args.student, "--budget", "0",
            "--warmup-ratio", str(args.warmup_ratio), "--lr-scheduler-type", args.lr_scheduler_type,
            "--train-epochs", str(args.train_epochs), *args.loop_args]


def check_same_start(results: dict[Any, dict[str, Any]]) -> None:
    starts = {round(r["acc"][0], 9) for r in results.values()}
    if len(starts) != 1:
        raise SystemExit(f"the runs start from different eval accuracies {sorted(starts)}: not the same student or eval pool")


def sweep(args: argparse.Namespace, seeds: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    grid = parse_grid(args.grid)
    out = Path(args.out) / "sweep"
    runs = {(cfg, s): out / f"{config_name(*cfg)}-s{s}" for cfg in grid for s in seeds}
    for (cfg, s), run_dir in runs.items():
        lr, replay, rehearsal = cfg
        run_loop(run_dir, [*base_options(args), "--learning-rate", str(lr), "--replay", str(replay), "--rehearsal", str(rehearsal),
                           "--seed", str(s)], 1)  # the gate's verdict is recorded; the candidate is evaluated either way
    results = {key: collect(path, 1) for key, path in runs.items()}
    check_same_start(results)
    table, csv_rows = [], []
    base = grid[0]
    for cfg in grid:
        deltas = [results[(cfg, s)]["candidate"][0] - results[(cfg, s)]["acc"][0] for s in seeds]
        row = {"config": config_name(*cfg), "seeds": len(seeds), "start": f"{results[(cfg, seeds[0])]['acc'][0]:.3f}",
               "after 1 iteration": mean_std([results[(cfg, s)]["candidate"][0] for s in seeds]), "delta": mean_std(deltas),
               "lowest delta": f"{min(deltas):+.3f}",
               "train items": mean_std([float(results[(cfg, s)]["train_items"][0] or 0) for s in seeds]),
               "epoch kept": ",".join(f"{results[(cfg, s)]['best_epoch'][0]}" for s in seeds),
               "dev delta": mean_std([(results[(cfg, s)]["dev_after"][0] or 0) - (results[(cfg, s)]["dev_before"][0] or 0) for s in seeds]),
               "gate adopted": f"{sum(results[(cfg, s)]['adopted'][0] for s in seeds)}/{len(seeds)}"}
        if cfg != base:
            p = paired([results[(cfg, s)]["candidate"][0] for s in seeds], [results[(base, s)]["candidate"][0] for s in seeds])
            row[f"vs {config_name(*base)} [95% CI], t p"] = f"{p['mean']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}], {p['t_p']:.3f}"
        table.append(row)
        for s in seeds:
            r = results[(cfg, s)]
            csv_rows.append({"phase": "sweep", "config": config_name(*cfg), "arm": "gate", "seed": s, "iteration": 1,
                             "learning_rate": cfg[0], "replay": cfg[1], "rehearsal": cfg[2], "warmup_ratio": args.warmup_ratio,
                             "lr_scheduler_type": args.lr_scheduler_type, "train_epochs": args.train_epochs,
                             "start_acc": r["acc"][0], "eval_acc": r["acc"][1], "candidate_acc": r["candidate"][0],
                             "adopted": r["adopted"][0], "dev_before": r["dev_before"][0], "dev_after": r["dev_after"][0],
                             "train_items": r["train_items"][0], "steps": r["steps"][0], "best_epoch": r["best_epoch"][0],
                             **{f"{st}_s": v[0] for st, v in r["seconds"].items()}})
    return table, csv_rows


def accept(args: argparse.Namespace, seeds: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    out = Path(args.out) / "accept"
    name = config_name(args.lr, args.replay, args.rehearsal)
    runs = {(arm, s): out / f"{name}-{arm}-s{s}" for arm in arms for s in seeds}
    for (arm, s), run_dir in runs.items():
        run_loop(run_dir, [*base_options(args), "--learning-rate", str(args.lr), "--replay", str(args.replay),
                           "--rehearsal", str(args.rehearsal), "--gate", "margin" if arm == "gate" else "off", "--seed", str(s)],
                 args.iterations)
    results = {key: collect(path, args.iterations) for key, path in runs.items()}
    check_same_start(results)
    table, csv_rows = [], []
    for arm in arms:
        for i in range(args.iterations + 1):
            accs = [results[(arm, s)]["acc"][i] for s in seeds]
            deltas = [a - results[(arm, s)]["acc"][0] for a, s in zip(accs, seeds)]
            row = {"arm": arm, "iteration": i, "seeds": len(seeds), "eval acc (student kept)": mean_std(accs),
                   "delta vs start": mean_std(deltas), "lowest seed delta": f"{min(deltas):+.3f}"}
            if i:
                p = paired(accs, [results[(arm, s)]["acc"][0] for s in seeds])
                row["delta [95% CI], t p, sign-flip p"] = f"{p['mean']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}], {p['t_p']:.3f}, {p['sign_p']:.3f}"
                row["adopted"] = f"{sum(results[(arm, s)]['adopted'][i - 1] for s in seeds)}/{len(seeds)}"
                row["candidate acc"] = mean_std([results[(arm, s)]["candidate"][i - 1] for s in seeds])
            table.append(row)
        for s in seeds:
            r = results[(arm, s)]
            for i in range(1, args.iterations + 1):
                csv_rows.append({"phase": "accept", "config": name, "arm": arm, "seed": s, "iteration": i, "learning_rate": args.lr,
                                 "replay": args.replay, "rehearsal": args.rehearsal, "warmup_ratio": args.warmup_ratio,
                                 "lr_scheduler_type": args.lr_scheduler_type, "train_epochs": args.train_epochs,
                                 "start_acc": r["acc"][0], "eval_acc": r["acc"][i], "candidate_acc": r["candidate"][i - 1],
                                 "adopted": r["adopted"][i - 1], "dev_before": r["dev_before"][i - 1], "dev_after": r["dev_after"][i - 1],
                                 "train_items": r["train_items"][i - 1], "steps": r["steps"][i - 1], "best_epoch": r["best_epoch"][i - 1],
                                 **{f"{st}_s": v[i - 1] for st, v in r["seconds"].items()}})
    if set(arms) == set(ARMS):  # secondary: what the gate changes, per seed, at the last iteration
        p = paired([results[("gate", s)]["acc"][-1] for s in seeds], [results[("nogate", s)]["acc"][-1] for s in seeds])
        table.append({"arm": "gate − nogate (secondary)", "iteration": args.iterations, "seeds": p["n"],
                      "delta [95% CI], t p, sign-flip p": f"{p['mean']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}], {p['t_p']:.3f}, {p['sign_p']:.3f}"})
    return table, csv_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("sweep", "accept"))
    parser.add_argument("--seeds", default="", help="comma-separated loop seeds (default: 0,1,2 for sweep, 0,1,2,3,4 for accept)")
    parser.add_argument("--grid", default=DEFAULT_GRID, help=f"sweep: lr:replay:rehearsal configurations, the first the reference (default {DEFAULT_GRID})")
    parser.add_argument("--lr", type=float, default=5e-4, help="accept: learning rate (default 5e-4)")
    parser.add_argument("--replay", type=int, default=16, help="accept: targeted replay items (default 16)")
    parser.add_argument("--rehearsal", type=int, default=16, help="accept: rehearsal items (default 16)")
    parser.add_argument("--arms", default="gate", help=f"accept: arms among {','.join(ARMS)} (default gate)")
    parser.add_argument("--iterations", type=int, default=3, help="accept: iterations per run (default 3)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="(default 0.1)")
    parser.add_argument("--lr-scheduler-type", default="cosine", help="(default cosine)")
    parser.add_argument("--train-epochs", type=float, default=2.0, help="(default 2)")
    from benchmarks.harness import add_loop_run_args

    add_loop_run_args(parser, ROOT / "runs" / "bench_update", remainder=False)
    parser.epilog = "More python -m agents.loop options, the same for every run, go after --."
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # loop options only after "--" (REMAINDER would take
    args = parser.parse_args(argv[:cut])                     # every option given after the phase)
    args.loop_args = argv[cut + 1:]
    seeds = [int(s) for s in (args.seeds or ("0,1,2" if args.phase == "sweep" else "0,1,2,3,4")).split(",") if s.strip()]
    try:
        parse_grid(args.grid)
    except ValueError:
        parser.error(f"--grid: expected lr:replay:rehearsal,... got {args.grid!r}")
    if not seeds or args.iterations < 1 or any(a.strip() not in ARMS for a in args.arms.split(",")):
        parser.error(f"--seeds needs a seed, --iterations >= 1, --arms among {', '.join(ARMS)}")
    table, csv_rows = (sweep if args.phase == "sweep" else accept)(args, seeds)
    from benchmarks.harness import append_rows, print_table

    print_table(table)
    print(f"appended to {append_rows('update', csv_rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
