"""LM head + CE + KD over chunks of tokens, never holding a ``tokens x vocab`` float32 logits tensor.

The student's ``(N, V)`` logits dominate the memory of a distillation step (V = 49,152 for SmolLM2,
151,936 for Qwen): a plain implementation keeps student logits, their float32 copy, log-softmax and
softmax of both sides for the backward pass. Here the loss is a sum over tokens, so its gradient can be
computed chunk by chunk *during the forward pass* (as Liger-Kernel's fused linear cross-entropy does):
for each chunk of ``chunk_size`` tokens the logits are formed in float32, the per-token CE and divergence
are evaluated by the same pure functions as the unfused losses (``training.losses.base`` / ``kd``), and
autograd on that chunk alone gives d loss / d logits, which is folded into the gradients of the hidden
states and the head weight at once. Only those gradients (``N x H`` and ``V x H``) are kept; backward
multiplies them by the incoming scalar. Peak extra memory is a few ``chunk_size x V`` float32 buffers.

Precision: hidden states and head weights are upcast to float32 before the matmul, so bf16 models never
round logits to bf16 (a known way fused losses lost 4-23% of the gradient). The teacher side is chunked
the same way: an online teacher is given as its final hidden states and head, and its logits exist one
chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from training.losses.base import (
    Divergence,
    check_temperature,
    tempered_log_probs,
    topk_bucket_log_probs,
)


@dataclass(frozen=True)
class LinearHead:
    """An LM head as tensors: ``logits = softcap(scale * (hidden @ weight.T + bias))``.

    ``scale`` (Cohere-style ``logit_scale``) and ``softcap`` (Gemma-style ``final_logit_softcapping``)
    are None for most models.
    """

    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None = None  # (V,)
    scale: float | None = None
    softcap: float | None = None

    @classmethod
    def of(cls, model: torch.nn.Module) -> "LinearHead":
        """The output layer of a transformers causal LM (logit scale and soft-capping from its config)."""
        head = model.get_output_embeddings()
        if hasattr(head, "base_layer"):
            raise ValueError(
                "the LM head carries a LoRA adapter, which the fused KD loss does not apply; leave lm_head out of "
                "lora_target_modules (the default all-linear does)"
            )
        if not isinstance(head, torch.nn.Linear):
            raise ValueError(f"the LM head is a {type(head).__name__}, expected nn.Linear")
        config = model.config.get_text_config()
        return cls(
            head.weight,
            head.bias,
            scale=getattr(config, "logit_scale", None),
            softcap=getattr(config, "final_logit_softcapping", None),
        )

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """Scale and soft-cap raw float32 logits (differentiable)."""
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def logits(self, hidden: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """Float32 logits of ``hidden`` ``(N, H)``; with ``vocab_size`` cut or padded (-inf) to that width."""
        weight, bias = self.weight, self.bias
        if vocab_size is not None and weight.shape[0] > vocab_size:  # padded rows beyond the student's vocabulary
            weight = weight[:vocab_size]
            bias = None if bias is None else bias[:vocab_size]
        with torch.autocast(hidden.device.type, enabled=False):
            z = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
            z = self.transform(z)
        if vocab_size is not None and z.shape[-1] < vocab_size:
            z = F.pad(z, (0, vocab_size - z.shape[-1]), value=float("-inf"))
        return z


@dataclass(frozen=True)
class TopKTeacher:
    """Sparse teacher: top-k ids ``(N, k)`` and their log-probs at T = 1 ``(N, k)`` (-inf = dropped slot)."""

    ids: torch.Tensor
    logprobs: torch.Tensor


@dataclass(frozen=True)
class DenseTeacher:
    """Online teacher: its final hidden states ``(N, H_t)`` at the loss positions and its head.

    ``top_k > 0`` truncates each row to its top k plus a tail bucket, exactly as stored logits are, so an
    online run trains on the same signal as an offline one; 0 uses the full distribution.
    """

    hidden: torch.Tensor
    head: LinearHead
    top_k: int = 0


class FusedLossOutput(NamedTuple):
    """``loss`` is differentiable; the rest are detached sums for logging (divide by the token count)."""

    loss: torch.Tensor
    ce_sum: torch.Tensor
    kd_sum: torch.Tensor | None
    num_correct: torch.Tensor


def _chunk_teacher(teacher: TopKTeacher | DenseTeacher, rows: slice, vocab_size: int, temperature: float):
    """The teacher of one chunk as ``("dense", log-probs at T)`` or ``("topk", ids, log-probs)``."""
    if isinstance(teacher, TopKTeacher):
        return "topk", teacher.ids[rows], teacher.logprobs[rows]
    with torch.no_grad():
        logits = teacher.head.logits(teacher.hidden[rows], vocab_size)  # (C, V) float32
        if teacher.top_k > 0:
            logprobs, ids = torch.log_softmax(logits, dim=-1).topk(min(teacher.top_k, vocab_size), dim=-1)
            return "topk", ids, logprobs
        return "dense", tempered_log_probs(logits, temperature)


def _chunk_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_chunk,
    divergence: Divergence | None,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sums over the chunk's tokens of CE and of ``T^2 * divergence`` (None without a teacher)."""
    ce = F.cross_entropy(logits, targets, reduction="sum")
    if teacher_chunk is None or divergence is None:
        return ce, None
    if teacher_chunk[0] == "topk":
        student_b, teacher_b = topk_bucket_log_probs(logits, teacher_chunk[1], teacher_chunk[2], temperature)
        per_token = divergence(student_b, teacher_b)
    else:
        per_token = divergence(tempered_log_probs(logits, temperature), teacher_chunk[1])
    return ce, per_token.sum() * temperature**2


