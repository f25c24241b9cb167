"""Generate validated MCQs for the weakest nodes of an ability tree, or validate items you already have.

    python -m synth generate --teacher smollm2 --tree tree.json --nodes 4 --budget 40 --out gen/
    python -m synth generate ... --add-candidates planted.jsonl       # your items join the same gates
    python -m synth validate --candidates items.jsonl --out checked/  # gates + agents only

The tree needs recorded results (``python -m tree record``, or a run's B_student_tree/tree.json) for
"weakest" to mean anything; without them the budget is spread over its leaves. Output folder:
candidates.jsonl, unparsed.jsonl, validated.jsonl, rejected.jsonl (every rejected item with ``stage``
and ``reason``), decisions.jsonl (what each agent said), report.json; the same report is printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from data.cli import add_dataclass_options, dataclass_from_args
from data.records import (
    DataError,
    GeneratedItem,
    MCQItem,
    atomic_write_json,
    check_writable,
    read_items,
    read_jsonl,
    write_jsonl,
)
from data.verification import NO_VERIFIER, load_verifier
from synth.generate import SynthConfig
from synth.report import node_table, positions_table, reason_table, summary_line
from synth.validate import ValidationConfig

logger = logging.getLogger(__name__)

OUTPUTS = ("candidates.jsonl", "unparsed.jsonl", "validated.jsonl", "rejected.jsonl", "decisions.jsonl", "report.json")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m synth", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="the teacher writes items for the weakest nodes; gates and agents check them")
    gen.add_argument("--teacher", required=True, help="model spec: smollm2, hf:PATH, vllm:PATH, openai:URL#MODEL")
    gen.add_argument("--tree", type=Path, required=True, help="ability tree JSON, ideally with recorded results")
    gen.add_argument("--nodes", type=int, default=4, help="target the N nodes of largest expected shortfall: weak and uncertain (default: 4)")
    gen.add_argument("--budget", type=int, default=40, help="items to request, spread over the target nodes (default: 40)")
    gen.add_argument("--allocation", choices=("weakness", "uniform"), default="weakness", help="how the budget is split (default: weakness)")
    gen.add_argument("--exemplars-pool", type=int, default=4, help="seed items drawn per node; each request shows --exemplars-per-item of them (default: 4)")
    gen.add_argument("--exemplar-choice", choices=("random", "embedding"), default="random", help="random draw from the node (then subtree, siblings), or the node's items nearest in meaning to it, then the nearest others (with --encoder); default: random")
    gen.add_argument("--add-candidates", type=Path, default=None, help="JSONL of items (GeneratedItem fields) that join the batch, e.g. a planted test item")
    val = sub.add_parser("validate", help="run the gates and agents on items you already have")
    val.add_argument("--candidates", type=Path, required=True, help="JSONL of items with GeneratedItem fields (target_node required)")
    for p in (gen, val):
        p.add_argument("--domain", default="clinical", help="domain preset or domain.yaml: its seed pool (exemplars, duplicates) and eval files (contamination); default: clinical")
        p.add_argument("--decontaminate", type=Path, nargs="*", default=[], help="more evaluation files no item may share a 13-gram with")
        p.add_argument("--solver", default="", help="blind solver model spec(s), comma-separated (default: the teacher)")
        p.add_argument("--critic", default="", help="critic model spec (default: the teacher)")
        p.add_argument("--verifier", default="", help="judge of the keys before the agents: module:function or file.py:function, or none (default: the domain's verifier, if it has one)")
        p.add_argument("--engine", default="auto", help="backend for local models: auto, transformers, vllm (default: auto)")
        p.add_argument("--threads", type=int, default=0, help="CPU threads for transformers (default 0: auto)")
        p.add_argument("--batch-size", type=int, default=16, help="prompts per transformers batch (default: 16)")
        p.add_argument("--seed", type=int, default=0, help="seed of sampling, shuffles and rebalancing (default: 0)")
        p.add_argument("--out", type=Path, required=True, help="folder to write the outputs into")
        p.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
        add_dataclass_options(p, ValidationConfig, skip=("seed", "domain"))
    val.add_argument("--teacher", default="", help="default model for --solver and --critic")
    add_dataclass_options(gen, SynthConfig, skip=("seed", "domain"))
    return parser


class Engines:
    """Each model spec loaded once, however many roles it plays."""

    def __init__(self, args: argparse.Namespace) -> None:
        from engines import EngineConfig

        self.config = EngineConfig(engine=args.engine, threads=args.threads, batch_size=args.batch_size)
        self.loaded: dict[str, Any] = {}

    def get(self, spec: str):
        from engines import load_engine

        if spec not in self.loaded:
            self.loaded[spec] = load_engine(spec, self.config)
        return self.loaded[spec]

    def close(self) -> None:
        for engine in self.loaded.values():
            engine.close()


def _check_out(out: Path, force: bool) -> None:
    check_writable(out, "--out")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise DataError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite, or choose another --out")


def _agent_specs(args: argparse.Namespace, acceptance: str) -> tuple[list[str], str]:
    """The solver and critic specs the acceptance rule needs (the teacher by default); "" for unused roles."""
    solvers = [s.strip() for s in args.solver.split(",")] if args.solver else [args.teacher]
    critic = args.critic or args.teacher
    if acceptance != "critic" and not all(solvers):
        raise ValueError(f"acceptance {acceptance!r} needs a solver: pass --solver (or --teacher)")
    if acceptance != "solver" and not critic:
        raise ValueError(f"acceptance {acceptance!r} needs a critic: pass --critic (or --teacher)")
    return (solvers if acceptance != "critic" else []), (critic if acceptance != "solver" else "")


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from data.domains import get_domain
    from synth.validate import unparsed_requests, validate_items

    _check_out(args.out, args.force)
    engines = Engines(args)  # its options checked now; models are loaded when first used
    domain = get_domain(args.domain)
    vconfig = dataclass_from_args(ValidationConfig, args, seed=args.seed, domain=domain.root)
    solver_specs, critic_spec = _agent_specs(args, vconfig.acceptance)
    verifier_spec = "" if args.verifier == NO_VERIFIER else (args.verifier or domain.verifier)
    verifier = load_verifier(verifier_spec, "--verifier" if args.verifier else f"{args.domain}: verifier") if verifier_spec else None
    seed_items = domain.seed_items()
    eval_items: list[MCQItem] = [*domain.eval_items(), *(read_items(args.decontaminate) if args.decontaminate else [])]
    report: dict[str, Any] = {"domain": domain.name, "solvers": solver_specs, "critic": critic_spec, "verifier": verifier_spec, "seconds": {}}
    candidates: list[GeneratedItem] = []
    unparsed: list[dict[str, Any]] = []
    if args.command == "validate":
        candidates = read_jsonl(args.candidates, GeneratedItem)
        if not candidates:
            raise DataError(f"{args.candidates}: no items (the file is empty)")
        report["candidates_file"] = str(args.candidates)
    else:
        added = read_jsonl(args.add_candidates, GeneratedItem) if args.add_candidates else []
        plan = _plan(args, seed_items)
        report.update(teacher=args.teacher, budget=args.budget, allocation=plan["allocation"], added_candidates=len(added))
    try:
        if args.command == "generate":
            from synth.generate import generate_items

            sconfig = dataclass_from_args(SynthConfig, args, seed=args.seed, domain=domain.root)
            t0 = time.perf_counter()
            teacher = engines.get(args.teacher)
            report["seconds"]["load"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            generated = generate_items(teacher, plan["allocation"], plan["briefs"], plan["exemplars"], sconfig, iteration=0)
            report["seconds"]["generate"] = time.perf_counter() - t0
            report["generation"] = generated.report
            candidates, unparsed = [*generated.items, *added], generated.rejected
            console.print(f"generated {len(generated.items)} candidates for {generated.report['requested']} requests"
                          f" ({len(generated.rejected)} failed attempts) in {report['seconds']['generate']:.0f} s")
        t0 = time.perf_counter()
        solvers = [engines.get(s) for s in solver_specs]
        critic = engines.get(critic_spec) if critic_spec else None
        report["seconds"]["load"] = report["seconds"].get("load", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        result = validate_items(candidates, solver=solvers, critic=critic, seed_pool=seed_items, eval_items=eval_items, config=vconfig,
                                verifier=verifier, verifier_name=verifier_spec)
        report["seconds"]["validate"] = time.perf_counter() - t0
    finally:
        engines.close()
    never_parsed = unparsed_requests(unparsed, candidates)
    report["validation"] = result.report
    report["unparsed_requests"] = len(never_parsed)
    work = report["seconds"].get("generate", 0.0) + report["seconds"]["validate"]
    report["seconds"]["total"] = work
    report["items_per_minute"] = {
        "candidates": 60.0 * len(candidates) / work if work else 0.0,
        "accepted": 60.0 * len(result.accepted) / work if work else 0.0,
    }
    out = args.out
    write_jsonl(out / "candidates.jsonl", candidates)
    write_jsonl(out / "unparsed.jsonl", unparsed)
    write_jsonl(out / "validated.jsonl", result.accepted)
    write_jsonl(out / "rejected.jsonl", [*never_parsed, *result.rejected])
    write_jsonl(out / "decisions.jsonl", result.decisions)
    atomic_write_json(out / "report.json", report)
    return report


def _exemplar_embed(args: argparse.Namespace):
    """The encoder's embed function when exemplars are chosen by meaning, else None."""
    if getattr(args, "exemplar_choice", "random") != "embedding":
        return None
    from synth.validate import encoder_embed

    return encoder_embed(args.encoder)


