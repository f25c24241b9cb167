"""training.trajectory's losses and inner loop: the matching loss on hand-built vectors, the functional
inner step against torch's SGD, the exact meta-gradient against finite differences, the adjoint
(constant-memory) gradient against the exact one, TESLA's against the surrogate it differentiates, and
the memory each mode keeps for backward as the unroll grows."""

from __future__ import annotations

import math

import pytest
import torch

from training.trajectory.losses import parameter_matching_loss, soft_cross_entropy
from training.trajectory.models import PooledHeadClassifier
from training.trajectory.synthetic import SyntheticSet
from training.trajectory.unroll import make_schedule, meta_gradient, problem_for, unroll

torch.set_num_threads(1)  # tiny tensors; leave the machine's cores to others


# ------------------------------------------------------------------------------ losses


def test_matching_loss_on_hand_built_vectors():
    start = {"a": torch.tensor([0.0, 0.0], dtype=torch.float64), "b": torch.tensor([[1.0]], dtype=torch.float64)}
    target = {"a": torch.tensor([3.0, 4.0], dtype=torch.float64), "b": torch.tensor([[1.0]], dtype=torch.float64)}
    student = {"a": torch.tensor([3.0, 1.0], dtype=torch.float64), "b": torch.tensor([[3.0]], dtype=torch.float64)}
    # ‖θ̂ − θ*‖² = 0 + 9 + 4 = 13; ‖θ_t − θ*‖² = 9 + 16 + 0 = 25
    assert parameter_matching_loss(student, target, start).item() == pytest.approx(13 / 25, abs=1e-15)
    assert parameter_matching_loss(start, target, start).item() == pytest.approx(1.0)
    assert parameter_matching_loss(target, target, start).item() == 0.0
    extra = student | {"unmatched": torch.tensor([100.0], dtype=torch.float64)}
    assert parameter_matching_loss(extra, target, start).item() == pytest.approx(13 / 25)  # only target's names count


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_soft_cross_entropy_against_a_float64_loop(dtype, tol):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64)
    targets = torch.rand(5, 7, generator=g, dtype=torch.float64)  # unrestricted: rows need not sum to 1
    total = 0.0
    for b in range(5):
        z = sum(math.exp(v) for v in logits[b].tolist())
        total += -sum(targets[b, c].item() * (logits[b, c].item() - math.log(z)) for c in range(7))
    got_logits = logits.to(dtype).requires_grad_(True)
    value = soft_cross_entropy(got_logits, targets.to(dtype))
    assert value.item() == pytest.approx(total / 5, rel=tol)
    value.backward()
    probs = torch.softmax(logits, -1)
    expected = (probs * targets.sum(-1, keepdim=True) - targets) / 5  # d/dz of −Σ y log softmax(z)
    torch.testing.assert_close(got_logits.grad, expected.to(dtype), rtol=tol * 10, atol=tol * 10)
    hard = torch.tensor([2, 0, 6, 1, 3])
    torch.testing.assert_close(soft_cross_entropy(logits, torch.nn.functional.one_hot(hard, 7).double()), torch.nn.functional.cross_entropy(logits, hard))


# ------------------------------------------------------------------------------ a tiny problem

H, L, C, N = 4, 3, 3, 6


def tiny(seed: int = 0, label_kind: str = "hard", lr_steps: int = 1, lr: float = 0.5, width: int = 5):
    """A float64 student, two 'checkpoints' and a synthetic set of N rows (2 per class)."""
    torch.manual_seed(seed)
    model = PooledHeadClassifier(H, C, width=width, max_length=L).double()
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = {n: p + 0.3 * torch.randn_like(p) for n, p in start.items()}
    classes = torch.arange(N) % C
    mask = torch.ones(N, L, dtype=torch.long)
    mask[1, -1] = 0  # one padded position
    syn = SyntheticSet.create(torch.randn(N, L, H, dtype=torch.float64), mask, classes, C, label_kind=label_kind, lr=lr, lr_steps=lr_steps, confidence=0.7)
    if label_kind == "unrestricted":
        syn.label_param.data += 0.1 * torch.randn_like(syn.label_param)
    return model, names, start, target, syn


