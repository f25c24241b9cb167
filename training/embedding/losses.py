"""Losses of multi-stage encoder distillation: pure functions of tensors, and thin sentence-transformers
loss modules (``nn.Module(model)``, ``forward(sentence_features, labels)``) that call them.

Following the seed's code (KB-Ding/Multi-stage-Distillaton-Framework) and ANCHORS.md:
- stage 2: MSE between the mean-pooled embedding-layer outputs of student and teacher;
- stage 3: MSE between sentence embeddings (Reimers & Gurevych 2020);
- stage 4, on (source, target) pairs, with the teacher's embedding t of the source and u of the target:
  ``mcl``  MSE(cos(s, g), cos(t, u)) + MSE(s, t) + MSE(g, u)   (not InfoNCE: a cosine-matrix match)
  ``mse``  MSE(s, t) + MSE(g, u)
  ``ce``   w · CE(scale · cos(s, g), diagonal) + MSE(s, t) + MSE(g, u)   (w = 0.01, scale = 20)
  ``bool`` MSE(cos(s, g), I) + MSE(s, t) + MSE(g, u)
In the seed's cross-lingual setting the teacher reads only the source and the target is its translation,
so u = t (pass no ``teacher_target``): that is the seed's code exactly. For in-domain pairs whose target
is not a paraphrase (question ↔ key option) the teacher reads both sides: pulling an option onto its
question's embedding would teach the student what the teacher does not do.
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


def pair_loss(source: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor, kind: str = "mcl", scale: float = 20.0, ce_weight: float = 0.01, teacher_target: torch.Tensor | None = None) -> torch.Tensor:
    """Stage-4 loss of a batch of N pairs: student ``source`` and ``target`` embeddings (N, D), the
    teacher's embedding of each source (N, D) and, where the teacher reads the targets too, of each
    target (``teacher_target``; default: the source's, as for translations); ``kind`` one of PAIR_LOSSES."""
    if kind not in PAIR_LOSSES:
        raise ValueError(f"pair loss must be one of {', '.join(PAIR_LOSSES)}, got {kind!r}")
    other = teacher if teacher_target is None else teacher_target
    anchor = F.mse_loss(source, teacher) + F.mse_loss(target, other)
    if kind == "mse":
        return anchor
    sim = cosine_matrix(source, target)  # (N, N)
    if kind == "mcl":
        return F.mse_loss(sim, cosine_matrix(teacher, other)) + anchor
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
    """Stage 4 on (source, target) columns; labels are the teacher's source embeddings (B, D), or the
    teacher's source and target embeddings (B, 2, D) where it reads both sides."""

    def __init__(self, model: nn.Module, kind: str = "mcl", scale: float = 20.0, ce_weight: float = 0.01) -> None:
        super().__init__()
        if kind not in PAIR_LOSSES:
            raise ValueError(f"pair loss must be one of {', '.join(PAIR_LOSSES)}, got {kind!r}")
        self.model, self.kind, self.scale, self.ce_weight = model, kind, scale, ce_weight

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        source, target = (_sentence_embedding(self.model, f) for f in sentence_features)
        labels = labels.to(source.dtype)
        if labels.dim() == 3:  # (B, 2, D): the teacher's source and target embeddings
            return pair_loss(source, target, labels[:, 0], self.kind, self.scale, self.ce_weight, teacher_target=labels[:, 1])
        return pair_loss(source, target, labels, self.kind, self.scale, self.ce_weight)

    def get_config_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "scale": self.scale, "ce_weight": self.ce_weight}
