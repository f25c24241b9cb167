"""What every distillation loss shares: which tokens count, float32 upcast, temperature, the sparse top-k
form and the reduction.

A divergence (see ``kd.py``) is a function of two log-prob tensors over the same support, ``(N, S) ->
(N,)``: the full vocabulary in the dense form, or ``k + 1`` buckets in the sparse top-k form. Everything
around it lives here, so a new divergence (skew KL, TVD, ...) writes only its formula and gets masking,
gradient-accumulation-exact reduction, temperature and both the dense and the sparse form for free.
"""

from __future__ import annotations

from typing import Callable

import torch

# (student_logp, teacher_logp), both (N, S) float32 log-probs over the same support -> (N,) per token.
Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _finite(log_probs: torch.Tensor) -> torch.Tensor:
    """Replace -inf (zero probability) by the most negative float.

    Divergences are then plain formulas such as ``p * (log p - log q)``: a zero-probability entry gives
    ``0 * finite = 0`` instead of ``0 * inf = nan``, and no NaN leaks into the backward pass (which a
    ``torch.where`` around the formula would not prevent).
    """
    return log_probs.clamp(min=torch.finfo(log_probs.dtype).min)


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def select_tokens(labels: torch.Tensor | None, ignore_index: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The rows of each ``(..., X)`` tensor at positions whose label is not ``ignore_index``, as ``(N, X)``.

    With ``labels=None`` every position counts. Selecting before the upcast means masked positions
    (prompt, padding) never cost a float32 copy of the vocabulary.
    """
    lead = tensors[0].shape[:-1]
    for t in tensors:
        if t.shape[:-1] != lead:
            raise ValueError(f"leading shapes differ: {tuple(t.shape[:-1])} vs {tuple(lead)}")
    if labels is None:
        return [t.reshape(-1, t.shape[-1]) for t in tensors]
    if labels.shape != lead:
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(lead)}")
    mask = labels != ignore_index
    return [t[mask] for t in tensors]


def reduce_tokens(per_token: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum over tokens divided by ``num_items_in_batch`` when given, else by the number of tokens.

    ``num_items_in_batch`` is the count of loss tokens in the whole accumulated batch (Trainer computes it
    over all gradient-accumulation micro-batches), so the micro-batch losses add up to the exact token
    mean: batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same gradient.
    """
    total = per_token.sum()
    if num_items_in_batch is None:
        # An empty selection gives a differentiable 0, not 0 / 0.
        return total / max(per_token.numel(), 1)
    # Clamped like SFTTrainer's: an accumulated batch without loss tokens reduces to 0, not 0 / 0.
    if isinstance(num_items_in_batch, torch.Tensor):
        return total / num_items_in_batch.to(total.device).clamp(min=1)
    return total / max(num_items_in_batch, 1)


def tempered_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(logits / T)`` computed in float32.

    The upcast comes first: bf16 logits are never divided or normalised in bf16 (rounding before the
    float32 cast is a known way to lose a large part of the gradient).
    """
    return _finite(torch.log_softmax(logits.float() / temperature, dim=-1))


def topk_bucket_log_probs(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher as distributions over ``k + 1`` buckets: the teacher's top-k ids and one tail.

    Inputs are ``(N, V)`` student logits, ``(N, k)`` teacher ids and ``(N, k)`` teacher log-probs stored
    at T = 1. A teacher slot whose log-prob is ``-inf`` is dropped (used for ids outside the student's
    vocabulary): it belongs to neither side's kept buckets.

    At T = 1, with K the set of kept ids:

        teacher:  log p_i (stored),            tail  log(1 - sum_{i in K} p_i)   (clamped at >= 0 mass)
        student:  log q_i = z_i - lse(z),      tail  lse(z_j, j not in K) - lse(z)   (exact, no 1 - sum)

    Temperature T then acts on the bucket distributions, the same way for both sides:
    ``b_T = log_softmax(b / T)``, i.e. each kept log-prob is scaled by 1/T and the k + 1 buckets are
    renormalised, the tail treated as one more token. With k = V (every id kept) there is no tail and
    this equals ``log_softmax(z / T)`` exactly, so the sparse loss equals the dense one. When the stored
    probabilities sum to >= 1 (fp16 rounding), the teacher tail gets the smallest normal float32 mass
    rather than zero, so reverse KL stays finite.
    """
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(f"teacher ids {tuple(teacher_ids.shape)} and log-probs {tuple(teacher_logprobs.shape)} differ in shape")
    neg_inf = float("-inf")
    logits = student_logits.float()  # (N, V)
    ids = teacher_ids.long()  # (N, k)
    t_kept = teacher_logprobs.float()  # (N, k)
    valid = t_kept > neg_inf

    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (N, 1)
    s_kept = (logits.gather(-1, ids) - lse).masked_fill(~valid, neg_inf)  # (N, k)
    # Which vocabulary entries are kept; scatter_add so a dropped slot never un-keeps a duplicate id.
    kept = torch.zeros_like(logits).scatter_add_(-1, ids, valid.float()) > 0  # (N, V)
    empty_tail = kept.all(dim=-1, keepdim=True)  # (N, 1)
    # finfo.min, not -inf: a row with every id kept must not give logsumexp(-inf...) and a NaN gradient.
    rest = logits.masked_fill(kept, torch.finfo(logits.dtype).min)
    s_tail = (torch.logsumexp(rest, dim=-1, keepdim=True) - lse).masked_fill(empty_tail, neg_inf)  # (N, 1)

    t_mass = torch.logsumexp(t_kept, dim=-1, keepdim=True).exp()  # (N, 1)
    tiny = torch.finfo(torch.float32).tiny
    t_tail = torch.log((1.0 - t_mass).clamp(min=tiny)).masked_fill(empty_tail, neg_inf)  # (N, 1)

    student = torch.cat([s_kept, s_tail], dim=-1)  # (N, k + 1)
    teacher = torch.cat([t_kept, t_tail], dim=-1)  # (N, k + 1)
    student = _finite(torch.log_softmax(student / temperature, dim=-1))
    teacher = _finite(torch.log_softmax(teacher / temperature, dim=-1))
    return student, teacher


def dense_distillation_loss(
    divergence: Divergence,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * divergence(student_T, teacher_T)`` over the full vocabulary, averaged over loss tokens.

    Logits are ``(..., V)`` and aligned with ``labels`` ``(...)`` (shift them before calling); positions
    labelled ``ignore_index`` are skipped. T^2 keeps the gradient scale independent of T (Hinton et al.).
    """
    check_temperature(temperature)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student vocabulary {student_logits.shape[-1]} != teacher vocabulary {teacher_logits.shape[-1]}: "
            "align them first (drop padded rows or pad with -inf)"
        )
    student, teacher = select_tokens(labels, ignore_index, student_logits, teacher_logits)
    per_token = divergence(tempered_log_probs(student, temperature), tempered_log_probs(teacher, temperature))
    return reduce_tokens(per_token * temperature**2, num_items_in_batch)


def topk_distillation_loss(
    divergence: Divergence,
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """The sparse form of ``dense_distillation_loss``: the teacher given as top-k ids and log-probs.

    Shapes: student logits ``(..., V)``, teacher ids and log-probs ``(..., k)``, labels ``(...)``. See
    ``topk_bucket_log_probs`` for the tail bucket and how temperature applies.
    """
    check_temperature(temperature)
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(f"teacher ids {tuple(teacher_ids.shape)} and log-probs {tuple(teacher_logprobs.shape)} differ in shape")
    student, ids, logprobs = select_tokens(labels, ignore_index, student_logits, teacher_ids, teacher_logprobs)
    s_buckets, t_buckets = topk_bucket_log_probs(student, ids, logprobs, temperature)
    per_token = divergence(s_buckets, t_buckets)
    return reduce_tokens(per_token * temperature**2, num_items_in_batch)

