"""The stages, each trained with sentence-transformers' ``SentenceTransformerTrainer`` into a folder of its own.

    stage 2  bottleneck   only the embedding layer trains: its mean-pooled output against the teacher's
    stage 3  recurrence   the whole student: sentence embeddings against the teacher's (MSE)
    stage 4  pairs        (source, target) pairs: mcl / mse / ce / bool (training.embedding.losses)

A finished stage is ``<out>/stage<N>/`` (a sentence-transformers folder with ``stage.json``), renamed into
place when complete; a later run with the same options loads it and goes on with the next stage. A
killed stage resumes from the trainer's last checkpoint in ``<out>/stage<N>.work/``. A finished stage
trained with other options is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from training.embedding.config import EncoderDistillConfig
from training.embedding.data import EncoderData
from training.embedding.errors import EmbeddingSetupError
from training.embedding.losses import (
    EmbeddingLayerMSELoss,
    PairDistillLoss,
    SentenceMSELoss,
)
from training.embedding.targets import TeacherTargets

logger = logging.getLogger(__name__)

STAGE_NAMES = {2: "bottleneck", 3: "recurrence", 4: "pairs"}
STAGE_FILE = "stage.json"


@dataclass
class StageReport:
    """What a stage did (``resumed``: loaded from its finished folder, not trained again)."""

    stage: int
    name: str
    folder: str
    examples: int
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    resumed: bool = False


def data_fingerprint(data: EncoderData) -> str:
    """A hash of what the stages train on (the split and the pairs), so edited data is not mistaken for the old."""
    h = hashlib.sha256()
    for text in (*data.train_sentences, *(f"{a}\t{b}" for a, b in data.train_pairs)):
        h.update(text.encode() + b"\n")
    return h.hexdigest()[:16]


def stage_options(cfg: EncoderDistillConfig, stage: int, data: EncoderData | None = None) -> dict[str, Any]:
    """The options a finished stage depends on (a change in any of them means training it again)."""
    keys = ["teacher", "bottleneck", "keep", "layers", "repeat", "batch_size", "max_seq_length", "dev_fraction", "seed", "data", "domain", "sentences"]
    keys += {2: ["stage2_epochs", "stage2_learning_rate"], 3: ["stage3_epochs", "learning_rate"], 4: ["stage4_epochs", "learning_rate", "loss", "scale", "ce_weight", "pairs", "pair_targets"]}[stage]
    extra = {"stages_before": [s for s in cfg.stage_list if s < stage]}
    if data is not None:
        extra["data_fingerprint"] = data_fingerprint(data)
    options = {k: getattr(cfg, k) for k in keys} | extra
    options["data"] = [str(Path(d).resolve()) for d in cfg.data]  # the same files named from another folder
    return options


def changed_options(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The option names whose values differ. An option missing from an older stage.json counts as
    unchanged when it is unset now (None): it did not exist then, and unset it changes nothing."""
    missing = object()
    keys = set(saved) | {k for k, v in wanted.items() if not (v is None and k not in saved)}
    return sorted(k for k in keys if saved.get(k, missing) != wanted.get(k, missing))


def stage_dataset(stage: int, data: EncoderData, targets: TeacherTargets, pair_targets: str = "both"):
    """The stage's rows: text column(s) and the teacher target as ``label`` (stage 4: the source's, or
    the source's and the target's with ``pair_targets="both"``)."""
    from datasets import Dataset

    if stage == 2:
        return Dataset.from_dict({"text": data.train_sentences, "label": targets.token_mean_of(data.train_sentences).tolist()})
    if stage == 3:
        return Dataset.from_dict({"text": data.train_sentences, "label": targets.sentence_of(data.train_sentences).tolist()})
    if not data.train_pairs:
        raise EmbeddingSetupError("stage 4 has no training pairs: give --pairs FILE.tsv or items with a key option")
    sources, goals = [a for a, _ in data.train_pairs], [b for _, b in data.train_pairs]
    teacher = targets.sentence_of(sources)  # (N, D)
    if pair_targets == "both":  # the teacher reads the targets too: (N, 2, D)
        teacher = torch.stack([teacher, targets.sentence_of(goals)], dim=1)
    return Dataset.from_dict({"source": sources, "target": goals, "label": teacher.tolist()})


