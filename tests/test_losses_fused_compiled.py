"""The fused loss with its chunk step under torch.compile: the same float64 references as the eager path
(tests/test_losses_fused.py), equality with eager, the fallback when compilation fails, and the automatic
chunk size. Each distinct loss compiles once (a few seconds on CPU), so the cases are few."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.test_losses_fused import (
    _assert_matches_reference,
    _grads,
    _ref_logits,
    _ref_total,
    _tensors,
)
from training.losses import (
    DenseTeacher,
    LinearHead,
    TopKTeacher,
    fused_linear_distillation,
    get_divergence,
)
from training.losses import fused as fused_module
from training.losses.fused import ChunkStep, auto_chunk_size


@pytest.mark.parametrize("chunk_size", [5, 0])  # 5: a shorter last chunk, through the same (dynamic) graph
@pytest.mark.parametrize("loss_type,beta", [("jsd", 0.5), ("forward_kl", 0.5)])
def test_compiled_dense_teacher_matches_float64_reference(chunk_size, loss_type, beta):
    hidden, weight, bias, targets, t_hidden, t_weight = _tensors(0)
    T, alpha = 2.0, 0.3
    divergence = get_divergence(loss_type, beta, beta)
    teacher = DenseTeacher(t_hidden, LinearHead(t_weight))

    def ours(h, w, b):
        return fused_linear_distillation(h, LinearHead(w, b), targets, teacher, divergence=divergence, alpha=alpha,
                                         temperature=T, chunk_size=chunk_size, compile=True).loss

    def ref(h, w, b):
        return _ref_total(_ref_logits(h, w, b), targets, ("dense", _ref_logits(t_hidden, t_weight, None)),
                          loss_type=loss_type, beta=beta, T=T, alpha=alpha)

    _assert_matches_reference(ours, ref, hidden, weight, bias)
    assert fused_module._CHUNK_STEP.failed is None


def test_compiled_topk_teacher_and_online_top_k_match_float64_reference():
    hidden, weight, bias, targets, t_hidden, t_weight = _tensors(1)
    logprobs, ids = torch.log_softmax(t_hidden @ t_weight.t(), -1).topk(7, dim=-1)
    kw = dict(divergence=get_divergence("skew_reverse_kl", skew=0.3), alpha=0.5, temperature=2.0, chunk_size=8,
              num_items_in_batch=50, compile=True)

    def ref(h, w, b):
        return _ref_total(_ref_logits(h, w, b), targets, ("topk", ids, logprobs.half()), loss_type="skew_reverse_kl",
                          beta=0.3, T=2.0, alpha=0.5, n_items=50)

    stored = _assert_matches_reference(
        lambda h, w, b: fused_linear_distillation(h, LinearHead(w, b), targets, TopKTeacher(ids, logprobs.half()), **kw).loss,
        ref, hidden, weight, bias,
    )
    online = fused_linear_distillation(hidden, LinearHead(weight, bias), targets,
                                       DenseTeacher(t_hidden, LinearHead(t_weight), top_k=7), **kw).loss
    # The online teacher keeps float32 log-probs where the stored ones are float16: equal to that rounding.
    torch.testing.assert_close(online, stored, rtol=1e-3, atol=1e-4)


def test_compiled_equals_eager_with_scale_softcap_and_bias():
    hidden, weight, bias, targets, t_hidden, t_weight = _tensors(2)
    head = dict(scale=0.7, softcap=5.0)
    kw = dict(divergence=get_divergence("reverse_kl"), alpha=0.6, temperature=1.0, chunk_size=9)

    def run(compile: bool):
        return _grads(lambda h, w, b: fused_linear_distillation(
            h, LinearHead(w, b, **head), targets, DenseTeacher(t_hidden, LinearHead(t_weight)), compile=compile, **kw).loss,
            hidden, weight, bias)

    (eager, eager_grads), (compiled, compiled_grads) = run(False), run(True)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-7)


def test_a_failed_compilation_falls_back_to_eager_once(monkeypatch, caplog):
    def broken_compile(fn, **_):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return call

    step = ChunkStep()
    monkeypatch.setattr(fused_module, "_CHUNK_STEP", step)
    monkeypatch.setattr(torch, "compile", broken_compile)
    hidden, weight, bias, targets, t_hidden, t_weight = _tensors(3)
    kw = dict(divergence=get_divergence("forward_kl"), alpha=0.5, temperature=2.0, chunk_size=6)
    with caplog.at_level(logging.WARNING, logger="training.losses.fused"):
        first = fused_linear_distillation(hidden, LinearHead(weight, bias), targets,
                                          DenseTeacher(t_hidden, LinearHead(t_weight)), compile=True, **kw)
        again = fused_linear_distillation(hidden, LinearHead(weight, bias), targets,
                                          DenseTeacher(t_hidden, LinearHead(t_weight)), compile=True, **kw)
    eager = fused_linear_distillation(hidden, LinearHead(weight, bias), targets,
                                      DenseTeacher(t_hidden, LinearHead(t_weight)), **kw)
    assert step.failed == "RuntimeError: no C++ compiler found"
    warnings = [r for r in caplog.records if "torch.compile of the fused KD loss failed" in r.getMessage()]
    assert len(warnings) == 1  # said once, then eager without trying again
    torch.testing.assert_close(first.loss, eager.loss)
    torch.testing.assert_close(again.loss, eager.loss)


def test_auto_chunk_size_follows_the_vocabulary_and_the_device():
    # A (chunk, V) float32 buffer of at most 32 MiB on CPU, 512 MiB on a GPU; never more rows than tokens.
    assert auto_chunk_size(10_000, 49_152, "cpu") == 32 * 2**20 // (4 * 49_152) == 170
    assert auto_chunk_size(10_000, 151_936, "cpu") == 55
    assert auto_chunk_size(100_000, 49_152, "cuda") == 512 * 2**20 // (4 * 49_152) == 2730
    assert auto_chunk_size(50, 49_152, "cuda") == 50
    assert auto_chunk_size(10_000, 10**7, "cpu") == 16  # at least 16 rows, whatever the vocabulary
    assert auto_chunk_size(0, 101, "cpu") == 1
    hidden, weight, _, targets, *_ = _tensors(4, bias=False)
    auto = fused_linear_distillation(hidden, LinearHead(weight), targets).loss
    torch.testing.assert_close(auto, fused_linear_distillation(hidden, LinearHead(weight), targets, chunk_size=0).loss)
