"""``LoopConfig``: every option of ``python -m agents.loop``, from the command line and/or a YAML file.

Parsed with argparse built from the dataclass fields (help text in each field's metadata), so ``--help``
is instant and always matches the fields. Precedence: defaults < ``--config FILE.yaml`` < command line.
Unknown YAML keys are an error, never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from data.records import DataError, read_yaml
from data.verification import NO_VERIFIER
from eval.gate import GATE_RULES
from eval.tracking import parse_report_to
from synth.oracle import GENERATORS
from synth.validate import ACCEPTANCE_RULES
from synth.verify import ON_UNKNOWN, ON_WRONG
from tree.allocate import STRATEGIES

ENGINES = ("auto", "transformers", "vllm")
REHEARSAL_TARGETS = ("teacher", "student")  # whose top-k log-probs the rehearsal items are distilled towards


def schedulers() -> tuple[str, ...]:
    """transformers' learning-rate schedules (imported when a config is made, so that --help stays instant)."""
    from transformers import SchedulerType

    return tuple(s.value for s in SchedulerType)


@dataclass
class LoopConfig:
    domain: str = field(default="clinical", metadata={"help": "Domain preset (a folder of data/) or the path of a domain.yaml."})
    run_dir: str = field(default="", metadata={"help": "Run directory (default: runs/<domain>-<teacher>-<student>). A new run refuses an existing one; use --resume."})
    resume: bool = field(default=False, metadata={"help": "Continue the run in --run-dir where it stopped, with its stored config.yaml."})
    dry_run: bool = field(default=False, metadata={"help": "Run the pre-flight checks, print the plan (models and what serves each, data, devices, stages, budgets) and exit; nothing is written."})
    iterations: int = field(default=1, metadata={"help": "Loop iterations (infer → … → evaluate)."})
    teacher: str = field(default="smollm2", metadata={"help": "Teacher model spec: smollm2, hf:PATH, vllm:PATH, openai:URL#MODEL."})
    label_teacher: str = field(default="", metadata={"help": "Local weights of the teacher for the label stage (its top-k log-probs over the items' tokens need them), when --teacher is served over openai:, e.g. hf:/models/teacher (the same model). Default: the teacher."})
    student: str = field(default="smollm2?layers=15", metadata={"help": "Student model spec; smollm2?layers=N keeps N evenly spaced teacher layers."})
    solver: str = field(default="", metadata={"help": "Blind-solver agent model spec, or several separated by commas (e.g. of different families; their votes are pooled). Default: the teacher."})
    critic: str = field(default="", metadata={"help": "Critic agent model spec (default: the teacher)."})
    engine: str = field(default="auto", metadata={"help": "Inference engine for local models: auto (vLLM on CUDA, else transformers), transformers, vllm."})
    threads: int = field(default=0, metadata={"help": "CPU threads for the transformers engine; 0 chooses by how busy the machine is."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per batch for the transformers engine."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM on CUDA (local vllm: models): GPUs each model is split over."})
    vllm_gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vLLM on CUDA: share of each GPU's memory a model may take (weights and KV cache)."})
    vllm_max_model_len: int = field(default=4096, metadata={"help": "vLLM: the context length KV cache is reserved for."})
    probe_size: int = field(default=96, metadata={"help": "Seed-pool items the student answers each iteration to find its weak nodes."})
    eval_size: int = field(default=0, metadata={"help": "Eval-set items scored each iteration (0 = all of the domain's eval files)."})
    tree: str = field(default="", metadata={"help": "Ability tree JSON to start from (e.g. from python -m tree init); items' ability paths are added to it. Default: a tree built from the paths alone."})
    classify: bool = field(default=False, metadata={"help": "Place seed and eval items that have no ability path into the tree with the teacher (once per run; ~4 min for the 503 clinical items with SmolLM2 on CPU, which places them barely above chance: see benchmarks/bench_classify.py). Off: they sit under their source's node."})
    budget: int = field(default=32, metadata={"help": "Items the teacher generates per iteration, spread over the weakest nodes (0: none; the student trains on --replay items only, the floor of benchmarks/bench_allocation.py)."})
    allocation: str = field(default="weakness", metadata={"help": "How the budget is spread over nodes: weakness (the nodes of largest expected shortfall below an accuracy of 0.8) or uniform (every target node alike)."})
    allocation_floor: int = field(default=1, metadata={"help": "Items every target node gets before the rest of the budget is split by weight (0: only what its weight earns)."})
    allocation_max_nodes: int = field(default=0, metadata={"help": "Spread the budget over at most this many nodes, those of largest weight (0: every target node)."})
    allocation_temperature: float = field(default=1.0, metadata={"help": "The weakness weights are raised to 1/T before the split: below 1 the budget moves further towards the weakest nodes (0.5 squares them), above 1 it evens out."})
    generator: str = field(default="teacher", metadata={"help": "Who writes the generated items: teacher, or oracle (the domain's own problem generator, domain.yaml oracle:, right by construction: the control arm of benchmarks/bench_allocation.py; use with --acceptance none)."})
    exemplars: int = field(default=1, metadata={"help": "Seed exemplars shown to the teacher per generated item (short prompts suit small teachers)."})
    exemplar_choice: str = field(default="random", metadata={"help": "How exemplars are chosen: random (the node's own items, else its subtree's, else its siblings') or embedding (the node's items nearest in meaning to the node, then the nearest of the other seed items), with --encoder."})
    near_dup_metric: str = field(default="rouge_l", metadata={"help": "Near-duplicate gate of the validate stage: rouge_l (ROUGE-L F1 >= 0.7), jaccard (word 3-gram Jaccard >= 0.7) or embedding (cosine of --encoder embeddings >= the calibrated threshold)."})
    encoder: str = field(default="", metadata={"help": "Sentence encoder of --near-dup-metric embedding and --exemplar-choice embedding: minilm, st:<folder> or a folder. Default: the run's distilled encoder (<run-dir>/encoder/student, from python -m training.embedding distill --out <run-dir>/encoder) when it exists, else minilm."})
    acceptance: str = field(default="both", metadata={"help": "Which agents must accept an item: both, solver, critic, or none (the gates and the verifier only: for --generator oracle)."})
    solver_samples: int = field(default=1, metadata={"help": "Times each solver model answers an item, the options in another order each time (one vote each)."})
    solver_min_votes: int = field(default=0, metadata={"help": "Solver votes for the key an item needs (k of n = solver samples x solver models); 0 = all of them, unless --solver-min-share is set."})
    solver_min_share: float = field(default=0.0, metadata={"help": "Share of the solver votes the key needs, in (0, 1], when --solver-min-votes is 0 (e.g. 0.5 with --solver-samples 5: 3 of 5), and more votes than any other answer; 0 = not used."})
    solver_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the solver's votes: 0 = greedy; > 0 with --solver-samples k = self-consistency (k sampled replies, majority vote)."})
    critic_sees_explanation: bool = field(default=False, metadata={"help": "Show the critic the generator's explanation (it argues for the key it was written with, so a wrong key comes with its own case)."})
    verifier: str = field(default="", metadata={"help": "The verifier of generated keys and of the teacher's worked solutions: module:function or file.py:function (a function (item, solution=None) -> data.verification.Verification), or none. Default: the domain's (domain.yaml verifier:), else none."})
    verifier_on_wrong: str = field(default="rekey", metadata={"help": "A key the verifier finds wrong: rekey (to the option stating the right answer, where one does; else reject) or reject."})
    verifier_unknown: str = field(default="keep", metadata={"help": "An item the verifier cannot judge: keep (the agents decide) or reject."})
    replay: int = field(default=16, metadata={"help": "Targeted replay: seed-pool items of the weakest nodes first (never probe, dev or eval items) mixed into each training set."})
    rehearsal_target: str = field(default="teacher", metadata={"help": "KD target of the rehearsal items: teacher (its top-k, like every item) or student (the current student's own top-k: a KL term that keeps it where it was on them, learning without forgetting; needs one tokenizer for both)."})
    rehearsal: int = field(default=16, metadata={"help": "Rehearsal: more seed-pool items, stratified over all of the tree's leaves (never probe, dev, eval or replay items), so that the skills the student has are trained too."})
    top_k: int = field(default=32, metadata={"help": "Teacher log-probs stored per token (sparse top-k)."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of the KD term: loss = alpha * KD + (1 - alpha) * CE."})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature T (the KD term is scaled by T²)."})
    train_epochs: float = field(default=2.0, metadata={"help": "Training epochs over each iteration's training set."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Student learning rate (peak, after warmup)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Share of the train stage's steps over which the learning rate rises from 0."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule after warmup (transformers' SchedulerType: linear, cosine, constant, constant_with_warmup, ...)."})
    train_batch_size: int = field(default=8, metadata={"help": "Training examples per optimizer step."})
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (rank 16) instead of the full student."})
    select_epoch: bool = field(default=True, metadata={"help": "Score the student on the dev split after every training epoch and keep the best epoch (in-process training; the domain needs a dev split)."})
    gate: str = field(default="margin", metadata={"help": "Acceptance gate after training, on the dev split: margin (adopt the trained student unless its dev accuracy drops by more than --gate-margin points), mcnemar (adopt unless a one-sided exact McNemar test finds it worse at --gate-alpha) or off (always adopt)."})
    gate_margin: float = field(default=0.0, metadata={"help": "margin gate: dev-accuracy drop tolerated, in points (negative: the gain required)."})
    gate_alpha: float = field(default=0.05, metadata={"help": "mcnemar gate: test level."})
    dev_size: int = field(default=0, metadata={"help": "Dev-split items used by the gate and the epoch choice (0 = all of the domain's dev files)."})
    score_cache: bool = field(default=True, metadata={"help": "Reuse scores already made (a model on the same items, asked the same way), kept in <atkd cache>/scores."})
    report_to: str = field(default="none", metadata={"help": "Experiment trackers, comma-separated: tensorboard, trackio, wandb (installed ones), or none. The trainers report their curves, the loop its per-stage figures (TensorBoard: <run-dir>/tracking)."})
    kv_teachers: str = field(default="", metadata={"help": "KV-cache teachers of the train stage, comma-separated model specs (e.g. smollm2,minilm): their keys/values are distilled into the student beside the stored logits (training.kv). --teacher stays the data generator. Off when empty."})
    kv_fusion: str = field(default="fixed", metadata={"help": "How the KV teachers are combined: fixed, similarity, learnable, mince, avgce, domain (each item to the teacher owning its source, --kv-teacher-domains)."})
    kv_teacher_domains: str = field(default="", metadata={"help": "kv_fusion domain: the item sources each KV teacher owns, teachers separated by commas, sources by | (e.g. medmcqa|medqa,mmlu)."})
    kv_phase: int = field(default=0, metadata={"help": "Curriculum phase of the KV distillation (1-5, training/kv/recipes/curriculum.yaml); 0 = none, kv_fusion applies."})
    kv_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the KV objective in the training loss."})
    train_launcher: str = field(default="in-process", metadata={"help": "How the train stage runs: in-process (this process, one device) or accelerate (accelerate launch -m training.distill in a subprocess: DDP over --train-num-processes GPUs, or FSDP / DeepSpeed from --train-accelerate-config; on a CPU, gloo processes). Its output goes to iteration_N/F_student_model.log."})
    train_num_processes: int = field(default=2, metadata={"help": "accelerate: processes in all (one per GPU); --train-batch-size is split evenly between them."})
    train_accelerate_config: str = field(default="", metadata={"help": "accelerate: an accelerate config file (from `accelerate config`) for FSDP or DeepSpeed on this machine; --train-num-processes overrides its num_processes. Empty: DDP on this machine."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, shuffles and training."})
    config: str = field(default="", metadata={"help": "YAML file with any of these options (command-line values win)."})

    def __post_init__(self) -> None:
        checks = [
            (self.iterations >= 1, "iterations must be >= 1"),
            (self.probe_size >= 1, "probe_size must be >= 1"),
            (self.eval_size >= 0, "eval_size must be >= 0"),
            (self.budget >= 0, "budget must be >= 0 (0 = no generation: train on replayed seed items only)"),
            (self.exemplars >= 1, "exemplars must be >= 1"),
            (1 <= self.solver_samples <= 26, "solver_samples must be in [1, 26]"),
            (0 <= self.solver_min_votes <= self.solver_samples * len(self.solver_specs), "solver_min_votes must be in [0, solver_samples x number of solver models]"),
            (0.0 <= self.solver_min_share <= 1.0, "solver_min_share must be in [0, 1]"),
            (self.solver_temperature >= 0, "solver_temperature must be >= 0"),
            (self.verifier_on_wrong in ON_WRONG, f"verifier_on_wrong must be one of {', '.join(ON_WRONG)}"),
            (self.verifier_unknown in ON_UNKNOWN, f"verifier_unknown must be one of {', '.join(ON_UNKNOWN)}"),
            (all(self.solver_specs), "solver lists an empty model spec"),
            (self.replay >= 0, "replay must be >= 0"),
            (self.top_k >= 1, "top_k must be >= 1"),
            (0.0 <= self.alpha <= 1.0, "alpha must be in [0, 1]"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.train_epochs > 0, "train_epochs must be > 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.train_batch_size >= 1, "train_batch_size must be >= 1"),
            (self.rehearsal >= 0, "rehearsal must be >= 0"),
            (self.rehearsal_target in REHEARSAL_TARGETS, f"rehearsal_target must be one of {', '.join(REHEARSAL_TARGETS)}"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
            (self.lr_scheduler_type in schedulers(), f"lr_scheduler_type must be one of {', '.join(schedulers())}"),
            (self.gate in GATE_RULES, f"gate must be one of {', '.join(GATE_RULES)}"),
            (0.0 < self.gate_alpha < 1.0, "gate_alpha must be in (0, 1)"),
            (-100.0 <= self.gate_margin <= 100.0, "gate_margin is in points: within [-100, 100]"),
            (self.dev_size >= 0, "dev_size must be >= 0 (0 = the whole dev split)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.vllm_tensor_parallel_size >= 1, "vllm_tensor_parallel_size must be >= 1"),
            (0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization must be in (0, 1]"),
            (self.vllm_max_model_len >= 16, "vllm_max_model_len must be >= 16"),
            (self.engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}"),
            (self.allocation in STRATEGIES, f"allocation must be one of {', '.join(STRATEGIES)}"),
            (self.allocation_floor >= 0, "allocation_floor must be >= 0"),
            (self.allocation_max_nodes >= 0, "allocation_max_nodes must be >= 0 (0 = every target node)"),
            (self.allocation_temperature > 0, "allocation_temperature must be > 0"),
            (self.generator in GENERATORS, f"generator must be one of {', '.join(GENERATORS)}"),
            (self.acceptance in ACCEPTANCE_RULES, f"acceptance must be one of {', '.join(ACCEPTANCE_RULES)}"),
            (self.exemplar_choice in ("random", "embedding"), "exemplar_choice must be random or embedding"),
            (self.near_dup_metric in ("rouge_l", "jaccard", "embedding"), "near_dup_metric must be rouge_l, jaccard or embedding"),
            (self.kv_phase >= 0, "kv_phase must be >= 0 (0 = no curriculum phase)"),
            (self.kv_loss_weight >= 0, "kv_loss_weight must be >= 0"),
            (self.train_launcher in ("in-process", "accelerate"), "train_launcher must be in-process or accelerate"),
            (self.train_num_processes >= 1, "train_num_processes must be >= 1"),
            (self.train_launcher != "accelerate" or self.train_batch_size % self.train_num_processes == 0,
             "train_batch_size must be a multiple of train_num_processes (each process takes an equal share of every step)"),
            (not self.train_accelerate_config or self.train_launcher == "accelerate", "train_accelerate_config needs train_launcher accelerate"),
            (not (self.kv_phase and not self.kv_teachers), "kv_phase needs kv_teachers"),
            (self.kv_fusion in ("fixed", "similarity", "learnable", "mince", "avgce", "domain"), "kv_fusion must be one of fixed, similarity, learnable, mince, avgce, domain"),
            (not self.kv_teacher_domains or len(self.kv_teacher_domains.split(",")) == len(self.kv_teacher_specs), "kv_teacher_domains needs one entry per KV teacher"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.trackers  # noqa: B018 (raises ValueError naming a bad --report-to)

    @property
    def trackers(self) -> list[str]:
        """The --report-to trackers (empty: none)."""
        return parse_report_to(self.report_to)

    @property
    def kv_teacher_specs(self) -> list[str]:
        """The comma-separated --kv-teachers specs (empty: no KV distillation)."""
        return [spec.strip() for spec in self.kv_teachers.split(",") if spec.strip()]

    @property
    def solver_specs(self) -> list[str]:
        """The solver models: the comma-separated --solver specs, else the teacher."""
        return [spec.strip() for spec in self.solver.split(",")] if self.solver else [self.teacher]

    @property
    def vllm_options(self) -> dict[str, Any]:
        """The EngineConfig fields of the vllm_* options."""
        return {"tensor_parallel_size": self.vllm_tensor_parallel_size, "gpu_memory_utilization": self.vllm_gpu_memory_utilization,
                "max_model_len": self.vllm_max_model_len}

    @property
    def label_spec(self) -> str:
        """The model whose top-k log-probs the label stage stores: --label-teacher, else the teacher."""
        return self.label_teacher or self.teacher

    @property
    def critic_spec(self) -> str:
        return self.critic or self.teacher

    def verifier_spec(self, domain_verifier: str) -> str:
        """The verifier in force: --verifier, else the domain's; "" for none (--verifier none)."""
        if self.verifier == NO_VERIFIER:
            return ""
        return self.verifier or domain_verifier

    def default_run_dir(self) -> Path:
        slug = "-".join(s.replace(":", "_").replace("/", "_").replace("?", "_").replace("=", "") for s in (self.domain, self.teacher, self.student))
        return Path("runs") / slug

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for transient in TRANSIENT:
            d.pop(transient)
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(LoopConfig)}
TRANSIENT = ("config", "resume", "dry_run")  # how to invoke, not what the run is: never stored or compared


def _field_type(f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(LoopConfig)
    return hints[f.name]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agents.loop",
        description="Find where the student is weak, generate validated data there with the teacher, distil, evaluate, repeat.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, f in _FIELDS.items():
        flag = "--" + name.replace("_", "-")
        kind = _field_type(f)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})")
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=name.upper(), help=f"{f.metadata['help']} (default: {f.default!r})")
    return parser


def load_yaml_options(path: str | Path) -> dict[str, Any]:
    """Read a YAML config; keys may use - or _; unknown keys and wrong types are errors naming the key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: config file not found")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping of option: value")
    return _typed_options(raw, str(path))


def _typed_options(raw: dict[Any, Any], where: str) -> dict[str, Any]:
    """Option name (- or _) -> value, checked against LoopConfig's fields; DataError names ``where``."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS or name in TRANSIENT:
            raise DataError(f"{where}: unknown option {key!r}")
        kind = _field_type(_FIELDS[name])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(f"{where}: option {key!r} must be {kind.__name__}, got {value!r}")
        out[name] = value
    return out


def domain_defaults(domain: str) -> dict[str, Any]:
    """The ``loop_defaults`` of the domain's domain.yaml, checked like a --config file."""
    from data.domains import get_domain

    d = get_domain(domain)
    where = f"{d.file}: field 'loop_defaults'" if d.file else f"domain {d.name}: loop_defaults"
    options = _typed_options(d.loop_defaults, where)
    if "domain" in options:
        raise DataError(f"{where}: a domain cannot set the domain")
    return options


def parse_config(argv: Sequence[str] | None = None) -> tuple[LoopConfig, set[str]]:
    """CLI (+ optional YAML) → LoopConfig, and the names the user set explicitly (for resume checks).

    Precedence: LoopConfig's defaults < the domain's loop_defaults (domain.yaml) < --config < command line.
    A resumed run uses its stored config (agents.loop), so a later change of a domain's defaults does
    not change a run already started."""
    cli = vars(make_parser().parse_args(argv))
    options: dict[str, Any] = {}
    if cli.get("config"):
        options.update(load_yaml_options(cli["config"]))
    options.update(cli)
    explicit = set(options) - set(TRANSIENT)
    if not options.get("resume"):
        defaults = domain_defaults(options.get("domain", _FIELDS["domain"].default))
        options = {**defaults, **options}
    return LoopConfig(**options), explicit
