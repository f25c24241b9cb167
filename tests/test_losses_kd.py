"""The KD losses against naive float64 references: values, gradients, masking, temperature, sparse top-k."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    combine_losses,
    cross_entropy_loss,
    forward_kl_loss,
    generalized_jsd,
    kd_loss,
    reverse_kl,
    forward_kl,
    skew_forward_kl,
    skew_reverse_kl,
    topk_kd_loss,
)

# ------------------------------------------------------------------------------ float64 references


def _ref_divergence(loss_type: str, p_s: torch.Tensor, p_t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Divergence between rows of probabilities (N, S), written out term by term; 0 log 0 = 0."""

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)

    if loss_type == "skew_forward_kl":  # beta is the skew here
        return kl(p_t, beta * p_t + (1 - beta) * p_s)
    if loss_type == "skew_reverse_kl":
        return kl(p_s, beta * p_s + (1 - beta) * p_t)
    if loss_type == "forward_kl" or (loss_type == "jsd" and beta == 0):
        return kl(p_t, p_s)
    if loss_type == "reverse_kl" or (loss_type == "jsd" and beta == 1):
        return kl(p_s, p_t)
    m = beta * p_t + (1 - beta) * p_s
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def _ref_dense(student, teacher, labels, *, loss_type="forward_kl", beta=0.5, T=1.0, ignore_index=-100, n_items=None):
    keep = labels.reshape(-1) != ignore_index
    s = student.double().reshape(-1, student.shape[-1])[keep]
    t = teacher.double().reshape(-1, teacher.shape[-1])[keep]
    p_s, p_t = torch.softmax(s / T, dim=-1), torch.softmax(t / T, dim=-1)
    total = (T**2 * _ref_divergence(loss_type, p_s, p_t, beta)).sum()
    return total / (n_items if n_items is not None else max(int(keep.sum()), 1))


def _ref_topk(student, ids, logprobs, labels, *, loss_type="forward_kl", beta=0.5, T=1.0, ignore_index=-100, n_items=None):
    """Buckets = kept ids + one tail (1 - kept mass), at T = 1; then each bucket prob ** (1/T), renormalised."""
    keep = labels.reshape(-1) != ignore_index
    s = student.double().reshape(-1, student.shape[-1])[keep]
    ids = ids.reshape(-1, ids.shape[-1])[keep]
    p_kept = logprobs.double().reshape(-1, logprobs.shape[-1])[keep].exp()  # dropped slots (-inf) -> 0
    q_kept = torch.softmax(s, dim=-1).gather(-1, ids) * (p_kept > 0)
    b_s = torch.cat([q_kept, 1 - q_kept.sum(-1, keepdim=True)], dim=-1)
    b_t = torch.cat([p_kept, (1 - p_kept.sum(-1, keepdim=True)).clamp(min=torch.finfo(torch.float32).tiny)], dim=-1)
    b_s, b_t = b_s ** (1 / T), b_t ** (1 / T)
    per_token = T**2 * _ref_divergence(loss_type, b_s / b_s.sum(-1, keepdim=True), b_t / b_t.sum(-1, keepdim=True), beta)
    return per_token.sum() / (n_items if n_items is not None else max(int(keep.sum()), 1))


def _labels(shape, vocab, ignore_index, seed=0, frac=0.3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, shape, generator=g)
    labels[torch.rand(shape, generator=g) < frac] = ignore_index
    return labels


