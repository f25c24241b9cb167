"""Losses of multi-stage encoder distillation: pure functions of tensors, and thin sentence-transformers
loss modules (``nn.Module(model)``, ``forward(sentence_features, labels)``) that call them.

Following the seed's code (KB-Ding/Multi-stage-Distillaton-Framework) and ANCHORS.md:
- stage 2: MSE between the mean-pooled embedding-layer outputs of student and teacher;
- stage 3: MSE between sentence embeddings (Reimers & Gurevych 2020);
- stage 4, on (source, target) pairs whose teacher embedding t is the source's:
  ``mcl``  MSE(cos(s, g), cos(t, t)) + MSE(s, t) + MSE(g, t)   (not InfoNCE: a cosine-matrix match)
  ``mse``  MSE(s, t) + MSE(g, t)
  ``ce``   w · CE(scale · cos(s, g), diagonal) + MSE(s, t) + MSE(g, t)   (w = 0.01, scale = 20)
  ``bool`` MSE(cos(s, g), I) + MSE(s, t) + MSE(g, t)
MSE is the mean over all elements (``nn.MSELoss``), as in the seed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

PAIR_LOSSES = ("mcl", "mse", "ce", "bool")


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) × (M, D) -> (N, M) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def masked_mean(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) token states averaged over the positions where the mask is 1 -> (B, H)."""
    m = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (stages 2 and 3)."""
    return F.mse_loss(student, teacher)


def pair_loss(source: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor, kind: str = "mcl", scale: float = 20.0, ce_weight: float = 0.01) -> torch.Tensor:
    """Stage-4 loss of a batch of N pairs: student ``source`` and ``target`` embeddings (N, D) and the
    teacher's embedding of each source (N, D); ``kind`` one of PAIR_LOSSES (module docstring)."""
    if kind not in PAIR_LOSSES:
        raise ValueError(f"pair loss must be one of {', '.join(PAIR_LOSSES)}, got {kind!r}")
    anchor = F.mse_loss(source, teacher) + F.mse_loss(target, teacher)
    if kind == "mse":
        return anchor
    sim = cosine_matrix(source, target)  # (N, N)
    if kind == "mcl":
        return F.mse_loss(sim, cosine_matrix(teacher, teacher)) + anchor
    if kind == "bool":
        return F.mse_loss(sim, torch.eye(sim.shape[0], dtype=sim.dtype, device=sim.device)) + anchor
    labels = torch.arange(sim.shape[0], device=sim.device)
    return ce_weight * F.cross_entropy(scale * sim, labels) + anchor


def _sentence_embedding(model: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(features)["sentence_embedding"]


class EmbeddingLayerMSELoss(nn.Module):
    """Stage 2: the student's embedding layer (no transformer layer) mean-pooled over the mask, against the
    teacher's, given as labels (B, H)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        (features,) = list(sentence_features)
        bert = self.model[0].auto_model
        tokens = bert.embeddings(input_ids=features["input_ids"], token_type_ids=features.get("token_type_ids"))  # (B, T, H)
        return embedding_mse(masked_mean(tokens, features["attention_mask"]), labels.to(tokens.dtype))

    @property
    def citation(self) -> str:
        return "Ding et al. 2022, Multi-stage Distillation Framework (Findings of NAACL)"


class SentenceMSELoss(nn.Module):
    """Stage 3: MSE of each text column's sentence embedding to the teacher's (labels, (B, D))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        embeddings = [_sentence_embedding(self.model, f) for f in sentence_features]
        return sum(embedding_mse(e, labels.to(e.dtype)) for e in embeddings) / len(embeddings)


class PairDistillLoss(nn.Module):
    """Stage 4 on (source, target) columns; labels are the teacher's source embeddings (B, D)."""

    def __init__(self, model: nn.Module, kind: str = "mcl", scale: float = 20.0, ce_weight: float = 0.01) -> None:
        super().__init__()
        if kind not in PAIR_LOSSES:
            raise ValueError(f"pair loss must be one of {', '.join(PAIR_LOSSES)}, got {kind!r}")
        self.model, self.kind, self.scale, self.ce_weight = model, kind, scale, ce_weight

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        source, target = (_sentence_embedding(self.model, f) for f in sentence_features)
        return pair_loss(source, target, labels.to(source.dtype), self.kind, self.scale, self.ce_weight)

    def get_config_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "scale": self.scale, "ce_weight": self.ce_weight}
