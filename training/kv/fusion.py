"""How much each teacher counts, per token or per sequence: fixed weights, similarity routing, a learned
router, and the router-free baselines every table needs (FuseLLM's MinCE / AvgCE, hard domain routing).

Every router returns weights ``(B, L, T)`` (per token) or ``(B, T)`` (per sequence) that sum to 1 over
the T teachers; ``training.losses.kv.fuse_teacher_losses`` combines the teachers' per-token losses
with them. A learned router is trained by that fused loss plus ``entropy_penalty``, the term against
collapse ("diverse": high entropy of the batch's mean weights, so every teacher is used) or towards
crisp choices ("specialized": low entropy per token or sequence).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# What KDTrainer's kv_fusion offers ("domain": hard routing by each item's tag, kv_teacher_domains).
KV_FUSIONS = ("fixed", "similarity", "learnable", "mince", "avgce", "domain")
ROUTERS = ("mlp", "gate", "attention")
SIMILARITIES = ("cosine", "dot", "l2")
PROTOTYPES = ("mean", "first", "kmeans")
ENTROPY_MODES = ("none", "diverse", "specialized")


def fixed_weights(weights: Sequence[float], batch: int, device=None) -> torch.Tensor:
    """``(B, T)`` copies of the given weights, normalised to sum to 1."""
    w = torch.tensor([float(x) for x in weights], device=device)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fixed teacher weights must be >= 0 and not all 0, got {list(weights)}")
    return (w / w.sum()).expand(batch, -1)


def mince_weights(teacher_ce: torch.Tensor) -> torch.Tensor:
    """FuseLLM MinCE: per sequence, all weight on the teacher with the lowest CE ``(B, T)`` (first on a tie)."""
    return F.one_hot(teacher_ce.argmin(-1), teacher_ce.shape[-1]).to(teacher_ce.dtype)


def avgce_weights(teacher_ce: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """FuseLLM AvgCE: per sequence, ``softmax(-CE / temperature)`` over teachers ``(B, T)``."""
    return torch.softmax(-teacher_ce / temperature, dim=-1)


def domain_weights(tags: Sequence[str | None], teacher_domains: Sequence[Sequence[str]], device=None) -> torch.Tensor:
    """Hard routing by a per-item domain tag: all weight on the teacher whose domains list the tag ``(B, T)``.

    An item whose tag no teacher claims (or that has none) is spread evenly over all teachers.
    """
    n = len(teacher_domains)
    rows = []
    for tag in tags:
        owners = [i for i, domains in enumerate(teacher_domains) if tag is not None and tag in domains]
        row = torch.zeros(n)
        row[owners[:1] if owners else list(range(n))] = 1.0
        rows.append(row / row.sum())
    return torch.stack(rows).to(device)


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis; 0 * log 0 = 0."""
    return -(weights * torch.log(weights.clamp(min=1e-12))).sum(-1)


def entropy_penalty(weights: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """The router regulariser, to be added with a strength.

    ``diverse``: ``log T - H(mean weights)`` (0 when the batch uses every teacher equally, ``log T``
    when it collapses onto one). ``specialized``: the mean per-token (or per-sequence) entropy ``H(w)``
    (0 for one-hot choices). ``none``: 0. ``weights`` ``(B, L, T)`` or ``(B, T)``; ``mask`` ``(B, L)``.
    """
    if mode not in ENTROPY_MODES:
        raise ValueError(f"entropy mode must be one of {ENTROPY_MODES}, got {mode!r}")
    if mode == "none":
        return weights.new_zeros(())
    flat = weights.reshape(-1, weights.shape[-1])
    if weights.dim() == 3 and mask is not None:
        keep = mask.reshape(-1).to(weights.dtype)
    else:
        keep = weights.new_ones(flat.shape[0])
    keep_sum = keep.sum().clamp(min=1.0)
    if mode == "diverse":
        mean = (flat * keep[:, None]).sum(0) / keep_sum
        return math.log(weights.shape[-1]) - entropy(mean)
    return (entropy(flat) * keep).sum() / keep_sum


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)


def similarity(query: torch.Tensor, prototypes: torch.Tensor, metric: str) -> torch.Tensor:
    """``sim(q, p_i)`` for queries ``(..., D)`` and prototypes ``(T, D)``: ``(..., T)``."""
    if metric == "cosine":
        return F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T
    if metric == "dot":
        return query @ prototypes.T
    if metric == "l2":
        return -torch.cdist(query.reshape(-1, query.shape[-1]), prototypes).reshape(*query.shape[:-1], -1)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {metric!r}")


