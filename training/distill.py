"""Distil a teacher into a student on MCQ items: one call for the loop's train node, and a CLI.

    python -m training.distill --student smollm2?layers=15 --teacher smollm2 --data items.jsonl \
        --output_dir runs/kd-student --max_steps 20

KV-cache distillation from heterogeneous teachers (training.kv), with the curriculum's phase 5:

    python -m training.distill --student "smollm2?layers=6" --kv-teachers smollm2,minilm --phase 5 \
        --data ../shared/data/clinical/mmlu_dev.jsonl --output_dir runs/kv-student --max_steps 20

Stored logits instead of an online teacher: ``--logits DIR`` (a folder written by
``training.teacher_logits.extract_teacher_logits`` for the same items). Every KDConfig / SFTConfig option
is a flag (``--alpha 0.7 --temperature 2 --lora_r 16``); ``--config recipe.yaml`` sets any of them from a
file (command-line values win, unknown keys are an error).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from data.cli import trl_parse
from data.records import (
    DataError,
    MCQItem,
    atomic_write_json,
    check_writable,
    usual_mode,
)
from engines.smollm2 import ModelNotFoundError
from engines.spec import SpecError
from training.kd_config import KDConfig
from training.mcq_data import build_dataset, mcq_conversation, read_training_items

logger = logging.getLogger(__name__)

METRICS_FILE = "distill_metrics.json"


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """A local model folder as is; anything else is a model spec resolved by ``engines.parse_spec``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from engines import parse_spec

    return Path(parse_spec(str(spec)).local_path())


def distill_overrides(*, lora: bool = False, **overrides: Any) -> dict[str, Any]:
    """The KDConfig fields of the loop's defaults: no reporting or checkpoints, a log entry every step,
    LoRA rank 16 when ``lora``; ``overrides`` are any KDConfig fields. (What ``training.launch`` sends.)"""
    values: dict[str, Any] = {"report_to": "none", "save_strategy": "no", "logging_steps": 1}
    if lora:
        values["lora_r"] = 16
    values.update(overrides)
    return values


def distill_config(output_dir: str, *, lora: bool = False, **overrides: Any) -> KDConfig:
    """A KDConfig with the loop's defaults (``distill_overrides``)."""
    return KDConfig(output_dir=output_dir, **distill_overrides(lora=lora, **overrides))


