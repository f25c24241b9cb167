"""Checks a run makes before it writes anything, and the plan ``--dry-run`` prints.

Everything a stage would trip on late is tried here first, in seconds: every model spec resolves (a
folder with a config and a tokenizer, the embedded wheels, vLLM importable where it is asked for, each
``openai:`` endpoint answering its model list with the named model in it), the domain's data files and
the tree parse, the run directory can be created. A failure is one line naming the option.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agents.config import LoopConfig
from data.domains import Domain
from data.records import DataError, check_writable
from data.run_layout import STAGE_DIRS
from data.verification import NO_VERIFIER, load_verifier
from engines.check import SpecCheck, check_spec
from engines.spec import SpecError, parse_spec
from eval.tracking import missing_trackers
from synth.validate import agents_needed

logger = logging.getLogger(__name__)


class PreflightError(Exception):
    """A setting that would fail the run later: printed as one line, exit code 2, nothing written."""


@dataclass
class Plan:
    """What a run will do: the models (by option) and what serves them, the data, the stages."""

    run_dir: Path
    models: list[tuple[str, SpecCheck]] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    devices: str = ""
    stages: list[str] = field(default_factory=list)
    budgets: dict[str, object] = field(default_factory=dict)
    training: str = ""
    judges: str = ""  # what judges the generated keys
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        width = max((len(option) for option, _ in self.models), default=0)
        lines = [f"run directory: {self.run_dir}", "models:"]
        for option, check in self.models:
            detail = f" ({check.note})" if check.note else ""
            lines.append(f"  {option:<{width}}  {check.spec}  on {check.backend}: {check.where}{detail}")
        lines += ["data:", *(f"  {d}" for d in self.data), f"devices: {self.devices}", f"training: {self.training}",
                  "stages per iteration: " + " → ".join(self.stages)]
        lines.append("budgets: " + ", ".join(f"{k} {v}" for k, v in self.budgets.items()))
        lines.append(f"keys judged by: {self.judges}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _check(option: str, spec: str, engine: str, *, generates: bool = True) -> SpecCheck:
    try:
        return check_spec(spec, engine, generates=generates)
    except SpecError as e:
        raise PreflightError(f"{option}: {e}") from None


def _check_encoder(spec: str) -> SpecCheck:
    """--encoder: a sentence-transformers folder, minilm or st:<folder>."""
    if Path(spec).expanduser().is_dir():  # a bare folder is read as st:<folder>
        spec = f"st:{spec}"
    try:
        kind = parse_spec(spec).kind
    except SpecError as e:
        raise PreflightError(f"--encoder: {e}") from None
    if kind not in ("minilm", "st"):
        raise PreflightError(f"--encoder: {spec!r} is not a sentence encoder; give minilm, st:<folder> or a sentence-transformers folder")
    return _check("--encoder", spec, "auto", generates=False)


def describe_judges(config: LoopConfig, verifier: str) -> tuple[str, str]:
    """``(who judges generated keys, a warning or "")``: the warning when the generator is its own only
    judge, so that its wrong keys pass (measured on arithmetic: 15 of 24 readable accepted keys wrong)."""
    parts = [f"verifier {verifier}"] if verifier else []
    if config.acceptance == "none":
        parts.append("no agent (--acceptance none)")
    judges: set[str] = set()
    need_solver, need_critic = agents_needed(config.acceptance)
    if need_solver:
        sampled = f", {config.solver_samples} sampled at {config.solver_temperature:g}" if config.solver_temperature else \
                  (f", {config.solver_samples} orders" if config.solver_samples > 1 else "")
        parts.append(f"solver {', '.join(config.solver_specs)}{sampled}")
        judges.update(config.solver_specs)
    if need_critic:
        parts.append(f"critic {config.critic_spec}" + (" (shown the explanation)" if config.critic_sees_explanation else ""))
        judges.add(config.critic_spec)
    warning = ""
    if not verifier and not judges:
        warning = (f"--acceptance {config.acceptance}: no agent and no verifier judges the teacher's items, so every key it writes "
                   "passes; use --acceptance none only for items right by construction (--generator oracle)")
    elif not verifier and judges == {config.teacher}:
        warning = (f"the teacher {config.teacher} writes the items and is their only judge (solver and critic), so a key it gets "
                   "wrong passes validation; give --solver a model of another family (with --solver-samples K "
                   "--solver-temperature T for a majority vote), or a --verifier where the domain's truth can be computed")
    return "; ".join(parts), warning


def _check_writable(root: Path) -> None:
    """The run directory can be created and written (``data.records.check_writable``)."""
    try:
        check_writable(root, "--run-dir")
    except DataError as e:
        raise PreflightError(str(e)) from None


def _check_training(config: LoopConfig) -> str:
    """The train stage's launcher: its accelerate config parses, the GPUs it asks for exist."""
    if config.train_launcher == "in-process":
        return "in this process"
    where = f"accelerate launch, {config.train_num_processes} processes, {config.train_batch_size // config.train_num_processes} examples each per step"
    if config.train_accelerate_config:
        path = Path(config.train_accelerate_config)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PreflightError(f"--train-accelerate-config: {path} not found; write one with `accelerate config --config_file {path}`") from None
        except (OSError, yaml.YAMLError) as e:
            raise PreflightError(f"--train-accelerate-config: {path} is not a readable YAML file ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise PreflightError(f"--train-accelerate-config: {path} is not an accelerate config (expected a mapping such as distributed_type: MULTI_GPU)")
        if int(raw.get("num_machines", 1) or 1) > 1:
            raise PreflightError(f"--train-accelerate-config: {path} asks for {raw['num_machines']} machines; the loop starts the training on this "
                                 "machine only, so train across machines outside it (python -m training.distill under your scheduler) for now")
        return where + f", config {path} ({raw.get('distributed_type', 'distributed_type not set')})"
    on_cuda = _gpus_for("--train-num-processes", config.train_num_processes)
    return where + (" (DDP on the CUDA devices)" if on_cuda else " (gloo on the CPU)")


def _gpus_for(option: str, wanted: int) -> bool:
    """Whether CUDA is present; PreflightError when ``option`` asks for more devices than there are."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < wanted:
        raise PreflightError(f"{option} {wanted}: this machine has {torch.cuda.device_count()} CUDA device(s); ask for at most that many")
    return torch.cuda.is_available()


def _devices() -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} CUDA device(s): " + ", ".join(names)
    return f"CPU only ({os.cpu_count()} cores)"


def preflight(config: LoopConfig, run_dir: Path, domain: Domain, *, devices: bool = False) -> Plan:
    """Raise PreflightError (one line) on the first setting that would fail; else the run's plan.

    ``devices`` also describes the accelerators (imports torch: for ``--dry-run``).
    """
    _check_writable(run_dir)
    plan = Plan(run_dir=run_dir)
    seen: dict[tuple[str, bool], SpecCheck] = {}

    def add(option: str, spec: str, *, generates: bool = True) -> SpecCheck:
        key = (spec, generates)
        if key not in seen:
            check = _check(option, spec, config.engine, generates=generates)
            if check.backend == "vllm":
                vllm = f"tensor parallel {config.vllm_tensor_parallel_size}, GPU memory {config.vllm_gpu_memory_utilization:g}, max length {config.vllm_max_model_len}"
                check = dataclasses.replace(check, note=f"{check.note}, {vllm}" if check.note else vllm)
            seen[key] = check
        plan.models.append((option, seen[key]))
        return seen[key]

    teacher = add("--teacher", config.teacher)
    if config.label_teacher:
        teacher = add("--label-teacher", config.label_teacher)
    if teacher.backend == "openai":
        option = "--label-teacher" if config.label_teacher else "--teacher"
        raise PreflightError(
            f"{option} {config.label_spec}: the label stage stores the teacher's top-k log-probs over the items' "
            "tokens, which an HTTP server cannot return; give the same model's local weights with --label-teacher "
            "hf:PATH (or vllm:PATH), or a local --teacher"
        )
    if add("--student", config.student).backend == "openai":
        raise PreflightError(f"--student {config.student}: the student is trained here, so it must be a local model (hf:, vllm: or smollm2), not an HTTP server")
    need_solver, need_critic = agents_needed(config.acceptance)
    if need_solver:
        for spec in config.solver_specs:
            add("--solver", spec)
    if need_critic:
        add("--critic", config.critic_spec)
    for spec in config.kv_teacher_specs:
        if add("--kv-teachers", spec, generates=False).backend == "openai":
            raise PreflightError(f"--kv-teachers {spec}: KV-cache teachers run inside the trainer; give local models")
    if config.verifier and config.verifier != NO_VERIFIER:
        try:
            load_verifier(config.verifier, "--verifier")
        except DataError as e:
            raise PreflightError(str(e)) from None
    if config.generator == "oracle" and not domain.oracle:
        raise PreflightError(f"--generator oracle: domain {domain.name} has no oracle (an oracle: module:function field in "
                             f"{domain.file or 'its domain.yaml'}); only a domain whose truth can be computed has one")
    plan.judges, warning = describe_judges(config, config.verifier_spec(domain.verifier))
    if config.generator == "oracle":
        plan.judges = f"the domain's oracle {domain.oracle} writes the items (right by construction); " + plan.judges
        warning = ""
    if warning and config.budget:
        plan.warnings.append(warning)
    if config.encoder and "embedding" in (config.near_dup_metric, config.exemplar_choice):
        plan.models.append(("--encoder", _check_encoder(config.encoder)))

    if config.vllm_tensor_parallel_size > 1 and any(check.backend == "vllm" for _, check in plan.models):
        _gpus_for("--vllm-tensor-parallel-size", config.vllm_tensor_parallel_size)
    plan.training = _check_training(config)
    seed, evals = domain.seed_items(), domain.eval_items()  # DataError (file:line) on a bad file
    dev = domain.dev_items()  # and on a dev item that repeats a seed or eval item
    plan.data = [f"seed pool: {len(seed)} items from {', '.join(str(p) for p in domain.seed_files)}",
                 f"eval set: {len(evals)} items" + (f" (first {config.eval_size} used)" if config.eval_size else "")]
    if dev:
        used = min(config.dev_size, len(dev)) if config.dev_size else len(dev)
        plan.data.append(f"dev split: {used} of {len(dev)} items (model selection only: the gate{' and the epoch choice' if config.select_epoch else ''})")
    elif config.gate != "off":
        plan.warnings.append(f"domain {domain.name} has no dev split (domain.yaml dev_files): the gate adopts every trained student "
                             "and no epoch is chosen; add a dev file to guard against regressions")
    missing = missing_trackers(config.trackers)
    if missing:
        raise PreflightError(f"--report-to {config.report_to}: not installed here: {', '.join(missing)}")
    if config.tree:
        plan.data.append(f"tree: {config.tree}")
    plan.devices = _devices() if devices else ""
    plan.stages = list(STAGE_DIRS)
    plan.budgets = {"iterations": config.iterations, "probe_size": config.probe_size, "budget (items generated)": config.budget,
                    "replay": config.replay, "rehearsal": config.rehearsal, "train_epochs": config.train_epochs,
                    "learning_rate": config.learning_rate, "schedule": f"{config.lr_scheduler_type}, warmup {config.warmup_ratio:g}",
                    "gate": config.gate if config.gate != "margin" else f"margin {config.gate_margin:g} points",
                    "eval_size": config.eval_size or "all"}
    if not config.dry_run:  # every check passed; --dry-run prints them in the plan instead
        for w in plan.warnings:
            logger.warning(w)
    return plan
