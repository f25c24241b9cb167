"""KV-cache distillation losses as pure tensor functions (no trainer state).

A teacher's keys and values, aligned to the student's tokens and projected into its heads
(``training.kv``), are targets ``(B, L, H, d)`` beside the student's own keys and values. Per token:

    lambda_k * MSE(K) + lambda_v * MSE(V) + beta * (1 - cos) + gamma * KL(attention)

MSE is normalised by the target's mean square over the batch's valid tokens (so layers and teachers
with large activations do not dominate and shrinking the target cannot shrink the loss); ``1 - cos``
is averaged over heads of K and V; the attention term is KL(teacher || student) between the teacher's
attention distribution mapped through the token alignment and the student's, both averaged over heads
(head counts differ between models). ``fuse_teacher_losses`` combines several teachers' per-token
losses with routing weights: with one teacher at weight 1 it is exactly that teacher's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def normalized_mse_per_token(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_{h,d} (s - t)^2 / mean_{valid tokens, h, d} t^2`` per token ``(B, L)``; inputs ``(B, L, H, d)``."""
    sq = (student - target).pow(2).flatten(2).mean(-1)  # (B, L)
    scale = _masked_mean(target.pow(2).flatten(2).mean(-1), mask)
    # No valid token, or a target of zeros: nothing to normalise by; 1 keeps the (masked-out) values finite.
    return sq / torch.where(scale > 0, scale, torch.ones_like(scale))


def cosine_distance_per_token(student: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos(s_h, t_h)`` averaged over heads, per token ``(B, L)``; inputs ``(B, L, H, d)``."""
    cos = torch.nn.functional.cosine_similarity(student, target, dim=-1, eps=eps)  # (B, L, H)
    return 1.0 - cos.mean(-1)


def map_attention(teacher_probs: torch.Tensor, overlap: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """The teacher's attention ``(B, L_t, L_t)`` seen from the student's tokens: ``(B, L_s, L_s)``.

    Query side: student token i takes the rows of the teacher tokens it overlaps (A = overlap with rows
    normalised). Key side: the mass on teacher token b is shared among the student tokens that overlap
    it (overlap transposed, rows normalised). With ``causal`` the mass on later student tokens (a teacher
    token that spans two student tokens, or a bidirectional encoder) is dropped and each row renormalised;
    a row left without mass is zero and should be masked out.
    """
    total_rows = overlap.sum(-1, keepdim=True)
    a = torch.where(total_rows > 0, overlap / total_rows.clamp(min=1e-12), torch.zeros_like(overlap))  # (B, Ls, Lt)
    back = overlap.transpose(-1, -2)  # (B, Lt, Ls)
    total_back = back.sum(-1, keepdim=True)
    c = torch.where(total_back > 0, back / total_back.clamp(min=1e-12), torch.zeros_like(back))
    mapped = a @ teacher_probs.to(a.dtype) @ c  # (B, Ls, Ls)
    if causal:
        n = mapped.shape[-1]
        mapped = mapped * torch.ones(n, n, dtype=torch.bool, device=mapped.device).tril()
    total = mapped.sum(-1, keepdim=True)
    return torch.where(total > 0, mapped / total.clamp(min=1e-12), torch.zeros_like(mapped))


def attention_kl_per_token(target: torch.Tensor, student: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``KL(target || student)`` row by row ``(B, L)`` for attention distributions ``(B, L, L)``.

    Entries where the target is 0 contribute nothing; the student's probabilities are clamped at
    ``eps`` before the log so a masked-out position does not give inf.
    """
    target = target.to(student.dtype)
    log_ratio = torch.log(target.clamp(min=eps)) - torch.log(student.clamp(min=eps))
    return torch.where(target > 0, target * log_ratio, torch.zeros_like(target)).sum(-1)


@dataclass
class KVLossWeights:
    """The weights of the four terms; a term at 0 is not computed."""

    lambda_k: float = 1.0
    lambda_v: float = 1.0
    beta: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lambda_k", "lambda_v", "beta", "gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def off(self) -> bool:
        return self.lambda_k == self.lambda_v == self.beta == self.gamma == 0


def kv_token_loss(
    student_k: torch.Tensor,
    student_v: torch.Tensor,
    target_k: torch.Tensor,
    target_v: torch.Tensor,
    mask: torch.Tensor,
    weights: KVLossWeights,
    attention_target: torch.Tensor | None = None,
    attention_student: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One teacher, one layer pair: the weighted per-token loss ``(B, L)`` and each term's masked mean.

    K/V ``(B, L, H, d)`` (student and target in the student's head shape); ``mask`` ``(B, L)`` marks the
    tokens that count; attention ``(B, L, L)`` head-averaged, needed when ``weights.gamma > 0``.
    """
    total = torch.zeros(mask.shape, dtype=student_k.dtype, device=student_k.device)
    parts: dict[str, torch.Tensor] = {}
    if weights.lambda_k:
        term = normalized_mse_per_token(student_k, target_k, mask)
        parts["mse_k"] = _masked_mean(term, mask).detach()
        total = total + weights.lambda_k * term
    if weights.lambda_v:
        term = normalized_mse_per_token(student_v, target_v, mask)
        parts["mse_v"] = _masked_mean(term, mask).detach()
        total = total + weights.lambda_v * term
    if weights.beta:
        term = 0.5 * (cosine_distance_per_token(student_k, target_k) + cosine_distance_per_token(student_v, target_v))
        parts["cos"] = _masked_mean(term, mask).detach()
        total = total + weights.beta * term
    if weights.gamma:
        if attention_target is None or attention_student is None:
            raise ValueError("gamma > 0 needs the teacher's mapped attention and the student's attention")
        term = attention_kl_per_token(attention_target, attention_student)
        parts["attn_kl"] = _masked_mean(term, mask).detach()
        total = total + weights.gamma * term
    return total, parts


def fuse_teacher_losses(losses: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i * loss_i`` averaged over the valid tokens.

    ``losses`` ``(T, B, L)`` per teacher and token, ``weights`` ``(B, L, T)`` (per token) or ``(B, T)``
    (per sequence, broadcast over tokens), ``mask`` ``(B, L)``. Gradients reach the weights too, so a
    learned router is trained by the same loss.
    """
    if weights.dim() == 2:
        weights = weights[:, None, :].expand(-1, losses.shape[-1], -1)
    weights = weights.to(losses.dtype)
    per_teacher = losses.permute(1, 2, 0)  # (B, L, T)
    # A teacher at weight 0 contributes nothing, even where its loss is not finite (a token it does not cover).
    fused = torch.where(weights > 0, per_teacher * weights, torch.zeros_like(per_teacher)).sum(-1)  # (B, L)
    return _masked_mean(fused, mask)
