"""The fused, chunked LM head + CE + KD against float64 references built from full logits."""

from __future__ import annotations

import pytest
import torch

from tests.test_losses_kd import LOSS_TYPES, _ref_dense, _ref_topk
from training.losses import (
    DenseTeacher,
    LinearHead,
    TopKTeacher,
    fused_linear_distillation,
    get_divergence,
    kd_loss,
    topk_kd_loss,
    cross_entropy_loss,
)

N, H, V, HT = 37, 16, 101, 24


def _tensors(seed: int, dtype=torch.float32, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * 0.5).to(dtype)
    b = (torch.randn(V, generator=g) * 0.1).to(dtype) if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    t_hidden = torch.randn(N, HT, generator=g).to(dtype)
    t_weight = (torch.randn(V, HT, generator=g) * 0.5).to(dtype)
    return hidden, weight, b, targets, t_hidden, t_weight


def _ref_logits(hidden, weight, bias, scale=None, softcap=None):
    z = hidden.double() @ weight.double().t()
    if bias is not None:
        z = z + bias.double()
    if scale is not None:
        z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def _ref_total(student_z, targets, teacher, *, loss_type, beta, T, alpha, n_items=None):
    """Float64 CE + KD over full logits; teacher is ("dense", teacher logits) or ("topk", ids, logprobs)."""
    labels = targets
    n = n_items if n_items is not None else student_z.shape[0]
    ce = torch.nn.functional.cross_entropy(student_z, targets, reduction="sum") / n
    if teacher is None:
        return ce
    if teacher[0] == "dense":
        kd = _ref_dense(student_z, teacher[1], labels, loss_type=loss_type, beta=beta, T=T, n_items=n)
    else:
        kd = _ref_topk(student_z, teacher[1], teacher[2], labels, loss_type=loss_type, beta=beta, T=T, n_items=n)
    return alpha * kd + (1 - alpha) * ce


def _grads(fn, *tensors):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [None if t is None else t.grad for t in leaves]


def _assert_matches_reference(ours, ref, *tensors) -> torch.Tensor:
    """Value and gradients of ``ours`` (float32) against ``ref`` on float64 copies of the same tensors."""
    value, grads = _grads(ours, *tensors)
    ref_value, ref_grads = _grads(ref, *(t.double() for t in tensors))
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-6)
    return value


@pytest.mark.parametrize("chunk_size", [0, 1, 5, N, 1000])
@pytest.mark.parametrize("loss_type,beta", LOSS_TYPES)
def test_dense_teacher_matches_float64_reference(chunk_size, loss_type, beta):
    hidden, weight, bias, targets, t_hidden, t_weight = _tensors(0)
    T, alpha = 2.0, 0.3
    divergence = get_divergence(loss_type, beta, beta)
    teacher = DenseTeacher(t_hidden, LinearHead(t_weight))

    def ours(h, w, b):
        return fused_linear_distillation(
            h, LinearHead(w, b), targets, teacher, divergence=divergence, alpha=alpha, temperature=T, chunk_size=chunk_size
        ).loss

    def ref(h, w, b):
        t_logits = _ref_logits(t_hidden, t_weight, None)
        return _ref_total(_ref_logits(h, w, b), targets, ("dense", t_logits), loss_type=loss_type, beta=beta, T=T, alpha=alpha)

    assert _assert_matches_reference(ours, ref, hidden, weight, bias).dtype == torch.float32


@pytest.mark.parametrize("chunk_size", [1, 8, 0])
@pytest.mark.parametrize("loss_type,beta", LOSS_TYPES[:3] + LOSS_TYPES[5:])
def test_topk_teacher_matches_float64_reference(chunk_size, loss_type, beta):
    hidden, weight, bias, targets, t_hidden, t_weight = _tensors(1)
    t_logits = t_hidden @ t_weight.t()
    logprobs, ids = torch.log_softmax(t_logits, -1).topk(7, dim=-1)
    logprobs = logprobs.half()  # as stored
    T, alpha = 2.0, 0.5
    teacher = TopKTeacher(ids, logprobs)

    def ours(h, w, b):
        return fused_linear_distillation(
            h, LinearHead(w, b), targets, teacher, divergence=get_divergence(loss_type, beta, beta),
            alpha=alpha, temperature=T, chunk_size=chunk_size, num_items_in_batch=50,
        ).loss

    def ref(h, w, b):
        z = _ref_logits(h, w, b)
        return _ref_total(z, targets, ("topk", ids, logprobs), loss_type=loss_type, beta=beta, T=T, alpha=alpha, n_items=50)

    _assert_matches_reference(ours, ref, hidden, weight, bias)


