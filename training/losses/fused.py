"""LM head + CE + KD over chunks of tokens, never holding a ``tokens x vocab`` float32 logits tensor.

The student's ``(N, V)`` logits dominate the memory of a distillation step (V = 49,152 for SmolLM2,
151,936 for Qwen): a plain implementation keeps student logits, their float32 copy, log-softmax and
softmax of both sides for the backward pass. Here the loss is a sum over tokens, so its gradient can be
computed chunk by chunk *during the forward pass* (as Liger-Kernel's fused linear cross-entropy does):
for each chunk of ``chunk_size`` tokens the logits are formed in float32, the per-token CE and divergence
are evaluated by the same pure functions as the unfused losses (``training.losses.base`` / ``kd``), and
``torch.func.grad_and_value`` on that chunk alone gives d loss / d logits, which is folded into the
gradients of the hidden states and the head weight at once. Only those gradients (``N x H`` and ``V x H``)
are kept; backward multiplies them by the incoming scalar. Peak extra memory is a few ``chunk_size x V``
float32 buffers. With ``compile=True`` the chunk step (softmaxes, divergence, its gradient) runs under
``torch.compile``: a few fused loops over the chunk instead of one pass (and, eagerly, one saved
intermediate) per operation.

Precision: hidden states and head weights are upcast to float32 before the matmul, so bf16 models never
round logits to bf16 (a known way fused losses lost 4-23% of the gradient). The teacher side is chunked
the same way: an online teacher is given as its final hidden states and head, and its logits exist one
chunk at a time.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)


def _transform(logits: torch.Tensor, scale: float | None, softcap: float | None) -> torch.Tensor:
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


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
        return _transform(logits, self.scale, self.softcap)

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


def _chunk_teacher(teacher: TopKTeacher | DenseTeacher, rows: slice, vocab_size: int):
    """The teacher of one chunk: ``("topk", ids, log-probs)`` or ``("logits", logits (C, V) float32, top_k)``.

    Only the teacher's matmul happens here; its softmax (and top-k) is part of the chunk step.
    """
    if isinstance(teacher, TopKTeacher):
        return "topk", teacher.ids[rows], teacher.logprobs[rows]
    with torch.no_grad():
        return "logits", teacher.head.logits(teacher.hidden[rows], vocab_size), teacher.top_k


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
    kind, first, second = teacher_chunk
    if kind == "logits" and second > 0:  # online teacher truncated to its top k, as stored logits are
        t_logprobs, t_ids = torch.log_softmax(first.detach(), dim=-1).topk(min(second, first.shape[-1]), dim=-1)
        kind, first, second = "topk", t_ids, t_logprobs
    if kind == "topk":
        student_b, teacher_b = topk_bucket_log_probs(logits, first, second, temperature)
        per_token = divergence(student_b, teacher_b)
    else:
        per_token = divergence(tempered_log_probs(logits, temperature), tempered_log_probs(first.detach(), temperature))
    return ce, per_token.sum() * temperature**2


def _chunk_values(raw, targets, teacher_chunk, scale, softcap, divergence, alpha, temperature):
    """``(total, (ce, kd, correct))`` of one chunk from its raw student logits ``(C, V)`` float32 (kd is 0
    without a teacher: torch.func's auxiliary outputs must be tensors)."""
    logits = _transform(raw, scale, softcap)
    ce, kd = _chunk_losses(logits, targets, teacher_chunk, divergence, temperature)
    total = ce if kd is None else (1.0 - alpha) * ce + alpha * kd
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    return total, (ce.detach(), torch.zeros_like(ce) if kd is None else kd.detach(), correct)


def _chunk_step(raw, targets, teacher_chunk, scale, softcap, divergence, alpha, temperature, with_grad: bool):
    """``(d total / d raw or None, ce, kd, correct)`` of one chunk.

    The gradient comes from ``torch.func.grad_and_value`` on the same pure loss functions as the unfused
    losses, so the fused path needs no hand-written derivative; under ``torch.compile`` the softmaxes, the
    divergence and its gradient become a few fused loops over the chunk instead of one pass per operation.
    """
    args = (targets, teacher_chunk, scale, softcap, divergence, alpha, temperature)
    if not with_grad:
        _, (ce, kd, correct) = _chunk_values(raw, *args)
        return None, ce, kd, correct
    grad, (_, (ce, kd, correct)) = torch.func.grad_and_value(_chunk_values, has_aux=True)(raw, *args)
    return grad, ce, kd, correct


class ChunkStep:
    """Runs ``_chunk_step`` eagerly or compiled; a compilation that fails falls back to eager, once, with
    a warning naming the reason (no C++ compiler on CPU, no Triton on GPU, ...)."""

    def __init__(self) -> None:
        self._compiled = None
        self.failed: str | None = None

    def __call__(self, compile: bool, raw, targets, teacher_chunk, *args):
        if not compile or self.failed is not None:
            return _chunk_step(raw, targets, teacher_chunk, *args)
        if self._compiled is None:
            self._compiled = torch.compile(_chunk_step)
        for t in (raw, targets, *(x for x in teacher_chunk or () if isinstance(x, torch.Tensor))):
            torch._dynamo.maybe_mark_dynamic(t, 0)  # the last chunk is shorter: one graph for every length
        try:
            return self._compiled(raw, targets, teacher_chunk, *args)
        except Exception as e:  # noqa: BLE001 - any compiler failure leaves the eager path, which is exact
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            logger.warning("torch.compile of the fused KD loss failed (%s); running it eagerly from now on", self.failed)
            return _chunk_step(raw, targets, teacher_chunk, *args)


_CHUNK_STEP = ChunkStep()


class _FusedLinearDistillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, head, targets, teacher, divergence, alpha, temperature, chunk_size, denominator,
                compile):
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
            teacher_chunk = None if kd_total is None else _chunk_teacher(teacher, rows, vocab)
            with torch.autocast(hidden.device.type, enabled=False):
                raw = F.linear(h32, w32, b32)  # (C, V) float32
                grad_raw, ce, kd, n_correct = _CHUNK_STEP(
                    compile, raw, targets[rows], teacher_chunk, head.scale, head.softcap,
                    divergence if kd_total is not None else None, alpha, temperature, any(need),
                )
                del raw, teacher_chunk
                if grad_raw is not None:  # (C, V)
                    if need[0]:
                        grad_hidden[rows] = grad_raw @ w32
                    if need[1]:
                        grad_weight.addmm_(grad_raw.t(), h32)
                    if need[2]:
                        grad_bias += grad_raw.sum(dim=0)
                    del grad_raw
            ce_total += ce
            if kd_total is not None:
                kd_total += kd
            correct += n_correct
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
        return (*grads, None, None, None, None, None, None, None, None, None)