def _logits(shape, seed, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def _grad_of(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


CASES = [((3, 47, 123), -100), ((3, 47, 123), 2), ((2, 5, 17), -100), ((1, 1, 8), 5)]
# (loss type, its parameter: beta for jsd, the skew for skew KL; passed to the losses as both)
LOSS_TYPES = [
    ("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9),
    ("skew_forward_kl", 0.1), ("skew_reverse_kl", 0.3),
]

# --------------------------------------------------------------------------------------- dense


@pytest.mark.parametrize(
    "shape,ignore_index,loss_type,beta,T",
    [(*case, *lt, 2.0) for case in CASES for lt in LOSS_TYPES] + [(*CASES[0], "forward_kl", 0.5, T) for T in (1.0, 0.7)],
)
def test_dense_matches_float64_reference(shape, ignore_index, loss_type, beta, T):
    vocab = shape[-1]
    student, teacher = _logits(shape, 1), _logits(shape, 2)
    labels = _labels(shape[:-1], vocab, ignore_index)

    def ours(s):
        return kd_loss(s, teacher, labels, loss_type=loss_type, beta=beta, skew=beta, temperature=T, ignore_index=ignore_index)

    def ref(s):
        return _ref_dense(s, teacher, labels, loss_type=loss_type, beta=beta, T=T, ignore_index=ignore_index)

    value, grad = _grad_of(ours, student)
    ref_value, ref_grad = _grad_of(ref, student.double())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
    masked = labels == ignore_index
    assert torch.all(grad[masked] == 0)


def test_forward_kl_loss_is_kd_loss_forward_kl():
    s, t = _logits((2, 9, 31), 3), _logits((2, 9, 31), 4)
    labels = _labels((2, 9), 31, -100)
    a = forward_kl_loss(s, t, labels, temperature=2.0)
    b = kd_loss(s, t, labels, loss_type="forward_kl", temperature=2.0)
    assert torch.equal(a, b)


def test_jsd_closed_forms():
    s = torch.log_softmax(_logits((6, 40), 5), -1)
    t = torch.log_softmax(_logits((6, 40), 6), -1)
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    torch.testing.assert_close(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))
    # Symmetric at beta = 0.5 and bounded by log 2.
    jsd = generalized_jsd(s, t, beta=0.5)
    torch.testing.assert_close(jsd, generalized_jsd(t, s, beta=0.5))
    assert torch.all(jsd <= math.log(2) + 1e-6) and torch.all(jsd >= 0)


def test_skew_kl_closed_forms():
    s = torch.log_softmax(_logits((6, 40), 5), -1)
    t = torch.log_softmax(_logits((6, 40), 6), -1)
    torch.testing.assert_close(skew_forward_kl(s, t, skew=0.0), forward_kl(s, t))
    torch.testing.assert_close(skew_reverse_kl(s, t, skew=0.0), reverse_kl(s, t))
    # Bounded by -log(skew) however far apart the distributions are (the point of skewing).
    far = torch.full((1, 40), -30.0).index_fill(1, torch.tensor([0]), 0.0).log_softmax(-1)
    near_zero = torch.full((1, 40), -30.0).index_fill(1, torch.tensor([1]), 0.0).log_softmax(-1)
    assert forward_kl(near_zero, far).item() > 25
    assert skew_forward_kl(near_zero, far, skew=0.1).item() <= -math.log(0.1) + 1e-5
    with pytest.raises(ValueError, match="skew"):
        skew_forward_kl(s, t, skew=1.0)


def test_bf16_inputs_are_upcast_before_any_rounding():
    """bf16 logits give the float64 loss of those same bf16 values, to float32 precision."""
    shape = (3, 47, 123)
    student, teacher = _logits(shape, 7, dtype=torch.bfloat16), _logits(shape, 8, dtype=torch.bfloat16)
    labels = _labels(shape[:-1], shape[-1], -100)
    value, grad = _grad_of(lambda s: kd_loss(s, teacher, labels, temperature=2.0), student)
    ref_value, ref_grad = _grad_of(lambda s: _ref_dense(s, teacher, labels, T=2.0), student.double())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    assert grad.dtype == torch.bfloat16  # only the final gradient is rounded, to the leaf's dtype
    rel = (grad.double() - ref_grad).norm() / ref_grad.norm()
    assert rel < 1e-2


def test_identical_distributions_give_zero_at_any_temperature():
    s = _logits((2, 7, 50), 9)
    for T in (0.5, 1.0, 3.0):
        assert kd_loss(s, s.clone(), temperature=T).abs() < 1e-6
        lp, ids = torch.log_softmax(s, -1).topk(8, dim=-1)
        assert topk_kd_loss(s, ids, lp, temperature=T).abs() < 1e-5


# -------------------------------------------------------------------------------------- sparse


@pytest.mark.parametrize(
    "shape,ignore_index,loss_type,beta,T",
    [(*case, *lt, 2.0) for case in CASES[:3] for lt in LOSS_TYPES] + [(*c, "forward_kl", 0.5, 1.0) for c in CASES[:3]],
)
def test_topk_matches_float64_reference(shape, ignore_index, loss_type, beta, T):
    k = 5
    student, teacher = _logits(shape, 11), _logits(shape, 12)
    labels = _labels(shape[:-1], shape[-1], ignore_index)
    logprobs, ids = torch.log_softmax(teacher, -1).topk(k, dim=-1)
    logprobs = logprobs.half()  # as stored

    def ours(s):
        return topk_kd_loss(s, ids, logprobs, labels, loss_type=loss_type, beta=beta, skew=beta, temperature=T, ignore_index=ignore_index)

    def ref(s):
        return _ref_topk(s, ids, logprobs, labels, loss_type=loss_type, beta=beta, T=T, ignore_index=ignore_index)

    value, grad = _grad_of(ours, student)
    ref_value, ref_grad = _grad_of(ref, student.double())
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "loss_type,beta,T", [(*lt, 2.0) for lt in LOSS_TYPES] + [("forward_kl", 0.5, T) for T in (1.0, 0.7)]
)
def test_topk_with_k_equal_vocab_equals_dense(loss_type, beta, T):
    shape = (3, 47, 123)
    student, teacher = _logits(shape, 13), _logits(shape, 14)
    labels = _labels(shape[:-1], shape[-1], -100)
    logprobs, ids = torch.log_softmax(teacher, -1).sort(dim=-1, descending=True)
    kw = dict(loss_type=loss_type, beta=beta, skew=beta, temperature=T)
    sparse, g_sparse = _grad_of(lambda s: topk_kd_loss(s, ids, logprobs, labels, **kw), student)
    dense, g_dense = _grad_of(lambda s: kd_loss(s, teacher, labels, **kw), student)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-4, atol=1e-7)


