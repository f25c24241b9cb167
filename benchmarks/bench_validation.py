"""How many wrong keys does each validation setting let through, and how many right ones does it keep?

    python -m scratch build --solver                          # once: the arithmetic teacher, student and independent solver
    python benchmarks/bench_validation.py                     # arithmetic: 256 items, every setting
    python benchmarks/bench_validation.py --domain clinical --items 32 --teacher smollm2

The teacher writes ``--items`` items once (the loop's generate stage, the budget spread evenly over the
tree's leaves), stored in ``--out/candidates.jsonl`` and reused on a rerun; then the same items are
validated under each setting (``SETTINGS``): today's (the teacher as blind solver and as critic, the
critic shown the generator's explanation), the critic without the explanation, self-consistency
(k sampled solver replies, a majority for the key), an independently trained solver, both, and the
domain's verifier before the agents. Model calls that repeat across settings are served from memory
(same prompts, same parameters, same completions), so each setting's seconds count only its new calls.

Per setting: items accepted; among them, keys right / wrong / unreadable by the domain's own answer key
(arithmetic: ``data.arithmetic.answer_key``, which reads the builder's templates, a code path apart from
the verifier's); the wrong share of the readable accepted keys; the right-key items kept, as a share
of every right-key candidate (recall), of the very items today's setting keeps, and as a count against
today's count; the items re-keyed by the verifier. Where no key can be computed (clinical) the acceptance and the agreement of solver and
critic are reported. Rows go to benchmarks/results/validation.csv; every setting's decisions go to
``--out/<setting>/`` for audit (each raw solver reply and the answer read from it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import append_rows  # noqa: E402

logger = logging.getLogger("bench_validation")


@dataclass(frozen=True)
class Setting:
    """One way of validating: which solver models vote (how many samples, how hot) and how the critic
    and the verifier take part."""

    name: str
    solvers: tuple[str, ...] = ("teacher",)  # roles: teacher, solver (the independent one)
    samples: int = 1
    temperature: float = 0.0
    min_share: float = 0.0  # 0: every vote (the default rule), unless min_votes
    min_votes: int = 0  # k of the pooled votes (0: the share rule)
    critic: bool = True
    critic_sees_explanation: bool = False
    verifier: bool = False


SETTINGS = (
    Setting("today", critic_sees_explanation=True),
    Setting("critic_blind"),
    Setting("sc5", samples=5, temperature=0.7, min_share=0.5),
    Setting("sc9", samples=9, temperature=0.7, min_share=0.5),
    Setting("independent", solvers=("solver",)),
    Setting("sc5_independent", solvers=("teacher", "solver"), samples=5, temperature=0.7, min_share=0.5),
    # the same votes as sc5_independent, a stricter rule: 8 of the 10 pooled votes, so that neither model
    # alone carries an item (a confident teacher's 5 votes for its own wrong key are not enough)
    Setting("sc5_independent_8of10", solvers=("teacher", "solver"), samples=5, temperature=0.7, min_votes=8),
    Setting("verifier", critic_sees_explanation=True, verifier=True),
    Setting("verifier_sc5_independent", solvers=("teacher", "solver"), samples=5, temperature=0.7, min_share=0.5, verifier=True),
)


class CachedEngine:
    """An engine whose identical calls (same prompts, same parameters) are answered from a file of earlier
    answers: the settings share most of their model calls, seeded sampling makes a repeated call the same,
    and a rerun (or a setting added later) costs only its new calls."""

    def __init__(self, engine: Any, path: Path) -> None:
        self.engine, self.name, self.path = engine, engine.name, path
        self.enforces_json_schema = getattr(engine, "enforces_json_schema", False)
        self.memory: dict[str, Any] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                self.memory[entry["key"]] = entry["value"]

    def _call(self, method: str, prompts: Sequence[Any], extra: Any, encode: Any) -> Any:
        key = json.dumps([self.name, method, list(prompts), repr(extra)], sort_keys=True, default=str)
        if key not in self.memory:
            self.memory[key] = encode(getattr(self.engine, method)(prompts, extra))
            with self.path.open("a", encoding="utf-8") as f:  # appended whole lines: a killed run loses at most its last call
                f.write(json.dumps({"key": key, "value": self.memory[key]}) + "\n")
        return self.memory[key]

    def generate(self, prompts, params):
        from engines.base import Completion

        rows = self._call("generate", prompts, params, lambda out: [[c.text, c.finish_reason, c.num_tokens] for c in out])
        return [Completion(*row) for row in rows]

    def choice_logprobs(self, prompts, choices):
        return self._call("choice_logprobs", prompts, list(choices), list)

    def close(self) -> None:
        self.engine.close()


def generate_candidates(args: argparse.Namespace, domain: Any, teacher: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """The teacher's items for ``args.items`` requests spread evenly over the leaves (as the loop's
    generate stage writes them), stored in ``--out`` and read back on a rerun."""
    from data.records import GeneratedItem, read_jsonl, write_jsonl
    from synth.generate import SynthConfig, generate_items
    from synth.targets import node_briefs, node_exemplars
    from tree.allocate import AllocationConfig, allocate
    from tree.build import build_tree

    stored, unparsed_file = args.out / "candidates.jsonl", args.out / "unparsed.jsonl"
    if stored.is_file():
        return read_jsonl(stored, GeneratedItem), read_jsonl(unparsed_file)
    seed_items = domain.seed_items()
    tree = build_tree([*seed_items, *domain.eval_items()], root=domain.root).tree
    for node, description in domain.descriptions.items():
        tree.add_ability(node, description, exist_ok=True)
    alloc = allocate(tree, args.items, None, AllocationConfig(strategy="uniform", seed=args.seed))
    targets = [node for node, count in alloc.items() if count > 0]
    exemplars = node_exemplars(tree, seed_items, targets, 4, args.seed)
    synth = SynthConfig(seed=args.seed, domain=domain.root)
    if domain.answer_mode == "generate":  # as agents.stages.generate asks a generate-mode domain
        synth = replace(synth, explanation_first=True, max_new_tokens=synth.max_new_tokens + domain.answer_max_tokens)
    t0 = time.perf_counter()
    result = generate_items(teacher, alloc, node_briefs(tree, targets), exemplars, synth, iteration=1)
    logger.info("generated %d items for %d requests in %.0f s", len(result.items), args.items, time.perf_counter() - t0)
    write_jsonl(unparsed_file, result.rejected)
    write_jsonl(stored, result.items)
    return result.items, result.rejected


@dataclass
class Counts:
    accepted: int = 0
    right: int = 0
    wrong: int = 0
    unreadable: int = 0
    right_ids: set[str] = field(default_factory=set)


def key_counts(items: Sequence[Any], check: Any) -> Counts:
    """Right / wrong / unreadable keys by the domain's answer key (``check(item) -> bool | None``)."""
    c = Counts(accepted=len(items))
    for it in items:
        verdict = check(it) if check else None
        if verdict is None:
            c.unreadable += 1
        elif verdict:
            c.right += 1
            c.right_ids.add(it.id)
        else:
            c.wrong += 1
    return c


