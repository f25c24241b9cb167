"""The multi-stage pipeline: teacher → student shape → stages 2, 3, 4 (each switchable) → ``<out>/student``.

``distill_encoder(cfg)`` is what the CLI runs and what a user calls from Python; each stage's table is
printed with the teacher's row beside it. The final student is also written to ``<out>/student`` (a copy
of the last stage's folder, renamed into place), with ``distill.json`` (options and stage reports).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from training.embedding.config import EncoderDistillConfig
from training.embedding.data import (
    EncoderData,
    build_data,
    read_mcq_files,
    read_pairs_tsv,
    read_sentences,
)
from training.embedding.encoders import load_encoder
from training.embedding.evaluate import (
    EvalRow,
    STEncoder,
    eval_texts,
    evaluate_encoder,
    print_table,
)
from training.embedding.stages import STAGE_FILE, StageReport, train_stage
from training.embedding.student import StudentShape, build_student, evenly_spaced
from training.embedding.targets import TeacherTargets, cached_targets

logger = logging.getLogger(__name__)


@dataclass
class DistillResult:
    student: Any
    folder: Path
    reports: list[StageReport]
    tables: dict[int, list[EvalRow]]


def load_data(cfg: EncoderDistillConfig) -> EncoderData:
    """The config's items (``--data`` or the domain's seed pool), extra sentences and pairs, split into
    train and held-out."""
    from data.domains import get_domain
    from data.records import DataError

    if cfg.data:
        items = read_mcq_files(cfg.data)
    else:
        try:
            items = get_domain(cfg.domain).seed_items()
        except DataError as e:
            from training.embedding.errors import EmbeddingDataError

            raise EmbeddingDataError(str(e)) from None
    pairs = read_pairs_tsv(cfg.pairs) if cfg.pairs else None
    extra = read_sentences(cfg.sentences) if cfg.sentences else ()
    return build_data(items, pairs, cfg.dev_fraction, extra_sentences=extra, seed=cfg.seed)


def student_shape(cfg: EncoderDistillConfig, teacher_layers: int) -> StudentShape:
    from training.embedding.errors import EmbeddingSetupError

    layers = cfg.layer_list if cfg.layer_list is not None else evenly_spaced(teacher_layers, cfg.keep)
    if any(not 0 <= i < teacher_layers for i in layers):
        raise EmbeddingSetupError(f"--layers {cfg.layers}: the teacher has layers 0..{teacher_layers - 1}")
    return StudentShape(cfg.bottleneck or None, tuple(layers), cfg.repeat)


def distill_encoder(cfg: EncoderDistillConfig) -> DistillResult:
    """Run the configured stages; returns the student and what each stage did."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    data = load_data(cfg)  # inputs first: a refused file or model leaves no output folder behind
    teacher = load_encoder(cfg.teacher, cfg.device, cfg.max_seq_length)
    out.mkdir(parents=True, exist_ok=True)
    print("data: " + ", ".join(f"{k} {v}" for k, v in data.summary().items()))
    dev_texts = eval_texts(data.dev_pairs, data.dev_items)
    everything = list(dict.fromkeys([*data.train_sentences, *dev_texts]))
    targets: TeacherTargets = cached_targets(teacher, everything, cfg.cache_dir or out / "cache", progress=cfg.progress)
    teacher_embed = dict(zip(dev_texts, targets.sentence_of(dev_texts)))
    teacher_row = evaluate_encoder(f"teacher ({cfg.teacher})", STEncoder(teacher), teacher_embed, data.dev_pairs, data.dev_items, model=teacher, embed=teacher_embed)

    shape = student_shape(cfg, teacher[0].auto_model.config.num_hidden_layers)
    student = build_student(teacher, shape)
    print(f"student: {shape.describe()}")
    tables: dict[int, list[EvalRow]] = {}
    reports: list[StageReport] = []
    for stage in cfg.stage_list:
        student, report = train_stage(student, stage, data, targets, cfg)
        reports.append(report)
        row = evaluate_encoder(f"student after stage {stage}", STEncoder(student), teacher_embed, data.dev_pairs, data.dev_items, model=student)
        tables[stage] = [teacher_row, row]
        print_table(tables[stage], f"stage {stage} ({report.name}){' (finished before: loaded)' if report.resumed else ''}: {report.steps} steps, {report.seconds:.0f} s")

    final = out / "student"
    tmp = out / ".student.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(reports[-1].folder, tmp, ignore=shutil.ignore_patterns(STAGE_FILE))  # the last stage, as saved
    (tmp / "distill.json").write_text(json.dumps({"options": vars(cfg), "shape": asdict(shape), "stages": [asdict(r) for r in reports]}, indent=2, default=str), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print(f"student saved to {final}")
    return DistillResult(student, final, reports, tables)

