"""What each stage reads, calls and writes. Glue only: the work is done by tree/, synth/, eval/, training/.

Every ``<stage>_inputs`` returns the config values and input paths whose fingerprint decides whether a
stored result may be reused; every ``<stage>`` writes its outputs (atomically) into ``out`` and returns a
small JSON-able summary that goes into the graph state and the report.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from agents.context import LoopContext
from agents.state import LoopState
from data.records import (
    DataError,
    GeneratedItem,
    MCQItem,
    atomic_write_json,
    read_jsonl,
    write_jsonl,
)
from data.run_layout import MARKER
from data.splits import stratified

logger = logging.getLogger(__name__)


def _model_inputs(spec: str) -> list[Path]:
    """A trained student is a folder in the run dir: its bytes are an input of whatever uses it."""
    return [Path(spec[3:])] if spec.startswith("hf:") and Path(spec[3:]).is_dir() else []


def _prev(ctx: LoopContext, state: LoopState, stage: str) -> Path | None:
    it = state["iteration"]
    return ctx.run.stage(it - 1, stage) if it > 1 else None


# ------------------------------------------------------------------------------------------ infer


def select_probe(items: list[MCQItem], n: int, seed: int) -> list[MCQItem]:
    """A fixed probe set, stratified over sources so every part of the tree is seen each iteration."""
    return stratified(items, n, seed, lambda i: i.source)


def _answer_mode(ctx: LoopContext) -> dict[str, Any]:
    """The domain's answer mode, for fingerprints (only when not the default: older runs keep theirs)."""
    d = ctx.domain
    return {} if d.answer_mode == "logprob" else {"answer_mode": d.answer_mode, "answer_max_tokens": d.answer_max_tokens}


def score_request(ctx: LoopContext, spec: str, split: str):
    """The score-cache key of ``spec`` answering ``split`` the domain's way (eval.score_cache)."""
    from eval.score_cache import ScoreRequest, model_identity

    return ScoreRequest(model=model_identity(spec), split=split, mode=ctx.domain.answer_mode,
                        max_new_tokens=ctx.domain.answer_max_tokens, engine=ctx.config.engine)


def _score(ctx: LoopContext, spec: str, items: list[MCQItem], split: str):
    """``spec``'s replies to ``items``: reused where the same model already answered the same items the
    same way (this run or another), else scored with the engine and kept (eval.score_cache)."""
    return ctx.score_cache.score(score_request(ctx, spec, split), lambda: ctx.engines.get(spec), items)




def infer_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    c = ctx.config
    values = {"student": state["student"], "probe_size": c.probe_size, "seed": c.seed, **_answer_mode(ctx)}
    return values, [*ctx.domain.seed_files, *_model_inputs(state["student"])]


