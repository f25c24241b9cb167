"""Students of dataset distillation: classifiers that read ``inputs_embeds``, because a synthetic text
set is learnt in embedding space (text is discrete).

- ``PooledHeadClassifier``: a small position-aware classifier over frozen token embeddings (each
  token normalised, then a linear map to width d plus learned positions, one residual GELU block, attention pooling with one learned
  query, a linear head). Position-aware on purpose: with mean pooling first, every position of a
  synthetic example gets the same gradient and the set cannot learn word order.
- ``BackboneClassifier``: a pretrained transformer encoder (eager attention: the fused attention
  kernels have no double backward, which the unroll needs) with a fresh linear head on mean pooling.
- ``TokenEmbedder``: a tokenizer and the frozen token table of a sentence encoder, mapping texts to
  ``(inputs_embeds, attention_mask)``; the synthetic set lives in that table's space.

``trainable_names`` picks what the experts train (``all``, ``head``, ``top:K`` layers plus the head,
``deep:F`` the deepest fraction of the parameters); everything else stays frozen everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.trajectory.errors import TrajectorySetupError
from training.trajectory.matching import LAYER

NEG = -1e4  # masked attention score: finite, so second derivatives stay finite


class PooledHeadClassifier(nn.Module):
    """(B, L, H) embeddings -> (B, C) logits through a few thousand parameters."""

    def __init__(self, hidden: int, classes: int, width: int = 64, max_length: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, width)
        self.pos = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.mix = nn.Linear(width, width)
        self.query = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.head = nn.Linear(width, classes)
        self.max_length = max_length

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        if length > self.max_length:
            raise ValueError(f"inputs of {length} positions; this classifier was built for at most {self.max_length}")
        x = F.layer_norm(inputs_embeds, inputs_embeds.shape[-1:])  # token tables differ in scale (BERT's rows are ~1, a random one's ~0.1)
        h = F.gelu(self.proj(x) + self.pos[:length])  # (B, L, d)
        h = h + F.gelu(self.mix(h))
        scores = h @ self.query / math.sqrt(h.shape[-1])  # (B, L)
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask == 0, NEG)
        weights = torch.softmax(scores, dim=-1)
        return self.head((weights.unsqueeze(-1) * h).sum(1))  # (B, C)


class BackboneClassifier(nn.Module):
    """A pretrained encoder over ``inputs_embeds`` (its own positions and LayerNorm apply) and a fresh
    linear head on the mean of its last hidden states."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)
        nn.init.normal_(self.head.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.head.bias)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        states = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        m = attention_mask.unsqueeze(-1).to(states.dtype)
        return self.head((states * m).sum(1) / m.sum(1).clamp(min=1.0))


@dataclass
class TokenEmbedder:
    """Texts -> frozen token-table rows: the input space of the students and of the synthetic set."""

    tokenizer: Any
    table: torch.Tensor  # (V, H), frozen
    max_length: int = 32

    @property
    def hidden(self) -> int:
        return self.table.shape[1]

    def ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) token ids and attention mask, padded to ``max_length``."""
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]  # (N, L, H)

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.ids(texts)
        return self.embed_ids(ids), mask


def load_embedder(spec: str, max_length: int = 32) -> tuple[TokenEmbedder, Any]:
    """The token embedder of a sentence encoder spec (minilm, st:<folder>, a folder) and the encoder
    itself at the students' token length (a SentenceTransformer: its transformer is the backbone, its
    sentence embeddings the coresets' feature space)."""
    from training.embedding.encoders import load_encoder
    from training.embedding.errors import EmbeddingSetupError

    try:
        encoder = load_encoder(spec, device="cpu", max_seq_length=max_length)
    except EmbeddingSetupError as e:
        raise TrajectorySetupError(str(e)) from None
    table = encoder[0].auto_model.get_input_embeddings().weight.detach().clone()
    return TokenEmbedder(encoder.tokenizer, table, max_length), encoder


def build_student(kind: str, embedder: TokenEmbedder, classes: int, backbone: Any = None, width: int = 64, seed: int = 0) -> nn.Module:
    """A fresh student: ``head`` (PooledHeadClassifier) or ``backbone`` (a copy of ``backbone`` + head),
    its random parts drawn from ``seed``, in eval mode (no dropout: the unroll must be deterministic)."""
    import copy

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "head":
            model: nn.Module = PooledHeadClassifier(embedder.hidden, classes, width, embedder.max_length)
        elif kind == "backbone":
            if backbone is None:
                raise TrajectorySetupError("a backbone student needs the encoder's transformer")
            encoder = copy.deepcopy(backbone)
            encoder.set_attn_implementation("eager")
            model = BackboneClassifier(encoder, classes)
        else:
            raise TrajectorySetupError(f"student kind must be head or backbone, got {kind!r}")
    return model.eval()


def trainable_names(model: nn.Module, spec: str = "all") -> list[str]:
    """Names of the parameters the experts train and the synthetic set is matched on (``all``,
    ``head``, ``top:K`` encoder layers plus the head, ``deep:F`` the deepest fraction F of the
    parameters, counted from the head down)."""
    names = [n for n, _ in model.named_parameters()]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    if spec == "all":
        return names
    if spec == "head":
        return [n for n in names if n.startswith("head.")]
    kind, _, value = spec.partition(":")
    try:
        number = float(value)
    except ValueError:
        raise TrajectorySetupError(f"--train takes all, head, top:K or deep:F, got {spec!r}") from None
    if kind == "top" and number >= 1 and number == int(number):
        layers = sorted({int(m.group(1)) for n in names if (m := LAYER.search(n))})
        if not layers:
            raise TrajectorySetupError(f"--train {spec}: this student has no numbered encoder layers")
        keep = set(layers[-int(number):])
        return [n for n in names if n.startswith("head.") or ((m := LAYER.search(n)) and int(m.group(1)) in keep)]
    if kind == "deep" and 0 < number <= 1:
        budget, chosen = number * sum(sizes.values()), []
        for n in reversed(names):  # named_parameters runs input -> output
            if budget <= 0:
                break
            chosen.append(n)
            budget -= sizes[n]
        return [n for n in names if n in set(chosen)]
    raise TrajectorySetupError(f"--train takes all, head, top:K (K >= 1) or deep:F (0 < F <= 1), got {spec!r}")


def freeze_except(model: nn.Module, names: list[str]) -> None:
    wanted = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in wanted)
