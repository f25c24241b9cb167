"""Train, once, a domain's own teacher and a weaker student from scratch, and cache them.

    python -m scratch build                       # arithmetic: tokenizer, teacher, student; ~/.cache/atkd/models/scratch/arithmetic
    python -m scratch build --teacher-steps 3000 --force
    python -m scratch build --force --teacher-init ~/.cache/atkd/models/scratch/arithmetic/teacher --teacher-steps 500
    python -m scratch build --solver              # also an independent blind solver: scratch:arithmetic/solver
    python -m agents.loop --domain arithmetic --teacher scratch:arithmetic/teacher --student scratch:arithmetic/student

The teacher (a small Llama trained from random weights) learns every task the loop asks of a teacher,
in the loop's own prompts (``scratch.tasks``): answering the domain's MCQs, writing a new item for a
named skill, judging an item as critic, diagnosing a student's mistakes. The student is smaller and
is trained only to answer, and only on some of the skills (``--student-skips``), so it starts clearly
below the teacher on the skipped nodes. Both share one tokenizer (stored top-k logits need that).

``--solver`` also builds a blind solver trained independently of the teacher (its own seed, shape and
draws of the answer task only, on the teacher's tokenizer), so that validation can ask a model other than
the generator whether a generated key is right: a teacher that judges its own items passes its mistakes.

``--teacher-init`` starts the teacher from a built teacher (its weights and its tokenizer) instead of
random weights: after a change of a prompt or of a reply's format, a few hundred steps carry a trained
teacher over, where a rebuild from random weights takes an hour and a half on a 2-core CPU. Its
``build_info.json`` records the model it started from and that model's own training.

Each model is written into place atomically with ``build_info.json`` (its settings, training time,
accuracy per node on the domain's held-out eval pool); a built model is reused unless ``--force``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data.arithmetic.build import draw_problems
from data.arithmetic.skills import SKILLS
from data.records import MCQItem

logger = logging.getLogger(__name__)

INFO_FILE = "build_info.json"
DEFAULT_STUDENT_SKIPS = (
    "addition/three-digit addition, two or more carries",
    "subtraction/three-digit subtraction, borrow across zero",
    "subtraction/two-digit subtraction, with borrow",
    "multiplication/two-digit by one-digit, with carry",
    "division/remainders",
    "place value/rounding to the nearest hundred",
)


@dataclass
class ModelShape:
    """A Llama architecture small enough to train on a CPU."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int

    def llama_config(self, vocab_size: int, tokenizer: Any, max_positions: int):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=max_positions, tie_word_embeddings=True, rope_theta=10000.0,
            bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )


@dataclass
class ScratchConfig:
    """Everything ``python -m scratch build`` decides (one field per option)."""

    domain: str = field(default="arithmetic", metadata={"help": "Domain whose models are built (only arithmetic has a builder)."})
    out: str = field(default="", metadata={"help": "Folder of the built models (default: <atkd cache>/models/scratch/<domain>)."})
    force: bool = field(default=False, metadata={"help": "Rebuild models that are already built."})
    vocab_size: int = field(default=1024, metadata={"help": "Tokenizer vocabulary (byte-level BPE, one token per digit)."})
    teacher_layers: int = field(default=4, metadata={"help": "Teacher decoder layers."})
    teacher_hidden: int = field(default=256, metadata={"help": "Teacher hidden size."})
    teacher_steps: int = field(default=2000, metadata={"help": "Teacher optimizer steps."})
    student_layers: int = field(default=4, metadata={"help": "Student decoder layers."})
    student_hidden: int = field(default=128, metadata={"help": "Student hidden size."})
    student_steps: int = field(default=800, metadata={"help": "Student optimizer steps."})
    student_skips: str = field(default=";".join(DEFAULT_STUDENT_SKIPS),
                               metadata={"help": "Skills (operation/skill, separated by ;) the student never sees; empty: none."})
    answer_per_skill: int = field(default=1200, metadata={"help": "Teacher: answer examples per skill."})
    generate_per_skill: int = field(default=120, metadata={"help": "Teacher: generation examples per skill."})
    critic_per_skill: int = field(default=80, metadata={"help": "Teacher: critic examples per skill."})
    diagnose_per_skill: int = field(default=40, metadata={"help": "Teacher: diagnosis examples per skill."})
    student_answer_per_skill: int = field(default=200, metadata={"help": "Student: answer examples per skill it sees."})
    eval_per_skill: int = field(default=0, metadata={"help": "Eval items per skill the built models are scored on (0: the whole eval pool, 12 per skill)."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per optimizer step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (linear warm-up over the first twentieth of the steps, then cosine decay)."})
    teacher_learning_rate: float = field(default=0.0, metadata={"help": "The teacher's peak learning rate, when it differs (0: --learning-rate); lower suits --teacher-init."})
    seed: int = field(default=0, metadata={"help": "Seed of the data, the initialisation and the training order."})
    batch_by_task: bool = field(default=True, metadata={"help": "Each batch holds examples of one task (answer, generate, critic, diagnose), skills mixed, batches in random order: so that a long generation prompt does not pad a batch of short answers (the 'random' order: off)."})
    answer_focus: float = field(default=0.0, metadata={"help": "With --teacher-init: this share of the teacher's answer examples is spread over the skills in proportion to the starting teacher's errors on fresh items of each (--focus-probe-per-skill), the rest evenly (0: evenly)."})
    focus_probe_per_skill: int = field(default=16, metadata={"help": "--answer-focus: fresh items per skill the starting teacher is scored on."})
    teacher_init: str = field(default="", metadata={"help": "Start the teacher from this built teacher's weights and tokenizer instead of random weights (the student is then trained on that tokenizer too); empty: from random weights."})
    student_only: bool = field(default=False, metadata={"help": "Rebuild only the student, on the built teacher's tokenizer (the teacher stays as it is): a new student recipe without retraining the teacher."})
    solver: bool = field(default=False, metadata={"help": "Also build an independent blind solver (scratch:<domain>/solver): answer task only, its own seed and shape, the teacher's tokenizer."})
    solver_layers: int = field(default=4, metadata={"help": "Solver decoder layers."})
    solver_hidden: int = field(default=192, metadata={"help": "Solver hidden size (a shape other than the teacher's)."})
    solver_steps: int = field(default=1000, metadata={"help": "Solver optimizer steps."})
    solver_answer_per_skill: int = field(default=1200, metadata={"help": "Solver: answer examples per skill."})
    solver_seed: int = field(default=1, metadata={"help": "Seed of the solver's data, initialisation and training order (another than --seed)."})

    def __post_init__(self) -> None:
        if self.domain != "arithmetic":
            raise ValueError(f"domain: only 'arithmetic' has a model builder, not {self.domain!r}")
        for name in ("teacher_layers", "teacher_hidden", "teacher_steps", "student_layers", "student_hidden", "batch_size",
                     "solver_layers", "solver_hidden", "solver_steps", "solver_answer_per_skill", "vocab_size", "answer_per_skill",
                     "generate_per_skill", "critic_per_skill", "diagnose_per_skill", "student_answer_per_skill"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.answer_focus <= 1.0:
            raise ValueError(f"--answer-focus must be in [0, 1], got {self.answer_focus}")
        if self.answer_focus and not self.teacher_init:
            raise ValueError("--answer-focus needs --teacher-init: the errors it follows are the starting teacher's")
        if self.focus_probe_per_skill < 1:
            raise ValueError(f"--focus-probe-per-skill must be >= 1, got {self.focus_probe_per_skill}")
        if self.eval_per_skill < 0:
            raise ValueError(f"--eval-per-skill must be >= 0 (0: the whole eval pool), got {self.eval_per_skill}")
        if self.learning_rate <= 0 or self.teacher_learning_rate < 0:
            raise ValueError("learning_rate must be > 0 and teacher_learning_rate >= 0 (0: learning_rate)")
        if self.teacher_hidden % 32 or self.student_hidden % 32 or self.solver_hidden % 32:
            raise ValueError("teacher_hidden, student_hidden and solver_hidden must be multiples of 32 (32-wide attention heads)")
        if self.solver and self.solver_seed == self.seed:
            raise ValueError(f"solver_seed must differ from seed ({self.seed}): the solver is to be trained independently of the teacher")
        known = {s.key for s in SKILLS}
        unknown = [k for k in self.skipped if k not in known]
        if unknown:
            raise ValueError(f"student_skips: unknown skill(s) {unknown}; known: {', '.join(sorted(known))}")
        if self.teacher_init:
            init = Path(self.teacher_init).expanduser()
            if not is_built(init):
                raise ValueError(f"teacher_init: {init} is not a built model (it needs {INFO_FILE} and config.json)")
            shape = json.loads((init / INFO_FILE).read_text())["shape"]
            if (shape["layers"], shape["hidden"]) != (self.teacher_layers, self.teacher_hidden):
                raise ValueError(f"teacher_init: {init} is {shape['layers']}x{shape['hidden']}, but teacher_layers x "
                                 f"teacher_hidden is {self.teacher_layers}x{self.teacher_hidden}")

    @property
    def skipped(self) -> list[str]:
        return [k.strip() for k in self.student_skips.split(";") if k.strip()]

    def shape(self, who: str) -> ModelShape:
        hidden, layers = {"teacher": (self.teacher_hidden, self.teacher_layers), "student": (self.student_hidden, self.student_layers),
                          "solver": (self.solver_hidden, self.solver_layers)}[who]
        heads = hidden // 32
        return ModelShape(layers=layers, hidden=hidden, heads=heads, kv_heads=max(1, heads // 2), intermediate=3 * hidden)

    def output_root(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        from engines.smollm2 import cache_root

        return cache_root() / "models" / "scratch" / self.domain


def is_built(folder: Path) -> bool:
    return (folder / INFO_FILE).is_file() and (folder / "config.json").is_file()


def _tokenize(examples, tokenizer) -> list[dict[str, Any]]:
    from training.mcq_data import tokenize_conversation

    return [{**tokenize_conversation(e.id, e.messages, tokenizer), "task": e.task} for e in examples]


def train_from_scratch(rows: Sequence[dict[str, Any]], tokenizer: Any, shape: ModelShape, steps: int,
                       config: ScratchConfig, workdir: Path, init: Path | None = None,
                       learning_rate: float = 0.0, seed: int | None = None) -> tuple[Any, float]:
    """A random-initialised Llama of ``shape`` (or the built model at ``init``) trained on ``rows`` (CE
    on the assistant turns) for ``steps`` steps with the project's trainer (``KDTrainer`` with alpha 0:
    TRL's SFT loss, fused head)."""
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    from training.distill import distill_config
    from training.kd_trainer import KDTrainer

    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)
    longest = max(len(r["input_ids"]) for r in rows)
    if config.batch_by_task:  # the order is the batches: the trainer reads it as it is
        rows = [rows[i] for i in task_batches([r["task"] for r in rows], config.batch_size, steps, seed)]
    if init is None:
        model = LlamaForCausalLM(shape.llama_config(len(tokenizer), tokenizer, max_positions=max(512, longest)))
    else:
        model = LlamaForCausalLM.from_pretrained(init)
        if model.config.max_position_embeddings < longest:
            raise ValueError(f"teacher_init: {init} holds {model.config.max_position_embeddings} positions, the examples need {longest}")
    args = distill_config(
        str(workdir / "trainer"), alpha=0.0, max_steps=steps, per_device_train_batch_size=config.batch_size,
        learning_rate=learning_rate or config.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), weight_decay=0.01,
        seed=seed, max_length=longest, logging_steps=max(1, steps // 20), dataloader_drop_last=False,
        # Random batches, not group_by_length: batches of one length are batches of one or two skills, and
        # from random weights that halves the pace (4x128, 300 steps on worked answers: loss 1.76 grouped,
        # 0.83 random). Batches of one task (task_batches) still mix the skills.
        train_sampling_strategy="sequential" if config.batch_by_task else "random",
    )
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    trainer = KDTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return trainer.model, seconds


def task_batches(tasks: Sequence[str], batch_size: int, steps: int, seed: int) -> list[int]:
    """Row indices for ``steps`` batches of ``batch_size``, each batch of one task: every epoch shuffles
    each task's rows, cuts them into batches (a task's last, short batch included) and shuffles the
    batches of all tasks together; epochs follow one another until there are enough batches."""
    import random as _random

    rng = _random.Random(f"{seed}:task-batches")
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, task in enumerate(tasks):
        by_task[task].append(i)
    order: list[int] = []
    while len(order) < steps * batch_size:
        batches = []
        for task in sorted(by_task):
            rows = list(by_task[task])
            rng.shuffle(rows)
            batches += [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
        rng.shuffle(batches)
        for batch in batches:  # a short batch is padded with rows of its own task to keep batches whole
            order += batch + [rng.choice(batch) for _ in range(batch_size - len(batch))]
    return order[: steps * batch_size]


def accuracy_by_node(folder: Path, items: Sequence[MCQItem], max_new_tokens: int = 192) -> dict[str, Any]:
    """Generate-mode accuracy of the model in ``folder`` on ``items`` (greedy worked solution, the stated
    answer read as its option), overall and per ability path."""
    from engines import load_engine
    from eval.mcq import score_items

    engine = load_engine(f"hf:{folder}", "transformers")
    result = score_items(engine, items, mode="generate", max_new_tokens=max_new_tokens)
    by_id = {it.id: it for it in items}
    per: dict[str, list[int]] = defaultdict(list)
    for r in result.replies:
        per["/".join(by_id[r.id].ability_path or [])].append(int(r.correct))
    right = sum(sum(v) for v in per.values())
    return {"accuracy": right / max(1, len(result.replies)), "n": len(result.replies), "items_per_s": result.items_per_s,
            "per_node": {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(per.items())}}


def first_per_skill(items: Sequence[MCQItem], n: int) -> list[MCQItem]:
    """The first ``n`` items of each ability path, in order."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for it in items:
        node = "/".join(it.ability_path or [])
        seen[node] += 1
        if seen[node] <= n:
            out.append(it)
    return out


def _stage_model(who: str, rows: Sequence[dict[str, Any]], tokenizer: Any, steps: int, config: ScratchConfig, work: Path,
                 eval_items: Sequence[MCQItem], domain_name: str, init: Path | None = None, learning_rate: float = 0.0,
                 seed: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Train one model, save it with its tokenizer into ``work/<who>-model`` and score it; its build info."""
    shape = config.shape(who)
    logger.info("training the %s (%s) on %d examples for %d steps", who, shape, len(rows), steps)
    model, seconds = train_from_scratch(rows, tokenizer, shape, steps, config, work / who, init, learning_rate, seed)
    staged = work / f"{who}-model"
    model.save_pretrained(staged, safe_serialization=True)
    tokenizer.save_pretrained(staged)
    scores = accuracy_by_node(staged, eval_items)
    tasks_count: dict[str, int] = defaultdict(int)
    for r in rows:
        tasks_count[r["task"]] += 1
    info = {"who": who, "domain": domain_name, "shape": asdict(shape), "parameters": sum(p.numel() for p in model.parameters()),
            "steps": steps, "learning_rate": learning_rate or config.learning_rate, "seed": config.seed if seed is None else seed,
            "train_seconds": round(seconds, 1), "examples": dict(tasks_count),
            "skills_skipped": config.skipped if who == "student" else [], "config": asdict(config), "eval": scores}
    logger.info("%s: %.1f%% on the eval pool after %.0f s of training", who, 100 * scores["accuracy"], seconds)
    return staged, info


def focus_counts(init: Path, config: ScratchConfig, held_out: set[str], root: str) -> dict[str, Any]:
    """Answer examples per skill for ``--answer-focus``: the starting teacher is scored on
    ``focus_probe_per_skill`` fresh items of each skill (a pool of their own, never eval, dev or seed
    items), and ``answer_focus`` of the ``answer_per_skill x skills`` examples go to the skills in
    proportion to its errors there, the rest evenly. Its scores come back with the counts."""
    probe = [item for s in SKILLS for item, _ in draw_problems(s, "focus-probe", config.focus_probe_per_skill, config.seed, held_out)]
    scores = accuracy_by_node(init, probe)
    errors = {s.key: 1.0 - scores["per_node"]["/".join([root, *s.path])]["accuracy"] for s in SKILLS}
    total = config.answer_per_skill * len(SKILLS)
    spread = sum(errors.values())
    counts = {k: max(1, round(total * ((1 - config.answer_focus) / len(SKILLS) + (config.answer_focus * e / spread if spread else config.answer_focus / len(SKILLS)))))
              for k, e in errors.items()}
    logger.info("answer focus: the starting teacher answers %.1f%% of %d fresh items; most examples to %s", 100 * scores["accuracy"],
                scores["n"], ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4]))
    return {"share": config.answer_focus, "probe_accuracy": scores["accuracy"], "probe_n": scores["n"],
            "probe_per_node": scores["per_node"], "answer_examples": counts}


def _held_out(domain: Any, config: ScratchConfig) -> tuple[list[MCQItem], set[str]]:
    """The eval items the models are scored on, and every seed, dev and eval question (never trained on)."""
    eval_items, seed_items = domain.eval_items(), domain.seed_items()
    held_out = {it.question for it in (*eval_items, *seed_items, *domain.dev_items())}
    return (first_per_skill(eval_items, config.eval_per_skill) if config.eval_per_skill else eval_items), held_out


def build(config: ScratchConfig) -> dict[str, Any]:
    """Build (or reuse) the tokenizer, teacher and student, and the solver when asked; their build info."""
    from data.domains import get_domain

    root = config.output_root()
    whos = ("teacher", "student", "solver") if config.solver else ("teacher", "student")
    infos: dict[str, Any] = {}
    if config.student_only:
        if not is_built(root / "teacher"):
            raise ValueError(f"--student-only: no built teacher in {root} (build the pair first)")
        infos["student"] = _build_student(config, get_domain(config.domain))
    elif config.force or not (is_built(root / "teacher") and is_built(root / "student")):
        infos |= _build_pair(config, get_domain(config.domain))
    else:
        logger.info("teacher and student are built in %s (--force rebuilds them)", root)
    if config.solver and (config.force or not is_built(root / "solver")):
        infos["solver"] = _build_solver(config, get_domain(config.domain))
    elif config.solver:
        logger.info("the solver is built in %s (--force rebuilds it)", root / "solver")
    return {who: infos.get(who) or json.loads((root / who / INFO_FILE).read_text()) for who in whos}


def _build_student(config: ScratchConfig, domain: Any) -> dict[str, Any]:
    """A new student on the built teacher's tokenizer; the teacher is not touched."""
    skills = [s for s in SKILLS if s.key not in config.skipped]
    return _build_beside_teacher("student", config, domain, skills, config.seed + 1, config.student_answer_per_skill, config.student_steps)


def _build_solver(config: ScratchConfig, domain: Any) -> dict[str, Any]:
    """The independent blind solver: the answer task alone, drawn with its own seed, in its own shape."""
    return _build_beside_teacher("solver", config, domain, SKILLS, config.solver_seed, config.solver_answer_per_skill, config.solver_steps,
                                 seed=config.solver_seed)


def _build_beside_teacher(who: str, config: ScratchConfig, domain: Any, skills: Any, data_seed: int, answers: int, steps: int,
                          seed: int | None = None) -> dict[str, Any]:
    """A model trained on the answer task of ``skills`` on the built teacher's tokenizer (the label stage's
    engines then need one vocabulary), moved into place as ``who`` once built and scored."""
    from transformers import AutoTokenizer

    from scratch.tasks import TaskBuilder

    root = config.output_root()
    eval_items, held_out = _held_out(domain, config)
    tokenizer = AutoTokenizer.from_pretrained(root / "teacher")
    examples = TaskBuilder(skills, seed=data_seed, exclude=held_out, root=domain.root).examples({"answer": answers})
    with tempfile.TemporaryDirectory(prefix=".scratch-", dir=root) as work:
        staged, info = _stage_model(who, _tokenize(examples, tokenizer), tokenizer, steps, config, Path(work), eval_items, domain.name, seed=seed)
        info["tokenizer_of"] = str(root / "teacher")
        (staged / INFO_FILE).write_text(json.dumps(info, indent=2))
        if (root / who).exists():
            shutil.rmtree(root / who)
        staged.rename(root / who)
    return info


def _build_pair(config: ScratchConfig, domain: Any) -> dict[str, Any]:
    """The tokenizer, the teacher and the student, moved into place together."""
    from scratch.tasks import TaskBuilder
    from scratch.tokenizer import train_tokenizer

    root = config.output_root()
    teacher_dir, student_dir = root / "teacher", root / "student"
    eval_items, held_out = _held_out(domain, config)
    tasks = TaskBuilder(seed=config.seed, exclude=held_out, root=domain.root)
    init = Path(config.teacher_init).expanduser() if config.teacher_init else None
    focus: dict[str, Any] = {}
    if config.answer_focus and init is not None:
        focus = focus_counts(init, config, held_out, domain.root)
        answers = [e for s in SKILLS for e in TaskBuilder([s], seed=config.seed, exclude=held_out, root=domain.root)
                   .examples({"answer": focus["answer_examples"][s.key]})]
    else:
        answers = tasks.examples({"answer": config.answer_per_skill})
    teacher_examples = answers + tasks.examples({"generate": config.generate_per_skill, "critic": config.critic_per_skill,
                                                 "diagnose": config.diagnose_per_skill})
    student_tasks = TaskBuilder([s for s in SKILLS if s.key not in config.skipped], seed=config.seed + 1, exclude=held_out, root=domain.root)
    student_examples = student_tasks.examples({"answer": config.student_answer_per_skill})
    if init is not None:  # its embeddings are rows of its tokenizer
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(init)
        init_info = json.loads((init / INFO_FILE).read_text())
    else:  # the role names too, so "assistant" is one token and not nine
        tokenizer = train_tokenizer([text for e in teacher_examples for m in e.messages for text in (m["role"], m["content"])], config.vocab_size)
    infos: dict[str, Any] = {}
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".scratch-", dir=root) as work:
        for who, examples, steps in (("teacher", teacher_examples, config.teacher_steps), ("student", student_examples, config.student_steps)):
            is_teacher = who == "teacher"
            staged, info = _stage_model(who, _tokenize(examples, tokenizer), tokenizer, steps, config, Path(work), eval_items, domain.name,
                                        init if is_teacher else None, config.teacher_learning_rate if is_teacher else 0.0)
            if is_teacher and focus:
                info["answer_focus"] = focus
            if is_teacher and init is not None:  # what it started from, and that model's own training
                info["initialised_from"] = {"path": str(init), **{k: init_info[k] for k in ("steps", "train_seconds", "examples", "eval", "initialised_from") if k in init_info}}
                info["total_train_seconds"] = round(info["train_seconds"] + init_info.get("total_train_seconds", init_info["train_seconds"]), 1)
            (staged / INFO_FILE).write_text(json.dumps(info, indent=2))
            infos[who] = info
        # Both into place only once both are built: they share the tokenizer, so a failed student build
        # must not leave a new teacher beside an old student.
        for who, target in (("teacher", teacher_dir), ("student", student_dir)):
            if target.exists():
                shutil.rmtree(target)
            (Path(work) / f"{who}-model").rename(target)
    return infos