def stage_loss(stage: int, model: Any, cfg: EncoderDistillConfig) -> torch.nn.Module:
    if stage == 2:
        return EmbeddingLayerMSELoss(model)
    if stage == 3:
        return SentenceMSELoss(model)
    return PairDistillLoss(model, cfg.loss, cfg.scale, cfg.ce_weight)


class LossLog(TrainerCallback):
    """Keeps the training losses the trainer logs (a stage's report gives the first and the last)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _device(cfg: EncoderDistillConfig) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def train_stage(model: Any, stage: int, data: EncoderData, targets: TeacherTargets, cfg: EncoderDistillConfig) -> tuple[Any, StageReport]:
    """Train one stage (or load it when ``<out>/stage<N>`` is finished with the same options)."""
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers

    from training.embedding.sampler import LengthGroupedBatchSampler

    out = Path(cfg.out)
    folder, work = out / f"stage{stage}", out / f"stage{stage}.work"
    options = stage_options(cfg, stage, data)
    done = folder / STAGE_FILE
    if done.is_file():
        saved = json.loads(done.read_text(encoding="utf-8"))
        changed = changed_options(saved.get("options", {}), json.loads(json.dumps(options)))  # as stored: tuples are lists
        if changed:
            raise EmbeddingSetupError(f"{folder} was trained with other options ({', '.join(changed)}); choose another --out to keep it")
        logger.info("stage %d (%s) is finished in %s: loading it", stage, STAGE_NAMES[stage], folder)
        loaded = SentenceTransformer(str(folder), device=_device(cfg))
        return loaded, StageReport(**(saved["report"] | {"folder": str(folder), "resumed": True}))  # where it is now: the run may have been moved

    dataset = stage_dataset(stage, data, targets, cfg.resolved_pair_targets(data))
    loss = stage_loss(stage, model, cfg)
    frozen = []
    if stage == 2:  # only the embedding layer is in the stage-2 graph; keep the optimizer off the rest
        embeddings = model[0].auto_model.embeddings
        keep = {id(p) for p in embeddings.parameters()}
        frozen = [p for p in model.parameters() if id(p) not in keep and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
    device = _device(cfg)
    epochs = {2: cfg.stage2_epochs, 3: cfg.stage3_epochs, 4: cfg.stage4_epochs}[stage]
    steps_per_epoch = max(1, -(-len(dataset) // cfg.batch_size))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work),
        num_train_epochs=epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.stage2_learning_rate if stage == 2 else cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES if stage == 4 else LengthGroupedBatchSampler,  # stage 4: duplicates would contradict the in-batch targets
        save_strategy="steps",
        save_steps=max(50, steps_per_epoch // 2),
        save_total_limit=1,
        logging_steps=max(1, min(50, steps_per_epoch // 4)),
        report_to="none",
        disable_tqdm=not cfg.progress,
        use_cpu=device == "cpu",
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
    )
    log = LossLog()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[log])
    resume = any(work.glob("checkpoint-*")) if work.is_dir() else False
    if resume:
        logger.info("stage %d resumes from the last checkpoint in %s", stage, work)
    print(f"stage {stage} ({STAGE_NAMES[stage]}): {len(dataset)} rows, {epochs:g} epochs of {steps_per_epoch} steps")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    for p in frozen:
        p.requires_grad_(True)
    report = StageReport(stage, STAGE_NAMES[stage], str(folder), len(dataset), int(result.global_step), round(seconds, 1), log.losses[0] if log.losses else None, log.losses[-1] if log.losses else None)
    tmp = out / f".stage{stage}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(str(tmp))
    (tmp / STAGE_FILE).write_text(json.dumps({"options": options, "report": asdict(report)}, indent=2), encoding="utf-8")
    tmp.rename(folder)  # the commit point of the stage
    shutil.rmtree(work, ignore_errors=True)
    return model, report