def infer(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    probe = select_probe(ctx.seed_items, ctx.config.probe_size, ctx.config.seed)
    result = _score(ctx, state["student"], probe, "probe")
    write_jsonl(out / "replies.jsonl", result.replies)
    n_correct = sum(r.correct for r in result.replies)
    return {"n": len(probe), "correct": n_correct, "accuracy": n_correct / len(probe), "items_per_s": result.items_per_s,
            "reused_scores": result.reused}


# ---------------------------------------------------------------------------------------- analyze


def analyze_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    prev = _prev(ctx, state, "analyze")
    paths = [ctx.run.stage(state["iteration"], "infer") / "replies.jsonl", *ctx.domain.seed_files, *ctx.domain.eval_files]
    if prev:
        return {"teacher": ctx.config.teacher}, [*paths, prev / "tree.json"]
    base = [Path(ctx.config.tree)] if ctx.config.tree else []
    return {"teacher": ctx.config.teacher, "classify": ctx.config.classify, "tree": ctx.config.tree}, [*paths, *base]


def _initial_tree(ctx: LoopContext):
    """The run's starting tree (tree/initial.json): the base tree file or the domain root, the items'
    ability paths, and the teacher's placement of items without a path (``tree.build``)."""
    from tree import AbilityTree
    from tree.build import build_tree

    base = AbilityTree.load(ctx.config.tree) if ctx.config.tree else None  # its root was checked at start-up
    engine = ctx.engines.get(ctx.config.teacher) if ctx.config.classify else None
    result = build_tree([*ctx.seed_items, *ctx.eval_items], root=ctx.domain.root, base=base, engine=engine)
    for node, description in ctx.domain.descriptions.items():  # the preset's words for its nodes, where none is set
        result.tree.add_ability(node, description, exist_ok=True)
    result.tree.save(ctx.run.initial_tree)
    if result.fallbacks:
        write_jsonl(ctx.run.initial_tree.with_name("placement_fallbacks.jsonl"),
                    [{"id": i, "reason": why} for i, why in sorted(result.fallbacks.items())])
    return result.tree


def analyze(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    from data.records import Reply
    from tree import AbilityTree
    from tree.diagnose import diagnose
    from tree.export import export as export_tree

    it = state["iteration"]
    prev = _prev(ctx, state, "analyze")
    if prev is not None:
        tree = AbilityTree.load(prev / "tree.json")
    else:
        tree = _initial_tree(ctx)
    replies = read_jsonl(ctx.run.stage(it, "infer") / "replies.jsonl", Reply)
    results = [(r.id, tree.node_of(ctx.items_by_id[r.id]), r.correct) for r in replies]
    tree.record(results, iteration=it)
    wrong: dict[str, list[tuple[MCQItem, str | None]]] = defaultdict(list)
    for r, (_, node, _) in zip(replies, results):
        if not r.correct:
            wrong[node].append((ctx.items_by_id[r.id], r.parsed_answer))
    for missed in wrong.values():  # the shortest misses first: they make the shortest prompts
        missed.sort(key=lambda m: len(m[0].question))
    before = set(tree.nodes())
    dropped: Counter = Counter()  # diagnosis lines refused, by reason (shape, option, question, prompt echoes)
    diagnoses = diagnose(ctx.engines.get(ctx.config.teacher), tree, wrong, max_per_node=2, rejected=dropped)
    grown = [n for n in tree.nodes() if n not in before]  # child abilities named by the diagnoses
    tree.save(out / "tree.json")
    export_tree(tree, out / "tree.graphml", "graphml", it)
    export_tree(tree, out / "tree.html", "html", it)
    weakest = tree.weakest(5, iteration=it)
    return {
        "nodes": tree.graph.number_of_nodes(),
        "diagnosed_nodes": sum(1 for d in diagnoses.values() if d),
        "diagnoses": {n: d for n, d in diagnoses.items() if d},
        "diagnosis_lines_dropped": dict(sorted(dropped.items())),
        "new_abilities": grown,
        "weakest": [{"node": n, "accuracy": round(a, 3)} for n, a in weakest],
    }


# --------------------------------------------------------------------------------------- generate


def generate_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    c = ctx.config
    values = {"teacher": c.teacher, "budget": c.budget, "allocation": c.allocation, "exemplars": c.exemplars, "seed": c.seed}
    if c.exemplar_choice != "random":  # only then: the inputs of runs made before the option stay the same
        values |= {"exemplar_choice": c.exemplar_choice, "encoder": ctx.encoder_spec}
    values |= _answer_mode(ctx)  # a generate-mode domain's items are written with their worked solution first
    allocation = _allocation_config(ctx, 0)
    if (allocation.floor, allocation.max_nodes, allocation.temperature) != (1, None, 1.0):  # likewise
        values |= {"allocation_floor": allocation.floor, "allocation_max_nodes": allocation.max_nodes, "allocation_temperature": allocation.temperature}
    paths = [ctx.run.stage(state["iteration"], "analyze") / "tree.json", *ctx.domain.seed_files]
    if c.generator != "teacher":
        values |= {"generator": c.generator, "oracle": ctx.domain.oracle}
        paths += [*ctx.domain.eval_files, *ctx.domain.dev_files]  # what its items must not repeat
    return values, paths


def _allocation_config(ctx: LoopContext, iteration: int):
    """The allocation of iteration ``iteration`` (its tie-breaking seed) from the loop's options."""
    from tree.allocate import AllocationConfig

    c = ctx.config
    return AllocationConfig(strategy=c.allocation, seed=c.seed + iteration, floor=c.allocation_floor,
                            max_nodes=c.allocation_max_nodes or None, temperature=c.allocation_temperature)


def generate(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    from synth.generate import SynthConfig, generate_items
    from synth.targets import node_briefs, node_exemplars
    from tree import AbilityTree
    from tree.allocate import allocate

    it, c = state["iteration"], ctx.config
    tree = AbilityTree.load(ctx.run.stage(it, "analyze") / "tree.json")
    alloc = allocate(tree, c.budget, it, _allocation_config(ctx, it))
    atomic_write_json(out / "allocation.json", alloc)
    targets = [node for node, count in alloc.items() if count > 0]
    if c.generator == "oracle":
        return _write_oracle_items(ctx, alloc, it, out)
    embed = ctx.embed if c.exemplar_choice == "embedding" else None
    exemplars = node_exemplars(tree, ctx.seed_items, targets, c.exemplars * 4, c.seed + it, embed=embed)
    synth = SynthConfig(seed=c.seed + it, exemplars_per_item=c.exemplars, domain=ctx.domain.root)
    if ctx.domain.answer_mode == "generate":  # work the answer out before the options are written (scratch.tasks)
        synth = replace(synth, explanation_first=True, max_new_tokens=synth.max_new_tokens + ctx.domain.answer_max_tokens)
    result = generate_items(ctx.engines.get(c.teacher), alloc, node_briefs(tree, targets), exemplars, synth, iteration=it)
    write_jsonl(out / "candidates.jsonl", result.items)
    write_jsonl(out / "unparsed.jsonl", result.rejected)
    atomic_write_json(out / "report.json", result.report)
    return {"requested": c.budget, "candidates": c.budget, "parsed": len(result.items), "failed_attempts": len(result.rejected), "nodes": len(targets),
            "explanation_first": synth.explanation_first}


def _write_oracle_items(ctx: LoopContext, alloc: dict[str, int], it: int, out: Path) -> dict[str, Any]:
    """The generate stage's files, written by the domain's oracle (synth.oracle) instead of the teacher."""
    from synth.oracle import oracle_items

    pools = [*ctx.seed_items, *ctx.domain.eval_items(), *ctx.domain.dev_items()]
    result = oracle_items(ctx.oracle, alloc, ctx.config.seed, it, exclude={i.question for i in pools}, name=f"oracle:{ctx.domain.oracle}")
    write_jsonl(out / "candidates.jsonl", result.items)
    write_jsonl(out / "unparsed.jsonl", [])
    atomic_write_json(out / "report.json", result.report)
    return {"requested": ctx.config.budget, "candidates": ctx.config.budget, "parsed": len(result.items), "failed_attempts": 0,
            "nodes": sum(1 for n in alloc.values() if n > 0), "generator": "oracle", "short": sum(result.report["short"].values())}


# --------------------------------------------------------------------------------------- validate


def validate_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    c = ctx.config
    values = {"solver": c.solver_specs, "critic": c.critic_spec, "acceptance": c.acceptance, "seed": c.seed,
              "solver_samples": c.solver_samples, "solver_min_votes": c.solver_min_votes}
    # Only where they are not the defaults, so that runs made before these options keep their fingerprints.
    if c.solver_min_share or c.solver_temperature:
        values |= {"solver_min_share": c.solver_min_share, "solver_temperature": c.solver_temperature}
    values |= _critic_and_verifier(ctx)
    if c.near_dup_metric != "rouge_l":
        values |= {"near_dup_metric": c.near_dup_metric, "encoder": ctx.encoder_spec if c.near_dup_metric == "embedding" else ""}
    return values, [ctx.run.stage(state["iteration"], "generate") / "candidates.jsonl", *ctx.domain.seed_files, *ctx.domain.eval_files]


def _critic_and_verifier(ctx: LoopContext) -> dict[str, Any]:
    """The critic-explanation and verifier settings, for fingerprints (runs made before these options
    showed the critic the explanation and had no verifier: their stored validation is not reused)."""
    c = ctx.config
    values: dict[str, Any] = {"critic_sees_explanation": c.critic_sees_explanation} if c.acceptance != "solver" else {}
    if ctx.verifier_spec:
        values |= {"verifier": ctx.verifier_spec, "verifier_on_wrong": c.verifier_on_wrong, "verifier_unknown": c.verifier_unknown}
    return values


def validate(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    from synth.validate import ValidationConfig, agents_needed, unparsed_requests, validate_items

    it, c = state["iteration"], ctx.config
    need_solver, need_critic = agents_needed(c.acceptance)
    gen = ctx.run.stage(it, "generate")
    candidates = read_jsonl(gen / "candidates.jsonl", GeneratedItem)
    # Only the agents the acceptance rule asks are loaded.
    result = validate_items(
        candidates,
        solver=[ctx.engines.get(spec) for spec in c.solver_specs] if need_solver else None,
        critic=ctx.engines.get(c.critic_spec) if need_critic else None,
        seed_pool=ctx.seed_items,
        eval_items=ctx.domain.eval_items(),  # decontaminate against every eval item, not only the scored subset
        config=ValidationConfig(
            acceptance=c.acceptance,
            seed=c.seed + it,
            domain=ctx.domain.root,
            solver_samples=c.solver_samples,
            solver_min_votes=c.solver_min_votes,
            solver_min_share=c.solver_min_share,
            solver_temperature=c.solver_temperature,
            critic_sees_explanation=c.critic_sees_explanation,
            verifier_on_wrong=c.verifier_on_wrong,
            verifier_unknown=c.verifier_unknown,
            solver_mode=ctx.domain.answer_mode,
            solver_max_tokens=ctx.domain.answer_max_tokens,
            near_dup_metric=c.near_dup_metric,
        ),
        embed=ctx.embed if c.near_dup_metric == "embedding" else None,
        verifier=ctx.verifier,
        verifier_name=ctx.verifier_spec,
    )
    # Requests whose every generation attempt failed to parse are rejected items too (last attempt kept).
    unparsed = unparsed_requests(read_jsonl(gen / "unparsed.jsonl"), candidates)
    rejected = [*unparsed, *result.rejected]
    write_jsonl(out / "validated.jsonl", result.accepted)
    write_jsonl(out / "rejected.jsonl", rejected)
    write_jsonl(out / "decisions.jsonl", result.decisions)
    report = {**result.report, "unparsed_requests": len(unparsed)}
    atomic_write_json(out / "report.json", report)
    return {
        "candidates": len(candidates),
        "accepted": len(result.accepted),
        "rejected": len(rejected),
        "rejected_by_stage": {"parse": len(unparsed), **result.report.get("rejected_by_stage", {})},
        "verifier": result.report["verifier"],  # its verdicts and what followed; None: no verifier (the report says so)
    }


# ------------------------------------------------------------------------------------------ label


def _training_pool(ctx: LoopContext, state: LoopState) -> list[MCQItem]:
    """Seed-pool items the student may be trained on: never probe items (the dev split and the eval
    set are other files, checked disjoint from the seed pool by data.domains)."""
    probe_ids = {r["id"] for r in read_jsonl(ctx.run.stage(state["iteration"], "infer") / "replies.jsonl")}
    return [i for i in ctx.seed_items if i.id not in probe_ids]


def select_replay(ctx: LoopContext, state: LoopState, n: int) -> list[MCQItem]:
    """Targeted replay: seed-pool items of the weakest nodes first (never probe, dev or eval items)."""
    from tree import AbilityTree

    it = state["iteration"]
    tree = AbilityTree.load(ctx.run.stage(it, "analyze") / "tree.json")
    rank = {node: i for i, (node, _) in enumerate(tree.weakest(None, iteration=it))}
    pool = _training_pool(ctx, state)
    rng = random.Random(ctx.config.seed + it)
    rng.shuffle(pool)
    pool.sort(key=lambda i: rank.get(tree.node_of(i), len(rank)))
    return pool[:n]


def select_rehearsal(ctx: LoopContext, state: LoopState, n: int, taken: set[str]) -> list[MCQItem]:
    """Rehearsal: seed-pool items stratified over all of the tree's nodes (round-robin, shuffled within
    each), none of them in ``taken`` (the targeted replay): the skills the student has are trained too,
    so that an update aimed at its weak nodes does not unlearn the rest."""
    from tree import AbilityTree

    it = state["iteration"]
    tree = AbilityTree.load(ctx.run.stage(it, "analyze") / "tree.json")
    pool = [i for i in _training_pool(ctx, state) if i.id not in taken]
    return stratified(pool, n, ctx.config.seed + 7919 * it, tree.node_of)


def label_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    c = ctx.config
    it = state["iteration"]
    paths = [ctx.run.stage(it, "validate") / "validated.jsonl", ctx.run.stage(it, "analyze") / "tree.json", *ctx.domain.seed_files]
    values = {"teacher": c.teacher, "top_k": c.top_k, "replay": c.replay, "seed": c.seed, **_answer_mode(ctx)}
    if c.rehearsal:  # only then: runs made before rehearsal keep their fingerprints
        values["rehearsal"] = c.rehearsal
        if c.rehearsal_target != "teacher":
            values |= {"rehearsal_target": c.rehearsal_target, "student": state["student"]}
            paths += _model_inputs(state["student"])
    if ctx.verifier_spec and ctx.domain.answer_mode == "generate":  # it checks the worked solutions
        values["verifier"] = ctx.verifier_spec
    if c.label_teacher:  # only then: runs made before the option keep their fingerprints
        values["label_teacher"] = c.label_teacher
    return values, paths


def label(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    from training.teacher_logits import extract_teacher_logits

    it, c = state["iteration"], ctx.config
    accepted = read_jsonl(ctx.run.stage(it, "validate") / "validated.jsonl", GeneratedItem)
    replay = select_replay(ctx, state, c.replay)
    rehearsal = select_rehearsal(ctx, state, c.rehearsal, {i.id for i in replay})
    items: list[MCQItem] = [*accepted, *replay, *rehearsal]
    solved: dict[str, Any] = {}
    if items and ctx.domain.answer_mode == "generate":  # the teacher's worked solutions are the replies to learn
        from synth.solutions import attach_solutions

        items, unsolved = attach_solutions(ctx.engines.get(c.label_spec), items, ctx.domain.answer_max_tokens)
        refused: list = []
        if ctx.verifier is not None:  # a solution that reaches the key by a wrong step would teach that step
            from synth.verify import check_solutions

            items, refused = check_solutions(ctx.verifier, items)
            write_jsonl(out / "refused_solutions.jsonl",
                        [{"id": it.id, "solution": it.solution, **v.as_dict()} for it, v in refused])
        generated_ids = {it.id for it in accepted}
        kept = {it.id for it in items}
        accepted, replay = [it for it in accepted if it.id in kept], [it for it in replay if it.id in kept]
        rehearsal = [it for it in rehearsal if it.id in kept]
        solved = {"unsolved": len(unsolved), "unsolved_generated": sum(it.id in generated_ids for it in unsolved)}
        if ctx.verifier is not None:
            solved |= {"refused_by_verifier": len(refused), "refused_generated": sum(it.id in generated_ids for it, _ in refused)}
    write_jsonl(out / "items.jsonl", items)
    composition = _composition(ctx, state, {"generated": accepted, "replay": replay, "rehearsal": rehearsal})
    atomic_write_json(out / "composition.json", composition)
    if not items:
        return {"items": 0, "generated": 0, "replay": 0, "rehearsal": 0, "tokens": 0, "bytes_per_token": None, **solved}
    source = ctx.engines.get(c.label_spec)
    if c.rehearsal_target == "student" and rehearsal:  # learning without forgetting on the rehearsal items
        from training.mcq_data import tokenize_items
        from training.teacher_logits import RoutedTopK, sequence_hash

        rows = tokenize_items(rehearsal, source.tokenizer)
        source = RoutedTopK(source, ctx.engines.get(state["student"]), {sequence_hash(r["input_ids"]) for r in rows})
    stats = extract_teacher_logits(source, items, out, k=c.top_k)
    return {"items": len(items), "generated": len(accepted), "replay": len(replay), "rehearsal": len(rehearsal), **solved, **stats}


def _composition(ctx: LoopContext, state: LoopState, parts: dict[str, list[MCQItem]]) -> dict[str, dict[str, int]]:
    """Node -> {part: items} of the training set (what the student is trained on, per node: the report)."""
    from tree import AbilityTree

    tree = AbilityTree.load(ctx.run.stage(state["iteration"], "analyze") / "tree.json")
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(parts, 0))
    for part, items in parts.items():
        for item in items:
            out[tree.node_of(item)][part] += 1
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------ train


def _local_path(spec: str) -> Path:
    from engines import parse_spec

    return parse_spec(spec).local_path()


def train_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    c = ctx.config
    values = {k: getattr(c, k) for k in ("alpha", "temperature", "train_epochs", "learning_rate", "train_batch_size", "lora", "seed", "teacher")}
    # Only where not the defaults of before: runs made before these options keep their fingerprints.
    if c.warmup_ratio or c.lr_scheduler_type != "linear":
        values |= {"warmup_ratio": c.warmup_ratio, "lr_scheduler_type": c.lr_scheduler_type}
    paths = [ctx.run.stage(state["iteration"], "label"), *_model_inputs(state["student"])]
    if selects_epoch(ctx):
        values |= {"select_epoch": True, "dev_size": c.dev_size, **_answer_mode(ctx)}
        paths += list(ctx.domain.dev_files)
    if c.kv_teacher_specs:  # only then: runs without KV teachers keep their fingerprints
        values.update({k: getattr(c, k) for k in ("kv_teachers", "kv_fusion", "kv_teacher_domains", "kv_phase", "kv_loss_weight")})
    if c.train_launcher != "in-process":  # likewise for runs trained in the loop's own process
        values.update({k: getattr(c, k) for k in ("train_launcher", "train_num_processes", "train_accelerate_config")})
    values["student"] = state["student"]
    return values, paths


def selects_epoch(ctx: LoopContext) -> bool:
    """Whether the train stage scores every epoch on the dev split and keeps the best: asked for, a dev
    split to score on, and the trainer in this process (accelerate's subprocess cannot call back)."""
    c = ctx.config
    return c.select_epoch and bool(ctx.dev_items) and c.train_launcher == "in-process"


def train_kv_options(c: Any) -> dict[str, Any]:
    """The KDConfig kv_* fields of the loop's options (none without --kv-teachers)."""
    if not c.kv_teacher_specs:
        return {}
    options = {"kv_teachers": c.kv_teacher_specs, "kv_fusion": c.kv_fusion, "kv_loss_weight": c.kv_loss_weight,
               "kv_teacher_domains": c.kv_teacher_domains.split(",") if c.kv_teacher_domains else None}
    if c.kv_phase:
        options["kv_phase"] = c.kv_phase
    return options


def train(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    from training.distill import distill, distill_overrides

    it, c = state["iteration"], ctx.config
    ctx.engines.release()  # give the trainer the memory the inference engines held
    labels = ctx.run.stage(it, "label")
    processes = c.train_num_processes if c.train_launcher == "accelerate" else 1
    overrides = distill_overrides(
        lora=c.lora,
        alpha=c.alpha,
        temperature=c.temperature,
        num_train_epochs=c.train_epochs,
        learning_rate=c.learning_rate,
        warmup_steps=c.warmup_ratio,  # transformers 5: a float in [0, 1) is a share of the steps
        lr_scheduler_type=c.lr_scheduler_type,
        report_to=c.trackers or "none",
        per_device_train_batch_size=c.train_batch_size // processes,  # the same examples per optimizer step
        seed=c.seed + it,
        top_k=c.top_k,
        **train_kv_options(c),
    )
    student = _local_path(state["student"])
    if not _stage_summary(ctx, it, "label").get("items"):  # the label stage counted them: no need to read the file
        raise DataError(f"{labels / 'items.jsonl'}: no item to train on in iteration {it}: {_why_no_items(ctx, state)}")
    if c.train_launcher == "accelerate":
        from training.launch import LaunchConfig, launch_distill

        launch = LaunchConfig(num_processes=processes, accelerate_config=c.train_accelerate_config, log_file=str(out.parent / f"{out.name}.log"))
        metrics = launch_distill(student, [labels / "items.jsonl"], out, overrides, launch, logits_dir=labels)
    else:
        from training.kd_config import KDConfig
        from training.mcq_data import read_training_items

        items = read_training_items([labels / "items.jsonl"])
        scorer = callback = None
        if selects_epoch(ctx) and items:
            from transformers import AutoTokenizer

            from training.selection import BestEpochCallback

            scorer = _DevSelection(ctx, AutoTokenizer.from_pretrained(student))
            callback = BestEpochCallback(scorer)
        with _tensorboard_dir(ctx, it):
            metrics = distill(student, items, out, KDConfig(output_dir=str(out), **overrides), logits_dir=labels,
                              callbacks=[callback] if callback else [])
        if scorer is not None and callback is not None:
            metrics |= {"epochs_scored": callback.history, "best_epoch": callback.best_epoch, "restored_epoch": callback.restored}
            # The kept epoch's dev replies are the candidate's: the gate reuses them instead of scoring again.
            ctx.score_cache.put(score_request(ctx, f"hf:{out}", "dev"), ctx.dev_items, scorer.best_replies)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool, list)) or v is None}


def _stage_summary(ctx: LoopContext, iteration: int, stage: str) -> dict[str, Any]:
    """The summary a finished stage wrote into its marker ({} when it has none)."""
    marker = ctx.run.stage(iteration, stage) / MARKER
    return json.loads(marker.read_text())["summary"] if marker.is_file() else {}


def _why_no_items(ctx: LoopContext, state: LoopState) -> str:
    """What emptied the training set (the validate and label stages' records) and what to change."""
    it, c = state["iteration"], ctx.config
    validated, labelled = _stage_summary(ctx, it, "validate"), _stage_summary(ctx, it, "label")
    if c.budget:
        why = (f"{validated.get('accepted', 0)} of the {c.budget} items asked of the teacher passed validation "
               f"(see {ctx.run.stage(it, 'validate') / 'rejected.jsonl'})")
    else:
        why = "--budget 0"
    why += f", --replay {c.replay}, --rehearsal {c.rehearsal}"
    lost = labelled.get("unsolved", 0) + labelled.get("refused_by_verifier", 0)
    if lost:
        why += f"; the teacher's worked solution of all {lost} selected items missed the key or was refused by the verifier"
    return why + "; start a new run with a larger --budget, --replay or --rehearsal"


class _DevSelection:
    """The train stage's epoch choice: dev accuracy of the model in training (BestEpochCallback's score),
    remembering the replies of the best epoch so far."""

    def __init__(self, ctx: LoopContext, tokenizer: Any) -> None:
        self.ctx, self.tokenizer = ctx, tokenizer
        self.best_replies: list = []
        self._best = -1.0
        self._engine: Any = None  # wrapped once: the trainer keeps the same model object across epochs

    def __call__(self, model: Any) -> float:
        from engines.hf_engine import TransformersEngine
        from eval.mcq import score_items

        c = self.ctx.config
        if self._engine is None or self._engine.model is not model:
            self._engine = TransformersEngine.wrap(model, self.tokenizer, name="student in training", batch_size=c.batch_size, threads=c.threads)
        result = score_items(self._engine, self.ctx.dev_items, mode=self.ctx.domain.answer_mode, max_new_tokens=self.ctx.domain.answer_max_tokens)
        accuracy = result.accuracy or 0.0
        if accuracy >= self._best:  # ties keep the later epoch, as BestEpochCallback does
            self._best, self.best_replies = accuracy, result.replies
        return accuracy


@contextmanager
def _tensorboard_dir(ctx: LoopContext, iteration: int):
    """TensorBoard event files of the trainer under <run-dir>/tracking (transformers reads the variable)."""
    if "tensorboard" not in ctx.config.trackers:
        yield
        return
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(ctx.run.root / "tracking" / "tensorboard" / f"train_iteration_{iteration}")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


# ------------------------------------------------------------------------------------------- gate


GATE_FILE = "gate.json"


def gate_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    c = ctx.config
    values = {"student": state["student"], "gate": c.gate, "gate_margin": c.gate_margin, "gate_alpha": c.gate_alpha,
              "dev_size": c.dev_size, **_answer_mode(ctx)}
    return values, [ctx.run.stage(state["iteration"], "train"), *ctx.domain.dev_files, *_model_inputs(state["student"])]


def gate(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    """Score the current and the trained student on the dev split (scores already made are reused:
    the current one's from an earlier iteration or run, the trained one's from the train stage's epoch
    choice) and decide whether the trained one is adopted (eval.gate)."""
    from eval.gate import GateConfig, decide

    c = ctx.config
    config = GateConfig(rule=c.gate, margin=c.gate_margin, alpha=c.gate_alpha)
    reused: list[str] = []
    if config.rule == "off" or not ctx.dev_items:
        decision = decide([], [], config)
        if config.rule != "off":
            logger.warning("the domain has no dev split (domain.yaml dev_files): every trained student is adopted")
    else:
        before = _score(ctx, state["student"], ctx.dev_items, "dev")
        after = _score(ctx, f"hf:{ctx.run.stage(state['iteration'], 'train')}", ctx.dev_items, "dev")
        reused = [who for who, scored in (("current", before), ("candidate", after)) if scored.reused]
        decision = decide(before.replies, after.replies, config)
    atomic_write_json(out / GATE_FILE, decision.as_dict())
    logger.info("iteration %d gate: %s", state["iteration"], decision.reason)
    return {**decision.as_dict(), "reused_scores": reused}


def adopted(ctx: LoopContext, iteration: int) -> bool:
    """The gate's decision for ``iteration`` (a run made before the gate: adopted)."""
    path = ctx.run.stage(iteration, "gate") / GATE_FILE
    if not path.is_file():
        return True
    import json

    return bool(json.loads(path.read_text(encoding="utf-8"))["adopted"])


# --------------------------------------------------------------------------------------- evaluate


def evaluate_inputs(ctx: LoopContext, state: LoopState) -> tuple[dict[str, Any], list[Path]]:
    values = {"student": state["student"], "eval_size": ctx.config.eval_size, **_answer_mode(ctx)}
    it = state["iteration"]
    return values, [ctx.run.stage(it, "train"), ctx.run.stage(it, "gate") / GATE_FILE, *ctx.domain.eval_files,
                    *_model_inputs(state["student"])]


def evaluate(ctx: LoopContext, state: LoopState, out: Path) -> dict[str, Any]:
    """The current (before) and the trained (after) student on the eval set, paired; the student the
    next iteration starts from is the trained one only where the gate adopted it, so the run's
    accuracy after this iteration (``student``) is the adopted one's."""
    from eval.mcq import assign_nodes
    from eval.metrics import paired_summary, write_metrics
    from tree import AbilityTree

    it = state["iteration"]
    items = ctx.eval_items
    before_result = _score(ctx, state["student"], items, "eval")
    after_result = _score(ctx, f"hf:{ctx.run.stage(it, 'train')}", items, "eval")
    tree = AbilityTree.load(ctx.run.stage(it, "analyze") / "tree.json")
    before, after = assign_nodes(before_result.replies, items, tree), assign_nodes(after_result.replies, items, tree)
    write_jsonl(out / "before.jsonl", before)
    write_jsonl(out / "after.jsonl", after)
    summary = paired_summary(before, after, items, tree)
    write_metrics(out, summary)
    kept = adopted(ctx, it)
    return {
        "n": len(items),
        "chance": summary["chance"],
        "before": summary["before"],
        "after": summary["after"],
        **{k: summary[k] for k in ("delta", "delta_ci95", "gained", "lost", "bootstrap_p", "mcnemar_p")},
        "adopted": kept,
        "student": summary["after"] if kept else summary["before"],  # the accuracy the run goes on with
        "items_per_s": after_result.items_per_s,
        "reused_scores": [who for who, r in (("before", before_result), ("after", after_result)) if r.reused],
    }


def write_run_report(root: Path) -> Path | None:
    """report.md, report.html and plots/ of the run so far; a failure is logged, never fatal: the
    iteration's outputs are already on disk and ``python -m eval report`` can write it again."""
    from eval.report import write_report

    try:
        return write_report(root)
    except Exception:  # noqa: BLE001 (a plotting problem must not stop a run after training)
        logger.exception("the report of %s was not written; retry with: python -m eval report %s", root, root)
        return None


def advance(ctx: LoopContext, state: LoopState, summary: dict[str, Any]) -> dict[str, Any]:
    """After evaluate's marker is written: the report covers this iteration, and the trained student
    becomes the student of the next iteration where the gate adopted it; else the current one stays."""
    write_run_report(ctx.run.root)
    it = state["iteration"]
    student = f"hf:{ctx.run.stage(it, 'train')}" if adopted(ctx, it) else state["student"]
    return {"iteration": it + 1, "student": student}