def kmeans(points: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """``k`` centroids ``(k, D)`` of ``points`` ``(N, D)`` by Lloyd's algorithm from evenly spaced seeds (deterministic)."""
    k = max(1, min(k, points.shape[0]))
    centroids = points[torch.linspace(0, points.shape[0] - 1, k).long()].clone()
    for _ in range(iters):
        assign = torch.cdist(points, centroids).argmin(-1)
        for c in range(k):
            members = points[assign == c]
            if len(members):
                centroids[c] = members.mean(0)
    return centroids


def teacher_prototypes(states: torch.Tensor, mask: torch.Tensor, how: str, clusters: int = 4) -> torch.Tensor:
    """One teacher's prototype(s) in the student's space from its aligned states ``(B, L, D)``.

    ``mean``: mean over the valid tokens ``(1, D)``; ``first``: mean of each sequence's first valid token
    ``(1, D)``; ``kmeans``: ``clusters`` centroids of the valid tokens ``(clusters, D)`` (similarity is then
    the best centroid's).
    """
    valid = mask.bool()
    if how == "mean":
        return states[valid].mean(0, keepdim=True)
    if how == "first":
        rows = valid.any(1)  # sequences with at least one valid token
        first = valid.to(torch.long).argmax(1)
        return states[torch.arange(states.shape[0], device=states.device)[rows], first[rows]].mean(0, keepdim=True)
    if how == "kmeans":
        return kmeans(states[valid].detach(), clusters)
    raise ValueError(f"prototype must be one of {PROTOTYPES}, got {how!r}")


def similarity_weights(
    query: torch.Tensor,
    prototypes: Sequence[torch.Tensor],
    *,
    metric: str = "cosine",
    tau: float = 0.1,
) -> torch.Tensor:
    """``w_i = softmax_i(sim(q, p_i) / tau)``: queries ``(..., D)``, one ``(k_i, D)`` prototype set per teacher.

    A teacher with several prototypes (k-means) scores its most similar one.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    scores = torch.stack([similarity(query, p, metric).amax(-1) for p in prototypes], dim=-1)  # (..., T)
    return torch.softmax(scores / tau, dim=-1)


class LearnedRouter(nn.Module):
    """Teacher weights from the student's hidden states ``(B, L, H)``.

    ``mlp``: Linear-GELU-Linear; ``gate``: one linear layer; ``attention``: learned teacher keys scored
    against a projection of the states (per token), or a learned query that attention-pools the
    sequence first (per sequence). ``granularity`` ``token`` gives ``(B, L, T)``, ``sequence`` ``(B, T)``.
    The last layer starts at zero, so training starts from uniform weights.
    """

    def __init__(self, hidden_size: int, num_teachers: int, kind: str = "mlp", granularity: str = "token", width: int = 64) -> None:
        super().__init__()
        if kind not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {kind!r}")
        if granularity not in ("token", "sequence"):
            raise ValueError(f"router granularity must be token or sequence, got {granularity!r}")
        if num_teachers < 1:
            raise ValueError("a router needs at least one teacher")
        self.kind, self.granularity, self.num_teachers = kind, granularity, num_teachers
        self.norm = nn.LayerNorm(hidden_size)
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, num_teachers))
            last = self.net[-1]
        elif kind == "gate":
            self.net = nn.Linear(hidden_size, num_teachers)
            last = self.net
        else:
            self.proj = nn.Linear(hidden_size, width)
            self.teacher_keys = nn.Parameter(torch.zeros(num_teachers, width))
            self.pool_query = nn.Parameter(torch.zeros(width))
            last = None
        if last is not None:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def logits(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(hidden)
        if self.kind != "attention":
            if self.granularity == "sequence":
                h = _pool(h, mask)
            return self.net(h)
        keys = self.proj(h)  # (B, L, W)
        scale = keys.shape[-1] ** -0.5
        if self.granularity == "sequence":
            scores = (keys @ self.pool_query) * scale  # (B, L)
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
            keys = (torch.softmax(scores, -1)[..., None] * keys).sum(1)  # (B, W)
        return keys @ self.teacher_keys.T * scale

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(hidden, mask).float(), dim=-1)