def run_setting(setting: Setting, candidates: Sequence[Any], engines: dict[str, Any], domain: Any, args: argparse.Namespace) -> Any:
    from data.records import atomic_write_json, write_jsonl
    from data.verification import load_verifier
    from synth.validate import ValidationConfig, validate_items

    config = ValidationConfig(
        acceptance="both" if setting.critic else "solver", seed=args.seed, domain=domain.root, solver_samples=setting.samples,
        solver_temperature=setting.temperature, solver_min_share=setting.min_share, solver_min_votes=setting.min_votes,
        critic_sees_explanation=setting.critic_sees_explanation,
        solver_mode=domain.answer_mode, solver_max_tokens=domain.answer_max_tokens,
    )
    verifier = load_verifier(domain.verifier) if setting.verifier else None
    t0 = time.perf_counter()
    result = validate_items(candidates, solver=[engines[role] for role in setting.solvers], critic=engines["teacher"] if setting.critic else None,
                            seed_pool=domain.seed_items(), eval_items=domain.eval_items(), config=config,
                            verifier=verifier, verifier_name=domain.verifier if verifier else "")
    seconds = time.perf_counter() - t0
    out = args.out / setting.name
    write_jsonl(out / "validated.jsonl", result.accepted)
    write_jsonl(out / "rejected.jsonl", result.rejected)
    write_jsonl(out / "decisions.jsonl", result.decisions)
    atomic_write_json(out / "report.json", result.report)
    return result, seconds


def agreement(decisions: Sequence[dict[str, Any]]) -> float | None:
    """Share of the items both agents judged on which the solver's pass and the critic's accept agree."""
    both = [d for d in decisions if "solver_passed" in d and "critic_accept" in d]
    return sum(d["solver_passed"] == d["critic_accept"] for d in both) / len(both) if both else None