def test_online_top_k_truncation_equals_stored_top_k():
    """DenseTeacher(top_k=k) trains on the same signal as stored top-k log-probs of the same teacher."""
    hidden, weight, _, targets, t_hidden, t_weight = _tensors(2, bias=False)
    t_logits = t_hidden @ t_weight.t()
    logprobs, ids = torch.log_softmax(t_logits, -1).topk(9, dim=-1)
    kw = dict(divergence=get_divergence("forward_kl"), temperature=2.0, chunk_size=6)
    online = _grads(lambda h: fused_linear_distillation(h, LinearHead(weight), targets, DenseTeacher(t_hidden, LinearHead(t_weight), top_k=9), **kw).loss, hidden)
    stored = _grads(lambda h: fused_linear_distillation(h, LinearHead(weight), targets, TopKTeacher(ids, logprobs), **kw).loss, hidden)
    torch.testing.assert_close(online[0], stored[0])
    torch.testing.assert_close(online[1][0], stored[1][0])


def test_scale_softcap_and_ce_only():
    hidden, weight, bias, targets, *_ = _tensors(3)
    head = dict(scale=0.7, softcap=5.0)

    def ours(h, w, b):
        return fused_linear_distillation(h, LinearHead(w, b, **head), targets, chunk_size=4).loss

    def ref(h, w, b):
        return _ref_total(_ref_logits(h, w, b, **head), targets, None, loss_type="forward_kl", beta=0.5, T=1.0, alpha=0.5)

    _assert_matches_reference(ours, ref, hidden, weight, bias)


def test_equals_the_unfused_losses_and_reports_sums():
    """Same numbers as kd_loss / topk_kd_loss / cross_entropy_loss on materialised logits."""
    hidden, weight, bias, targets, t_hidden, t_weight = _tensors(4)
    z = hidden @ weight.t() + bias
    t_logits = t_hidden @ t_weight.t()
    out = fused_linear_distillation(
        hidden, LinearHead(weight, bias), targets, DenseTeacher(t_hidden, LinearHead(t_weight)),
        divergence=get_divergence("jsd", 0.5), alpha=0.4, temperature=1.5, chunk_size=10,
    )
    ce = cross_entropy_loss(z, targets)
    kd = kd_loss(z, t_logits, targets, loss_type="jsd", beta=0.5, temperature=1.5)
    torch.testing.assert_close(out.ce_sum / N, ce)
    torch.testing.assert_close(out.kd_sum / N, kd)
    torch.testing.assert_close(out.loss, 0.4 * kd + 0.6 * ce)
    assert out.num_correct.item() == int((z.argmax(-1) == targets).sum())
    lp, ids = torch.log_softmax(t_logits, -1).topk(5, dim=-1)
    sparse = fused_linear_distillation(hidden, LinearHead(weight, bias), targets, TopKTeacher(ids, lp),
                                       divergence=get_divergence("forward_kl"), alpha=1.0, chunk_size=3)
    torch.testing.assert_close(sparse.loss, topk_kd_loss(z, ids, lp, targets))


