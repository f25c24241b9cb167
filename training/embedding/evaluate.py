"""How close a student encoder is to its teacher, and what it costs.

- fidelity: Spearman correlation between the student's and the teacher's cosine similarities of held-out
  pairs (the primary figure);
- mse x 100: mean squared error to the teacher's sentence embeddings of the held-out texts;
- recall@1: each held-out question against its item's options, hit when the key option is nearest;
- parameters (unique), weights file size, layer applications (recurrence saves parameters, not these),
  and encode throughput (sentences/s at batch 32) on this machine.

``Encoder`` is anything with ``encode(texts, batch_size) -> (N, D) tensor``: a sentence-transformers model
(``STEncoder``) or an exported ONNX session (``training.embedding.export.OnnxEncoder``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from data.records import MCQItem

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor: ...


class STEncoder:
    """A sentence-transformers model as an Encoder (float32 tensors on the CPU)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode():
            out = self.model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        return out.float().cpu()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties get their average rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def pair_cosines(embed: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    a = torch.stack([embed[x] for x, _ in pairs])
    b = torch.stack([embed[y] for _, y in pairs])
    return F.cosine_similarity(a, b, dim=-1)


def embed_texts(encoder: Encoder, texts: Sequence[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
    texts = list(dict.fromkeys(texts))
    return dict(zip(texts, encoder.encode(texts, batch_size=batch_size)))


def fidelity(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]]) -> float:
    return spearman(pair_cosines(student, pairs), pair_cosines(teacher, pairs))


def mse_x100(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> float:
    """100 x MSE to the teacher's embeddings; NaN when the dimensions differ (a PCA-reduced encoder)."""
    keys = list(teacher)
    a, b = torch.stack([student[k] for k in keys]), torch.stack([teacher[k] for k in keys])
    return 100.0 * float(F.mse_loss(a, b)) if a.shape == b.shape else float("nan")


def recall_at_1(embed: dict[str, torch.Tensor], items: Sequence[MCQItem]) -> float:
    """Share of items whose question is nearest (cosine) to its key option among the item's options."""
    if not items:
        return float("nan")
    hits = 0
    for it in items:
        q = embed[it.question.strip()]
        letters = list(it.options)
        opts = torch.stack([embed[it.options[k].strip()] for k in letters])
        hits += letters[int(F.cosine_similarity(opts, q.unsqueeze(0), dim=-1).argmax())] == it.answer_idx
    return hits / len(items)


def eval_texts(pairs: Sequence[tuple[str, str]], items: Sequence[MCQItem]) -> list[str]:
    return list(dict.fromkeys([t for p in pairs for t in p] + [t.strip() for it in items for t in (it.question, *it.options.values())]))


def throughput(encoder: Encoder, texts: Sequence[str], batch_size: int = 32, rounds: int = 3, min_seconds: float = 1.0) -> float:
    """Sentences per second encoding ``texts`` at ``batch_size``: one warm-up pass, then the best of
    ``rounds`` rounds of at least ``min_seconds`` each (the least disturbed by whatever else the machine
    does; single 2-second windows of the same model varied by ±20% here)."""
    texts = list(texts)
    encoder.encode(texts, batch_size=batch_size)
    best = 0.0
    for _ in range(rounds):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds:
            encoder.encode(texts, batch_size=batch_size)
            done += len(texts)
        best = max(best, done / elapsed)
    return best


def weights_bytes(model: Any) -> int:
    """Bytes of the model's weights as its safetensors files hold them (each tensor once; the small JSON
    header aside), counted in memory instead of writing the folder out for every row."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@dataclass
class EvalRow:
    """One row of an evaluation table."""

    name: str
    fidelity: float
    mse_x100: float
    recall_at_1: float
    parameters: int | None
    size_mb: float | None
    layer_applications: int | None
    sentences_per_s: float | None
    speedup: float | None = None

    def cells(self) -> list[str]:
        def opt(v, fmt):
            return "-" if v is None else format(v, fmt)

        return [self.name, f"{self.fidelity:.4f}", f"{self.mse_x100:.4f}", f"{self.recall_at_1:.3f}", opt(self.parameters and self.parameters / 1e6, ".2f"), opt(self.size_mb, ".1f"), opt(self.layer_applications, "d"), opt(self.sentences_per_s, ".0f"), opt(self.speedup, ".2f")]


HEADERS = ["model", "fidelity", "MSE x100", "recall@1", "params (M)", "size (MB)", "layer apps", "sent/s", "speed-up"]


def evaluate_encoder(name: str, encoder: Encoder, teacher_embed: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]], items: Sequence[MCQItem], model: Any = None, speed_texts: Sequence[str] | None = None, size_bytes: int | None = None, teacher_speed: float | None = None, embed: dict[str, torch.Tensor] | None = None) -> EvalRow:
    """Figures of one encoder against the teacher's embeddings of the same texts. ``embed``: the encoder's
    embeddings of those texts when they are already at hand (the teacher's own row), not encoded again."""
    from training.embedding.student import count_parameters, layer_applications

    if embed is None:
        embed = embed_texts(encoder, list(teacher_embed))
    speed = throughput(encoder, speed_texts) if speed_texts else None
    params = count_parameters(model) if model is not None else None
    apps = None
    if model is not None:
        try:
            apps = layer_applications(model)
        except ValueError:
            apps = None
    if size_bytes is None and model is not None:
        size_bytes = weights_bytes(model)
    return EvalRow(name, fidelity(embed, teacher_embed, pairs), mse_x100(embed, teacher_embed), recall_at_1(embed, items), params, size_bytes / 2**20 if size_bytes else None, apps, speed, speed / teacher_speed if speed and teacher_speed else None)


def print_table(rows: Sequence[EvalRow], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "model" else "right")
    for r in rows:
        table.add_row(*r.cells())
    Console(width=160).print(table)