class _FusedLinearDistillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, head, targets, teacher, divergence, alpha, temperature, chunk_size, denominator):
        n, vocab = hidden.shape[0], weight.shape[0]
        need = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need[2] else None
        w32 = weight.float()  # one upcast per call, shared by all chunks (no copy for float32 weights)
        b32 = None if bias is None else bias.float()
        ce_total = hidden.new_zeros((), dtype=torch.float32)
        kd_total = hidden.new_zeros((), dtype=torch.float32) if teacher is not None and divergence is not None else None
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        step = chunk_size if chunk_size > 0 else max(n, 1)
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            h32 = hidden[rows].float()
            teacher_chunk = None if kd_total is None else _chunk_teacher(teacher, rows, vocab, temperature)
            with torch.enable_grad(), torch.autocast(hidden.device.type, enabled=False):
                raw = F.linear(h32, w32, b32).detach().requires_grad_(any(need))  # (C, V) float32
                logits = head.transform(raw)
                ce, kd = _chunk_losses(logits, targets[rows], teacher_chunk, divergence, temperature)
                total = ce if kd is None else (1.0 - alpha) * ce + alpha * kd
            if any(need):
                (grad_raw,) = torch.autograd.grad(total, raw)  # (C, V)
                if need[0]:
                    grad_hidden[rows] = grad_raw @ w32
                if need[1]:
                    grad_weight.addmm_(grad_raw.t(), h32)
                if need[2]:
                    grad_bias += grad_raw.sum(dim=0)
            ce_total += ce.detach()
            if kd is not None:
                kd_total += kd.detach()
            correct += (logits.detach().argmax(dim=-1) == targets[rows]).sum()
            del raw, logits, ce, kd, total
        scale = 1.0 / denominator
        ctx.save_for_backward(
            *(g * scale if g is not None else None for g in (grad_hidden, grad_weight, grad_bias))
        )
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        loss = (ce_total if kd_total is None else (1.0 - alpha) * ce_total + alpha * kd_total) * scale
        kd_out = kd_total if kd_total is not None else torch.full((), float("nan"), device=hidden.device)
        ctx.mark_non_differentiable(ce_total, kd_out, correct)
        return loss, ce_total, kd_out, correct

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grads = []
        for g, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            grads.append(None if g is None else (g * grad_loss).to(dtype))
        return (*grads, None, None, None, None, None, None, None, None)


def fused_linear_distillation(
    hidden: torch.Tensor,
    head: LinearHead,
    targets: torch.Tensor,
    teacher: TopKTeacher | DenseTeacher | None = None,
    *,
    divergence: Divergence | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> FusedLossOutput:
    """``alpha * KD + (1 - alpha) * CE`` of the student head applied to ``hidden`` ``(N, H)``.

    ``hidden`` holds only the positions that carry a loss (already shifted: row i predicts
    ``targets[i]``). KD is ``T^2 * divergence`` between the temperature-T student and teacher; without a
    teacher (or divergence) the loss is CE alone. Sums are divided by ``num_items_in_batch`` when given
    (the accumulated batch's loss-token count, for gradient-accumulation invariance), else by N.
    ``chunk_size`` tokens are processed at a time (0 = all at once, still without keeping logits).
    Gradients flow to ``hidden``, ``head.weight`` and ``head.bias`` (when they require grad).
    """
    check_temperature(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, H) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    n = hidden.shape[0]
    if isinstance(teacher, TopKTeacher) and (teacher.ids.shape != teacher.logprobs.shape or teacher.ids.shape[0] != n):
        raise ValueError(f"teacher ids {tuple(teacher.ids.shape)} and log-probs {tuple(teacher.logprobs.shape)} must be (N={n}, k)")
    if isinstance(teacher, DenseTeacher) and teacher.hidden.shape[0] != n:
        raise ValueError(f"teacher hidden states have {teacher.hidden.shape[0]} rows, expected N={n}")
    if num_items_in_batch is None:
        denominator = float(max(n, 1))
    elif isinstance(num_items_in_batch, torch.Tensor):
        denominator = float(num_items_in_batch.clamp(min=1).item())
    else:
        denominator = float(max(num_items_in_batch, 1))
    loss, ce_sum, kd_sum, correct = _FusedLinearDistillation.apply(
        hidden, head.weight, head.bias, head, targets, teacher, divergence, alpha, temperature, chunk_size, denominator
    )
    has_kd = teacher is not None and divergence is not None
    return FusedLossOutput(loss, ce_sum, kd_sum if has_kd else None, correct)