def test_topk_dropped_slot_moves_its_mass_to_the_tail():
    """A slot with log-prob -inf (an id outside the student's vocabulary) is the same as leaving it out."""
    shape = (2, 6, 40)
    student, teacher = _logits(shape, 15), _logits(shape, 16)
    logprobs, ids = torch.log_softmax(teacher, -1).topk(6, dim=-1)
    dropped_ids, dropped_lp = ids.clone(), logprobs.clone()
    dropped_ids[..., 2] = 0
    dropped_lp[..., 2] = float("-inf")
    keep = [0, 1, 3, 4, 5]
    for loss_type in ("forward_kl", "reverse_kl", "jsd"):
        a = topk_kd_loss(student, dropped_ids, dropped_lp, loss_type=loss_type, temperature=2.0)
        b = topk_kd_loss(student, ids[..., keep], logprobs[..., keep], loss_type=loss_type, temperature=2.0)
        torch.testing.assert_close(a, b)


def test_topk_stored_mass_above_one_stays_finite():
    """fp16 rounding can make the stored top-k sum past 1: the tail is floored, every loss stays finite."""
    student = _logits((4, 30), 17).requires_grad_(True)
    ids = torch.arange(3).expand(4, 3)
    logprobs = torch.log(torch.tensor([0.5, 0.3, 0.2002])).half().expand(4, 3)
    for loss_type in ("forward_kl", "reverse_kl", "jsd"):
        loss = topk_kd_loss(student, ids, logprobs, loss_type=loss_type, temperature=2.0)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


# --------------------------------------------------------------------- reduction, CE, combination