def answer_check(domain: Any):
    """The domain's own key check, apart from its verifier: arithmetic's answer key, else none."""
    if domain.name == "arithmetic":
        from data.arithmetic.answer_key import key_is_right

        return lambda it: key_is_right(it.question, it.options, it.answer_idx)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--domain", default="arithmetic", help="domain preset (default: arithmetic)")
    parser.add_argument("--teacher", default="", help="generator, blind solver and critic (default: scratch:<domain>/teacher for arithmetic, else smollm2)")
    parser.add_argument("--solver", default="", help="the independent solver (default: scratch:arithmetic/solver on arithmetic; none elsewhere: those settings are skipped)")
    parser.add_argument("--items", type=int, default=256, help="requests to the teacher (default: 256)")
    parser.add_argument("--settings", default="", help="comma-separated setting names (default: all): " + ", ".join(s.name for s in SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder of the stored items and each setting's decisions (default: runs/bench-validation-<domain>)")
    parser.add_argument("--no-csv", action="store_true", help="print only; append nothing to benchmarks/results/validation.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from data.domains import get_domain
    from engines import EngineConfig, load_engine
    from eval.metrics import wilson_interval

    domain = get_domain(args.domain)
    args.teacher = args.teacher or (f"scratch:{domain.name}/teacher" if domain.name == "arithmetic" else "smollm2")
    args.solver = args.solver or (f"scratch:{domain.name}/solver" if domain.name == "arithmetic" else "")
    args.out = args.out or ROOT / "runs" / f"bench-validation-{domain.name}"
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in SETTINGS if not args.settings or s.name in args.settings.split(",")]
    if not args.solver:
        skipped = [s.name for s in wanted if "solver" in s.solvers]
        if skipped:
            print(f"no independent solver model for {domain.name}: skipping {', '.join(skipped)}")
        wanted = [s for s in wanted if "solver" not in s.solvers]
    if not domain.verifier:
        wanted = [s for s in wanted if not s.verifier]
    engine_config = EngineConfig(engine="transformers")
    engines = {"teacher": CachedEngine(load_engine(args.teacher, engine_config), args.out / "calls-teacher.jsonl")}
    if args.solver and any("solver" in s.solvers for s in wanted):
        engines["solver"] = CachedEngine(load_engine(args.solver, engine_config), args.out / "calls-solver.jsonl")
    candidates, unparsed = generate_candidates(args, domain, engines["teacher"].engine)
    check = answer_check(domain)
    pool = key_counts(candidates, check)
    print(f"{len(candidates)} candidates of {args.items} requests ({len(unparsed)} failed attempts); "
          + (f"keys as written: {pool.right} right, {pool.wrong} wrong, {pool.unreadable} unreadable" if check else
             f"no key check on {domain.name}: acceptance and solver-critic agreement only"))

    rows, today_right = [], None
    if "today" not in {s.name for s in wanted}:  # the right-key items today's setting keeps: the recall reference
        wanted = [SETTINGS[0], *wanted]
    for setting in wanted:
        result, seconds = run_setting(setting, candidates, engines, domain, args)
        c = key_counts(result.accepted, check)
        if setting.name == "today":
            today_right = c.right_ids
        readable = c.right + c.wrong
        v = result.report.get("verifier") or {}
        row = {
            "domain": domain.name, "teacher": args.teacher, "independent_solver": args.solver if "solver" in setting.solvers else "",
            "setting": setting.name, "solvers": "+".join(setting.solvers), "samples": setting.samples, "temperature": setting.temperature,
            "min_share": setting.min_share, "min_votes": setting.min_votes, "critic": setting.critic, "critic_sees_explanation": setting.critic_sees_explanation,
            "verifier": setting.verifier, "candidates": len(candidates), "candidate_keys_right": pool.right, "candidate_keys_wrong": pool.wrong,
            "candidate_keys_unreadable": pool.unreadable, "accepted": c.accepted,
            "keys_right": c.right if check else "", "keys_wrong": c.wrong if check else "", "keys_unreadable": c.unreadable if check else "",
            "wrong_share_of_readable": round(c.wrong / readable, 4) if check and readable else "",
            "wrong_share_ci95": "[{:.3f}, {:.3f}]".format(*wilson_interval(c.wrong, readable)) if check and readable else "",
            "recall_of_right_keys": round(c.right / pool.right, 4) if check and pool.right else "",
            "kept_of_todays_right": round(len(c.right_ids & today_right) / len(today_right), 4) if check and today_right else "",
            "right_vs_todays": round(c.right / len(today_right), 4) if check and today_right else "",
            "rekeyed": v.get("rekeyed", ""), "verifier_rejected": v.get("rejected", ""),
            "rejected_by_stage": json.dumps({k: n for k, n in result.report["rejected_by_stage"].items() if n}),
            "solver_critic_agreement": round(a, 4) if (a := agreement(result.decisions)) is not None else "",
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        print(f"{setting.name:<26} accepted {c.accepted:>3}" + (
            f"  right {c.right:>3} wrong {c.wrong:>3} unreadable {c.unreadable:>3}  wrong/readable {row['wrong_share_of_readable']} {row['wrong_share_ci95']}"
            f"  recall {row['recall_of_right_keys']}  kept of today's right {row['kept_of_todays_right']}" if check else
            f"  solver-critic agreement {row['solver_critic_agreement']}") + f"  {seconds:.0f} s", flush=True)
    for engine in engines.values():
        engine.close()
    if not args.no_csv:
        print(f"rows appended to {append_rows('validation', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