def _check_replaceable(dst: Path) -> None:
    """``dst`` may take the result: absent, not a file, and empty or a previous result (see _replace_dir)."""
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"output_dir {dst} exists and is not a folder; choose an empty or new folder")
    if dst.is_dir():
        visible = [p for p in dst.iterdir() if not p.name.startswith(".")]
        if visible and not (dst / METRICS_FILE).is_file():
            raise ValueError(f"output_dir {dst} exists and holds other files; choose an empty or new folder")


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename the finished folder ``src`` into place as ``dst``.

    An absent or empty ``dst`` is replaced by one rename. A previous result (it has METRICS_FILE, or
    holds only hidden files such as a stage marker) is swapped out first; any other non-empty folder is
    refused rather than deleted.
    """
    if dst.is_dir() and any(dst.iterdir()):
        _check_replaceable(dst)
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", suffix=".tmp", dir=dst.parent))
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _check_answers_fit(rows: Any, max_length: int | None) -> None:
    """Refuse a training set whose every answer lies past ``max_length`` (the trainer truncates there, so
    every label would be masked and the run would train on nothing); warn when only some do."""
    if not max_length:
        return
    starts = [next((i for i, label in enumerate(labels) if label != -100), len(labels)) for labels in rows["labels"]]
    lost = sum(start >= max_length for start in starts)
    if lost == len(starts):
        raise DataError(f"every one of the {lost} items' answers starts after max_length={max_length} tokens "
                        f"(the shortest prompt has {min(starts)}): nothing left to train on; raise --max_length")
    if lost:
        logger.warning("%d of %d items lose their whole answer to max_length=%d and teach nothing", lost, len(starts), max_length)


def _last_logged(history: list[dict[str, Any]], key: str) -> Any:
    return next((entry[key] for entry in reversed(history) if key in entry), None)


def distill(
    student_path: str | os.PathLike,
    items: Sequence[MCQItem],
    output_dir: str | os.PathLike,
    config: KDConfig,
    logits_dir: str | os.PathLike | None = None,
    teacher_path: str | os.PathLike | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train the student at ``student_path`` on ``items`` and save it (full model or LoRA adapter, plus
    tokenizer and ``distill_metrics.json``) atomically into ``output_dir``.

    ``logits_dir`` / ``teacher_path`` override the config's ``logits_dir`` / ``teacher_model``;
    ``callbacks`` are TrainerCallbacks (e.g. ``training.selection.BestEpochCallback``). The
    trainer runs with ``output_dir`` set to a temporary sibling folder that is renamed into place at the
    end, so ``config.output_dir`` is not used. No items, or none whose answer starts within
    ``config.max_length`` tokens, is a DataError raised before anything is written: a student saved
    unchanged would pass for a trained one.
    Returns ``steps, items, mode, tokens, train_time, train_loss, ce_loss, kd_loss, total_loss, lora,
    output_dir`` and ``<objective>_loss`` for each objective; the losses are the last logged values.
    Works unchanged under ``accelerate launch`` (only the main process writes).
    """
    from transformers import AutoTokenizer

    from training.kd_trainer import KDTrainer

    out = Path(output_dir).resolve()
    config = copy.copy(config)  # shallow: only the fields below change, the caller's config stays as it was
    if logits_dir is not None:
        config.logits_dir = str(logits_dir)
    if teacher_path is not None:
        config.teacher_model = str(teacher_path)
    if config.logits_dir and config.teacher_model:
        raise ValueError("distill needs an online teacher or stored logits, not both")
    mode = "offline" if config.logits_dir else "online" if config.teacher_model else "sft"
    if config.kv_teachers:  # logits from the first KV teacher when alpha > 0 and no other teacher is named
        mode = ("online" if mode == "sft" and config.alpha > 0 else mode) + "+kv"
    elif config.kv_dir:
        mode += "+stored-kv"

    if not items:
        raise DataError("no training items: nothing to train on")
    _check_replaceable(out)  # before the training, not after it
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    rows = build_dataset(items, tokenizer)
    # keep_start (TRL's default) cuts the end of a long sequence, which is where the answer is.
    _check_answers_fit(rows, config.max_length if getattr(config, "truncation_mode", "keep_start") == "keep_start" else None)

    # Under `accelerate launch` every process runs this function; only the main one writes files. The
    # temporary folder has a fixed name so that all processes hand the same output_dir to the Trainer
    # (which saves from the main process only).
    from accelerate import PartialState

    state = PartialState()
    main = state.is_main_process
    tmp = out.parent / f".{out.name}.tmp"
    if main:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run that was killed
        tmp.mkdir(mode=usual_mode(directory=True))
    state.wait_for_everyone()
    try:
        metrics: dict[str, Any] = {"steps": 0, "items": len(items), "mode": mode, "tokens": 0, "train_time": 0.0,
                                   "train_loss": None, "ce_loss": None, "kd_loss": None, "total_loss": None,
                                   "lora": config.lora_r > 0, "output_dir": str(out), "processes": state.num_processes}
        config.output_dir = str(tmp)
        # KV teachers read each item's conversation, rendered their own way.
        conversations = {item.id: mcq_conversation(item) for item in items} if (config.kv_teachers or config.kv_dir) else None
        trainer = KDTrainer(
            str(student_path), args=config, train_dataset=rows, processing_class=tokenizer,
            kv_conversations=conversations,
            kv_tags={item.id: item.source for item in items} if conversations else None,
            callbacks=list(callbacks) or None,
        )
        result = trainer.train()
        trainer.save_model(str(tmp))
        history = trainer.state.log_history
        # Every logged component (ce_loss, kd_loss, total_loss, <objective>_loss), last value of each.
        losses = {key for entry in history for key in entry if key.endswith("_loss") and not key.startswith(("eval_", "train_"))}
        # And each objective's own figures (kv_mse_k/<teacher>, kv_weight/<teacher>, ...).
        names = tuple(f"{o.name}_" for o in trainer.objectives)
        losses |= {key for entry in history for key in entry if names and key.startswith(names)}
        metrics.update(
            steps=trainer.state.global_step,
            tokens=_last_logged(history, "num_tokens") or 0,
            train_time=result.metrics.get("train_runtime", 0.0),
            train_loss=result.training_loss,
            **{key: _last_logged(history, key) for key in sorted(losses)},
        )
        if main:
            atomic_write_json(tmp / METRICS_FILE, metrics)
            _replace_dir(tmp, out)
        state.wait_for_everyone()
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("distilled %d items in %d steps (%s) into %s", len(items), metrics["steps"], mode, out)
    return metrics


# ------------------------------------------------------------------------------------------------ CLI


@dataclass
class DistillArguments:
    student: str = field(metadata={"help": "Student model spec or folder: smollm2, smollm2?layers=15, hf:PATH, PATH."})
    data: list[str] = field(metadata={"help": "MCQ JSONL file(s) to train on (MCQItem or GeneratedItem lines)."})


def make_parser():
    from trl import TrlParser

    return TrlParser((DistillArguments, KDConfig), prog="python -m training.distill")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.lifetime import DIE_WITH_PARENT_ENV, die_with_parent

    if os.environ.get(DIE_WITH_PARENT_ENV):  # launched by training.launch: stop when the launcher stops
        die_with_parent()
    parser = make_parser()
    try:
        args, config = trl_parse(parser, argv)
        items = read_training_items(args.data)
        student = resolve_model_path(args.student)
        teacher = resolve_model_path(config.teacher_model) if config.teacher_model else None
        if config.alpha > 0 and not (teacher or config.logits_dir or config.kv_teachers or config.kv_dir):
            raise ValueError(f"--alpha {config.alpha} distils from a teacher: give --teacher (online) or --logits_dir (stored), or --alpha 0 for CE only")
        check_writable(config.output_dir, "--output_dir")
        _check_replaceable(Path(config.output_dir))
    except (ValueError, DataError, OSError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from training.kv.errors import KVSetupError

    try:
        metrics = distill(student, items, config.output_dir, config, teacher_path=teacher)
    except (KVSetupError, SpecError, ModelNotFoundError) as e:  # refused before the first step; nothing written
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:  # the items left nothing to train on, refused before anything was written
        print(f"error: {', '.join(args.data)}: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:  # one copy under accelerate launch
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