def test_grad_accumulation_invariance_with_num_items_in_batch():
    """One batch of 8 equals 8 micro-batches of 1 when each is normalised by the whole batch's token count."""
    shape = (8, 21, 64)
    student, teacher = _logits(shape, 18), _logits(shape, 19)
    labels = _labels(shape[:-1], shape[-1], -100, frac=0.5)
    n_items = int((labels != -100).sum())
    logprobs, ids = torch.log_softmax(teacher, -1).topk(7, dim=-1)

    losses = {
        "dense": lambda s, sl: kd_loss(s, teacher[sl], labels[sl], temperature=2.0, num_items_in_batch=n_items),
        "topk": lambda s, sl: topk_kd_loss(s, ids[sl], logprobs[sl], labels[sl], num_items_in_batch=torch.tensor(n_items)),
        "ce": lambda s, sl: cross_entropy_loss(s, labels[sl], num_items_in_batch=n_items),
    }
    for name, fn in losses.items():
        whole = student.clone().requires_grad_(True)
        full = fn(whole, slice(None))
        full.backward()
        parts = student.clone().requires_grad_(True)
        total = sum(fn(parts[i : i + 1], slice(i, i + 1)) for i in range(8))
        total.backward()
        torch.testing.assert_close(total, full, msg=name)
        torch.testing.assert_close(parts.grad, whole.grad, msg=name)
    # Without num_items_in_batch the whole batch is a plain mean over its unmasked tokens.
    mean = kd_loss(student, teacher, labels, temperature=2.0)
    torch.testing.assert_close(mean, kd_loss(student, teacher, labels, temperature=2.0, num_items_in_batch=n_items))


def test_all_tokens_masked_gives_zero_and_zero_gradient():
    student = _logits((2, 5, 11), 20).requires_grad_(True)
    labels = torch.full((2, 5), -100)
    for loss in (
        kd_loss(student, _logits((2, 5, 11), 21), labels),
        topk_kd_loss(student, torch.zeros(2, 5, 3, dtype=torch.long), torch.zeros(2, 5, 3), labels),
        cross_entropy_loss(student, labels),
    ):
        (grad,) = torch.autograd.grad(loss, student)
        assert loss.item() == 0.0 and torch.all(grad == 0)


@pytest.mark.parametrize("ignore_index", [-100, 4])
def test_cross_entropy_matches_reference(ignore_index):
    shape = (3, 47, 123)
    student = _logits(shape, 22, dtype=torch.bfloat16)
    labels = _labels(shape[:-1], shape[-1], ignore_index)
    value, grad = _grad_of(lambda s: cross_entropy_loss(s, labels, ignore_index=ignore_index), student.float())

    def ref(s):
        logp = torch.log_softmax(s.reshape(-1, shape[-1]), -1)
        flat = labels.reshape(-1)
        keep = flat != ignore_index
        return -logp[keep].gather(-1, flat[keep, None]).sum() / keep.sum()

    ref_value, ref_grad = _grad_of(ref, student.double())
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)


def test_combine_losses_and_argument_errors():
    kd, ce = torch.tensor(2.0), torch.tensor(4.0)
    assert combine_losses(kd, ce, 0.25).item() == pytest.approx(0.25 * 2 + 0.75 * 4)
    assert combine_losses(kd, ce, 1.0).item() == 2.0 and combine_losses(kd, ce, 0.0).item() == 4.0
    with pytest.raises(ValueError, match="alpha"):
        combine_losses(kd, ce, 1.5)
    s, t = _logits((2, 3, 10), 23), _logits((2, 3, 10), 24)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="unknown KD loss type"):
        kd_loss(s, t, loss_type="tvd")
    with pytest.raises(ValueError, match="beta"):
        kd_loss(s, t, loss_type="jsd", beta=1.5)
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss(s, _logits((2, 3, 12), 25))
    with pytest.raises(ValueError, match="labels have shape"):
        kd_loss(s, t, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in shape"):
        topk_kd_loss(s, torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, 5))