def _plan(args: argparse.Namespace, seed_items: Sequence[MCQItem]) -> dict[str, Any]:
    """Allocation over the weakest nodes, their briefs and exemplars."""
    from synth.targets import node_briefs, node_exemplars
    from tree.ability_tree import AbilityTree
    from tree.allocate import AllocationConfig, allocate

    if args.nodes < 1 or args.budget < 1:
        raise ValueError("--nodes and --budget must be >= 1")
    tree = AbilityTree.load(args.tree)
    if not tree.data_nodes():
        logger.warning("%s has no recorded results: the budget goes to its leaves, not to weak nodes "
                       "(record some with python -m tree record)", args.tree)
    allocation = allocate(tree, args.budget, None, AllocationConfig(strategy=args.allocation, seed=args.seed, max_nodes=args.nodes))
    targets = [n for n, c in allocation.items() if c > 0]
    return {
        "allocation": allocation,
        "briefs": node_briefs(tree, targets),
        "exemplars": node_exemplars(tree, seed_items, targets, args.exemplars_pool, args.seed, embed=_exemplar_embed(args)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    # Tables are wide; rich falls back to 80 columns when stdout is a file or a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=132)
    from engines.smollm2 import ModelNotFoundError
    from tree.ability_tree import TreeError

    try:
        report = run(args, console)
    except (DataError, TreeError, ModelNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for table in (node_table(report), reason_table(report), positions_table(report)):
        console.print(table)
    console.print(summary_line(report), highlight=False)
    console.print(f"wrote {', '.join(OUTPUTS)} to {args.out}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
