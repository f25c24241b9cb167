"""Knowledge-distillation losses: the divergences, their dense and sparse top-k forms, CE and the mix.

Conventions (shared with TRL's ``generalized_jsd_loss`` so results compare with GKD):
- forward KL is KL(teacher || student) = sum_v p_t (log p_t - log p_s): mass-covering, the classic KD;
- reverse KL is KL(student || teacher): mode-seeking;
- generalized JSD(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m) with m = beta p_t + (1 - beta) p_s,
  and, as in TRL, beta = 0 is forward KL and beta = 1 reverse KL (the mixture form vanishes there);
- skew forward KL(lambda) = KL(p_t || lambda p_t + (1 - lambda) p_s) and skew reverse KL(lambda) =
  KL(p_s || lambda p_s + (1 - lambda) p_t) (DistiLLM, Ko et al. 2024): mixing a little of the first
  argument into the second bounds the divergence and its gradient when the student puts ~0 mass where the
  teacher does not; lambda = 0 is plain forward / reverse KL.
Every loss is ``T^2 * divergence`` of the temperature-T distributions, computed in float32, over the
tokens whose label is not ``ignore_index``, and divided by ``num_items_in_batch`` when given.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from training.losses.base import (
    Divergence,
    dense_distillation_loss,
    reduce_tokens,
    select_tokens,
    topk_distillation_loss,
)

KD_LOSS_TYPES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension from finite log-probs (zero mass is the most negative float)."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(dim=-1)


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per token."""
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) per token."""
    return _kl(student_logp, teacher_logp)


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence per token (GKD, Agarwal et al. 2024, eq. 1)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    # log m = logsumexp(log(1 - beta) + log p_s, log beta + log p_t)
    mixture = torch.logaddexp(student_logp + math.log1p(-beta), teacher_logp + math.log(beta))
    return beta * _kl(teacher_logp, mixture) + (1.0 - beta) * _kl(student_logp, mixture)


def _check_skew(skew: float) -> None:
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew must be in [0, 1), got {skew}")


def skew_forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, skew: float = 0.1) -> torch.Tensor:
    """KL(p_t || skew p_t + (1 - skew) p_s) per token."""
    _check_skew(skew)
    if skew == 0.0:
        return forward_kl(student_logp, teacher_logp)
    mixture = torch.logaddexp(teacher_logp + math.log(skew), student_logp + math.log1p(-skew))
    return _kl(teacher_logp, mixture)


def skew_reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, skew: float = 0.1) -> torch.Tensor:
    """KL(p_s || skew p_s + (1 - skew) p_t) per token: skew forward KL with the roles swapped."""
    return skew_forward_kl(teacher_logp, student_logp, skew)


def get_divergence(loss_type: str, beta: float = 0.5, skew: float = 0.1) -> Divergence:
    """The per-token divergence named ``loss_type`` (one of ``KD_LOSS_TYPES``)."""
    if loss_type == "forward_kl":
        return forward_kl
    if loss_type == "reverse_kl":
        return reverse_kl
    if loss_type == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        return partial(generalized_jsd, beta=beta)
    if loss_type in ("skew_forward_kl", "skew_reverse_kl"):
        _check_skew(skew)
        return partial(skew_forward_kl if loss_type == "skew_forward_kl" else skew_reverse_kl, skew=skew)
    raise ValueError(f"unknown KD loss type {loss_type!r}; choose one of {', '.join(KD_LOSS_TYPES)}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    loss_type: str = "forward_kl",
    beta: float = 0.5,
    skew: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense KD loss from student and teacher logits ``(..., V)`` aligned with ``labels`` ``(...)``."""
    return dense_distillation_loss(
        get_divergence(loss_type, beta, skew),
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
    )


def topk_kd_loss(
    student_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    loss_type: str = "forward_kl",
    beta: float = 0.5,
    skew: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse KD loss: teacher as top-k ids ``(..., k)`` and T = 1 log-probs ``(..., k)``, plus a tail bucket.

    See ``training.losses.base.topk_bucket_log_probs`` for the exact formula.
    """
    return topk_distillation_loss(
        get_divergence(loss_type, beta, skew),
        student_logits,
        teacher_topk_ids,
        teacher_topk_logprobs,
        labels,
        temperature=temperature,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
    )


def forward_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(teacher_T || student_T)``, the classic KD loss (Hinton et al. 2015)."""
    return kd_loss(
        student_logits,
        teacher_logits,
        labels,
        loss_type="forward_kl",
        temperature=temperature,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
    )


def cross_entropy_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy in float32 with the same masking and reduction as the KD losses."""
    (logits,) = select_tokens(labels, ignore_index, student_logits)
    targets = labels[labels != ignore_index]
    per_token = F.cross_entropy(logits.float(), targets.long(), reduction="none")
    return reduce_tokens(per_token, num_items_in_batch)


def combine_losses(kd: torch.Tensor, ce: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * kd + (1 - alpha) * ce``: alpha = 1 is pure distillation, alpha = 0 plain SFT."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * kd + (1.0 - alpha) * ce