def auto_chunk_size(n_tokens: int, vocab_size: int, device: torch.device | str) -> int:
    """Tokens per chunk such that one ``(chunk, V)`` float32 buffer is at most 32 MiB on CPU, 512 MiB on a GPU.

    On CPU (measured, docs/training.md): a buffer above glibc's largest mmap threshold (32 MiB) goes back
    to the OS when freed and is page-faulted in again for the next chunk, which at 1,024 tokens x 49,152
    cost more than the divergence itself; below it, fewer rows only add passes of the head-gradient
    accumulation (128 and 170 rows ran alike, 64 and 256 slower). On a GPU the caching allocator keeps the
    blocks and larger chunks keep the matmuls efficient (not yet measured there).
    """
    budget = (512 if torch.device(device).type == "cuda" else 32) * 2**20
    rows = max(budget // (4 * max(vocab_size, 1)), 16)
    return int(min(rows, max(n_tokens, 1)))


def compile_pays(vocab_size: int) -> bool:
    """Whether compiling the chunk step is worth its one-off cost (~10 s on a 2-core CPU) for this vocabulary.

    The eager chunk step costs about 40 passes over ``tokens x V`` float32 values; compiled, a few. At
    V = 49,152 that saved ~0.35 ms per token per step on this CPU (1,533 tokens: 4.0 s eager, 3.4-3.5 s
    compiled; docs/training.md), and the saving shrinks with V: below 8,192 a ~10 s compilation takes
    hundreds of steps to pay back.
    """
    return vocab_size >= 8192


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
    chunk_size: int | None = None,
    compile: bool = False,
) -> FusedLossOutput:
    """``alpha * KD + (1 - alpha) * CE`` of the student head applied to ``hidden`` ``(N, H)``.

    ``hidden`` holds only the positions that carry a loss (already shifted: row i predicts
    ``targets[i]``). KD is ``T^2 * divergence`` between the temperature-T student and teacher; without a
    teacher (or divergence) the loss is CE alone. Sums are divided by ``num_items_in_batch`` when given
    (the accumulated batch's loss-token count, for gradient-accumulation invariance), else by N.
    ``chunk_size`` tokens are processed at a time (0 = all at once, still without keeping logits; None =
    ``auto_chunk_size`` of the shapes). ``compile`` runs each chunk's softmaxes, divergence and gradient
    through ``torch.compile`` (fused loops instead of one pass per operation; the same formulas, equal to
    float32 rounding); where compilation fails the eager path runs, with a warning.
    Gradients flow to ``hidden``, ``head.weight`` and ``head.bias`` (when they require grad).
    """
    check_temperature(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if chunk_size is not None and chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 or None (auto), got {chunk_size}")
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
    if chunk_size is None:
        chunk_size = auto_chunk_size(n, head.weight.shape[0], hidden.device)
    loss, ce_sum, kd_sum, correct = _FusedLinearDistillation.apply(
        hidden, head.weight, head.bias, head, targets, teacher, divergence, alpha, temperature, chunk_size, denominator,
        compile,
    )
    has_kd = teacher is not None and divergence is not None
    return FusedLossOutput(loss, ce_sum, kd_sum if has_kd else None, correct)