def test_gradient_accumulation_invariance():
    """Eight micro-batches normalised by the whole batch's token count add up to the whole batch."""
    hidden, weight, _, targets, t_hidden, t_weight = _tensors(5, bias=False)
    teacher_args = (t_hidden, LinearHead(t_weight))
    kw = dict(divergence=get_divergence("reverse_kl"), alpha=0.5, temperature=2.0, chunk_size=4)
    whole = _grads(lambda h, w: fused_linear_distillation(h, LinearHead(w), targets, DenseTeacher(*teacher_args), **kw).loss, hidden, weight)
    bounds = [0, 3, 4, 11, 20, 21, 30, 36, N]

    def parts(h, w):
        return sum(
            fused_linear_distillation(
                h[a:b], LinearHead(w), targets[a:b], DenseTeacher(t_hidden[a:b], LinearHead(t_weight)),
                num_items_in_batch=torch.tensor(N), **kw,
            ).loss
            for a, b in zip(bounds, bounds[1:])
        )

    split = _grads(parts, hidden, weight)
    torch.testing.assert_close(split[0], whole[0])
    for g, r in zip(split[1], whole[1]):
        torch.testing.assert_close(g, r)


def test_bf16_is_upcast_before_the_matmul():
    """bf16 hidden states and weights give the float64 loss of those same bf16 values."""
    hidden, weight, _, targets, t_hidden, t_weight = _tensors(6, dtype=torch.bfloat16, bias=False)
    kw = dict(divergence=get_divergence("forward_kl"), alpha=0.5, temperature=2.0, chunk_size=8)
    value, (g_h, g_w) = _grads(
        lambda h, w: fused_linear_distillation(h, LinearHead(w), targets, DenseTeacher(t_hidden, LinearHead(t_weight)), **kw).loss,
        hidden, weight,
    )
    ref_value, (r_h, r_w) = _grads(
        lambda h, w: _ref_total(_ref_logits(h, w, None), targets, ("dense", _ref_logits(t_hidden, t_weight, None)),
                                loss_type="forward_kl", beta=0.5, T=2.0, alpha=0.5),
        hidden.double(), weight.double(),
    )
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    assert g_h.dtype == torch.bfloat16 and g_w.dtype == torch.bfloat16  # only the final gradient is rounded
    for g, r in ((g_h, r_h), (g_w, r_w)):
        assert ((g.double() - r).norm() / r.norm()) < 1e-2


def test_padded_teacher_vocabulary_and_frozen_head():
    """A teacher head padded with extra rows is cut to the student's width; a frozen head gets no gradient."""
    hidden, weight, _, targets, t_hidden, t_weight = _tensors(7, bias=False)
    padded = torch.cat([t_weight, torch.randn(11, HT) * 50])
    kw = dict(divergence=get_divergence("forward_kl"), temperature=1.0, chunk_size=7)
    a = fused_linear_distillation(hidden, LinearHead(weight), targets, DenseTeacher(t_hidden, LinearHead(padded)), **kw).loss
    b = fused_linear_distillation(hidden, LinearHead(weight), targets, DenseTeacher(t_hidden, LinearHead(t_weight)), **kw).loss
    torch.testing.assert_close(a, b)
    h = hidden.clone().requires_grad_(True)
    loss = fused_linear_distillation(h, LinearHead(weight), targets, chunk_size=3).loss  # weight.requires_grad is False
    loss.backward()
    assert h.grad is not None and weight.grad is None


def test_no_tokens_and_argument_errors():
    hidden, weight, _, targets, t_hidden, t_weight = _tensors(8, bias=False)
    h = hidden[:0].clone().requires_grad_(True)
    out = fused_linear_distillation(h, LinearHead(weight), targets[:0], DenseTeacher(t_hidden[:0], LinearHead(t_weight)),
                                    divergence=get_divergence("forward_kl"))
    out.loss.backward()
    assert out.loss.item() == 0.0 and h.grad.shape == (0, H)
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_distillation(hidden, LinearHead(weight), targets, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        fused_linear_distillation(hidden, LinearHead(weight), targets, alpha=1.5)
    with pytest.raises(ValueError, match="targets"):
        fused_linear_distillation(hidden, LinearHead(weight), targets[:-1])
    with pytest.raises(ValueError, match="teacher hidden"):
        fused_linear_distillation(hidden, LinearHead(weight), targets, DenseTeacher(t_hidden[:-1], LinearHead(t_weight)),
                                  divergence=get_divergence("forward_kl"))