def schedule_of(steps: int, batch: int = 4, seed: int = 1):
    return make_schedule(N, steps, batch, torch.Generator().manual_seed(seed))


def test_functional_inner_step_equals_an_sgd_step():
    model, names, start, _, syn = tiny()
    problem = problem_for(model, start, names)
    idx = torch.tensor([0, 2, 5])
    stepped = unroll(problem, syn, start, [idx])
    opt = torch.optim.SGD(model.parameters(), lr=float(syn.lr(0).detach()))
    opt.zero_grad()
    soft_cross_entropy(model(syn.embeds[idx].detach(), syn.mask[idx]), syn.labels()[idx].detach()).backward()
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(stepped[n], p.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label_kind,lr_steps", [("hard", 1), ("soft", 3), ("unrestricted", 1)])
def test_exact_meta_gradient_matches_finite_differences(label_kind, lr_steps):
    model, names, start, target, syn = tiny(label_kind=label_kind, lr_steps=lr_steps)
    problem = problem_for(model, start, names)
    schedule = schedule_of(3)
    learn_labels = label_kind != "hard"

    def loss_of(embeds, lr_param, label_param=None):
        s = SyntheticSet(embeds, syn.mask, syn.classes, label_param if learn_labels else syn.label_param, lr_param, label_kind)
        params = dict(start)
        labels = s.labels()
        for i, idx in enumerate(schedule):
            g = problem.grad_fn(params, s.embeds[idx], s.mask[idx], labels[idx])
            params = {n: params[n] - s.lr(i) * g[n] for n in params}
        return parameter_matching_loss(params, target, start)

    inputs = (syn.embeds, syn.lr_param) + ((syn.label_param,) if learn_labels else ())
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    got = meta_gradient(problem, syn, start, target, schedule, "exact")
    ref = torch.autograd.grad(loss_of(*inputs), inputs)
    torch.testing.assert_close(got.embeds, ref[0])
    torch.testing.assert_close(got.lr_param, ref[1])
    if learn_labels:
        torch.testing.assert_close(got.label_param, ref[2])
    else:
        assert got.label_param is None


@pytest.mark.parametrize("steps", [1, 3, 7])
@pytest.mark.parametrize("label_kind,lr_steps", [("hard", 1), ("soft", 7), ("unrestricted", 1)])
def test_adjoint_equals_exact(steps, label_kind, lr_steps):
    model, names, start, target, syn = tiny(label_kind=label_kind, lr_steps=lr_steps)
    problem = problem_for(model, start, names)
    schedule = schedule_of(steps)
    exact = meta_gradient(problem, syn, start, target, schedule, "exact")
    adjoint = meta_gradient(problem, syn, start, target, schedule, "adjoint")
    assert adjoint.loss == pytest.approx(exact.loss, rel=1e-12)
    torch.testing.assert_close(adjoint.flat(), exact.flat(), rtol=1e-9, atol=1e-12)
    for n in exact.final:
        torch.testing.assert_close(adjoint.final[n], exact.final[n], rtol=1e-12, atol=1e-12)


def test_adjoint_equals_exact_when_only_part_is_unrolled():
    model, names, start, target, syn = tiny(label_kind="soft")
    part = [n for n in names if n.startswith(("head.", "mix."))]
    problem = problem_for(model, start, part)
    sub_start, sub_target = {n: start[n] for n in part}, {n: target[n] for n in part}
    schedule = schedule_of(4)
    exact = meta_gradient(problem, syn, sub_start, sub_target, schedule, "exact")
    adjoint = meta_gradient(problem, syn, sub_start, sub_target, schedule, "adjoint")
    assert set(exact.final) == set(part)
    torch.testing.assert_close(adjoint.flat(), exact.flat(), rtol=1e-9, atol=1e-12)
    assert exact.embeds.abs().sum() > 0  # the synthetic rows still move the unrolled part


def test_tesla_is_the_gradient_of_its_first_order_surrogate():
    """TESLA drops the Hessian terms: its gradient is autograd of ‖θ_0 − Σ α_i g(sg(θ_i); B_i) − θ*‖² / D,
    with the true iterates θ_i held constant; exact for one step, and close to exact for small steps."""
    model, names, start, target, syn = tiny(label_kind="soft", lr_steps=5)
    problem = problem_for(model, start, names)
    schedule = schedule_of(5)
    thetas = [start]
    for i, idx in enumerate(schedule):  # the true iterates, without a graph
        thetas.append(unroll(problem, syn, thetas[-1], [idx]) if syn.lr_param.shape[0] == 1 else None)
        if thetas[-1] is None:
            with torch.no_grad():
                g = problem.grad_fn(thetas[-2], syn.embeds[idx], syn.mask[idx], syn.labels()[idx])
                thetas[-1] = {n: thetas[-2][n] - syn.lr(i) * g[n] for n in start}
    labels = syn.labels()
    total = {n: start[n].clone() for n in start}
    for i, idx in enumerate(schedule):
        g = problem.grad_fn(thetas[i], syn.embeds[idx], syn.mask[idx], labels[idx])
        total = {n: total[n] - syn.lr(i) * g[n] for n in total}
    surrogate = parameter_matching_loss(total, target, start)
    ref = torch.autograd.grad(surrogate, [syn.embeds, syn.lr_param, syn.label_param])
    tesla = meta_gradient(problem, syn, start, target, schedule, "tesla")
    torch.testing.assert_close(tesla.embeds, ref[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tesla.lr_param, ref[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tesla.label_param, ref[2], rtol=1e-9, atol=1e-12)

    one = schedule[:1]
    torch.testing.assert_close(meta_gradient(problem, syn, start, target, one, "tesla").flat(), meta_gradient(problem, syn, start, target, one, "exact").flat(), rtol=1e-9, atol=1e-12)
    _, _, start, target, small = tiny(label_kind="soft", lr=1e-3)
    cos = torch.nn.functional.cosine_similarity(meta_gradient(problem, small, start, target, schedule, "tesla").flat(), meta_gradient(problem, small, start, target, schedule, "exact").flat(), dim=0)
    assert cos > 0.99


def graph_tensors() -> int:
    """Live tensors that carry an autograd graph (what a backward pass will still need)."""
    import gc
    import warnings

    with warnings.catch_warnings():  # isinstance on every live object touches deprecated torch aliases
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None)


def test_exact_keeps_every_step_for_backward_and_the_adjoint_one_at_a_time(monkeypatch):
    from training.trajectory import unroll as module

    model, names, start, target, syn = tiny()
    problem = problem_for(model, start, names)
    at_step: list[int] = []
    original_vjp = module.vjp

    def counting_vjp(*args, **kwargs):
        at_step.append(graph_tensors())
        return original_vjp(*args, **kwargs)

    monkeypatch.setattr(module, "vjp", counting_vjp)
    counts = {}
    for steps in (3, 9):
        at_step.clear()
        meta_gradient(problem, syn, start, target, schedule_of(steps), "adjoint")
        counts[steps] = list(at_step)
    # at most the previous step's outputs (still named until reassigned), whatever the unroll's length
    assert max(counts[3]) == max(counts[9]) and set(counts[9][1:]) == {max(counts[9])}

    original_grad = module.torch.autograd.grad
    before_backward: list[int] = []

    def counting_grad(*args, **kwargs):
        before_backward.append(graph_tensors())
        return original_grad(*args, **kwargs)

    monkeypatch.setattr(module.torch.autograd, "grad", counting_grad)
    for steps in (3, 9):
        meta_gradient(problem, syn, start, target, schedule_of(steps), "exact")
    assert before_backward[1] >= before_backward[0] + 9 - 3  # at least one more graph-holding tensor per step
