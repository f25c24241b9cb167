"""The inner loop of trajectory matching and its meta-gradient, three ways.

A student starts at expert checkpoint θ*_t and takes N plain-SGD steps on the synthetic set,
``θ_{i+1} = θ_i − α_i ∇_θ ℓ(θ_i; X_{b_i}, Y_{b_i})``; the outer loss is
``L = ‖θ_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²``. We need dL/dX, dL/dY (learnt labels) and dL/dα.

- ``exact``: autograd through the whole unroll (``torch.func.grad`` inside, ``torch.autograd.grad``
  outside), as MTT does; memory grows with N (every step's graph is kept).
- ``adjoint``: the same gradient, exactly, in memory that does not grow with N (but for the N stored
  parameter vectors): the iterates are computed without a graph, then walked backwards with the
  adjoint λ_i = ∂L/∂θ_i, one ``torch.func.vjp`` of the inner gradient per step giving the Hessian-vector
  product and the mixed X / Y terms together:
  ``λ_N = 2(θ_N − θ*)/D;  ∂L/∂α_i = −λ_{i+1}·g_i;  ∂L/∂X_{b_i} += −α_i (∂g_i/∂X)ᵀλ_{i+1};  λ_i = λ_{i+1} − α_i H_i λ_{i+1}``.
- ``tesla``: TESLA's constant-memory gradient (Cui et al. 2023) as its code computes it: the adjoint
  with the Hessian terms dropped (λ_i = λ_N for every i). Exact for N = 1, first order in α beyond.

Parameters not in ``start`` (frozen, or trained by the experts but not matched) enter as constants.
``schedule`` fixes which synthetic rows each step sees, so every mode sees the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vjp

from training.trajectory.losses import (
    parameter_matching_loss,
    soft_cross_entropy,
    squared_distance,
)
from training.trajectory.synthetic import SyntheticSet

MODES = ("exact", "adjoint", "tesla")
Params = dict[str, torch.Tensor]


@dataclass
class InnerProblem:
    """The student's loss as a function of the unrolled parameters (everything else held constant)."""

    model: nn.Module
    constants: Params  # frozen parameters, unmatched ones and buffers

    def loss(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(self.model, {**self.constants, **params}, (x,), {"attention_mask": mask})
        return soft_cross_entropy(logits, y)

    def logits(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**self.constants, **params}, (x,), {"attention_mask": mask})

    @property
    def grad_fn(self) -> Callable[..., Params]:
        return grad(self.loss)


def problem_for(model: nn.Module, checkpoint: Mapping[str, torch.Tensor], unrolled: list[str]) -> InnerProblem:
    """An inner problem whose constants are the model's tensors, overridden by ``checkpoint`` (an expert's
    parameters at the start epoch), minus the ``unrolled`` ones."""
    constants = {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    constants |= {n: t.detach() for n, t in checkpoint.items()}
    for n in unrolled:
        constants.pop(n)
    return InnerProblem(model, constants)


def make_schedule(n_rows: int, steps: int, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Row indices per inner step: random permutations of the set walked in batches (MTT's order)."""
    batch = min(batch, n_rows)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n_rows, generator=generator)
        out += [perm[i : i + batch] for i in range(0, n_rows - batch + 1, batch)]
    return out[:steps]


@dataclass
class MetaGradient:
    loss: float  # the matching loss
    embeds: torch.Tensor  # dL/dX, (N, L, H)
    label_param: torch.Tensor | None  # dL/d label parameters (None for hard labels)
    lr_param: torch.Tensor  # dL/d lr parameters, (S,)
    final: Params  # θ_N

    def flat(self) -> torch.Tensor:
        parts = [self.embeds.flatten(), self.lr_param.flatten()] + ([self.label_param.flatten()] if self.label_param is not None else [])
        return torch.cat(parts)

    def assign(self, syn: SyntheticSet) -> None:
        """Put the gradient into the leaves' ``.grad`` (for a torch optimiser)."""
        syn.embeds.grad = self.embeds.to(syn.embeds.dtype)
        syn.lr_param.grad = self.lr_param.to(syn.lr_param.dtype)
        if self.label_param is not None and syn.label_param.requires_grad:
            syn.label_param.grad = self.label_param.to(syn.label_param.dtype)


def meta_gradient(problem: InnerProblem, syn: SyntheticSet, start: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], schedule: list[torch.Tensor], mode: str = "adjoint") -> MetaGradient:
    """The matching loss of an unroll from ``start`` over ``schedule`` and its gradient (see the module)."""
    if mode not in MODES:
        raise ValueError(f"unroll mode must be one of {', '.join(MODES)}, got {mode!r}")
    start = {n: t.detach() for n, t in start.items()}
    target = {n: t.detach() for n, t in target.items()}
    if mode == "exact":
        return _exact(problem, syn, start, target, schedule)
    return _adjoint(problem, syn, start, target, schedule, hessian=mode == "adjoint")


def unroll(problem: InnerProblem, syn: SyntheticSet, start: Mapping[str, torch.Tensor], schedule: list[torch.Tensor]) -> Params:
    """θ_N from ``start`` without a graph (evaluation; the iterates of the adjoint's forward pass)."""
    return _forward(problem, syn, {n: t.detach() for n, t in start.items()}, schedule)[-1]


def _exact(problem: InnerProblem, syn: SyntheticSet, start: Params, target: Params, schedule: list[torch.Tensor]) -> MetaGradient:
    grad_fn = problem.grad_fn
    labels = syn.labels()
    params = start
    for i, idx in enumerate(schedule):
        g = grad_fn(params, syn.embeds[idx], syn.mask[idx], labels[idx])
        lr = syn.lr(i)
        params = {n: params[n] - lr * g[n] for n in params}
    loss = parameter_matching_loss(params, target, start)
    wrt = [syn.embeds, syn.lr_param] + ([syn.label_param] if syn.label_param.requires_grad else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
    return MetaGradient(float(loss.detach()), grads[0], grads[2] if len(grads) > 2 else None, grads[1], {n: t.detach() for n, t in params.items()})


def _forward(problem: InnerProblem, syn: SyntheticSet, start: Params, schedule: list[torch.Tensor]) -> list[Params]:
    grad_fn = problem.grad_fn
    with torch.no_grad():
        labels = syn.labels()
        thetas = [start]
        for i, idx in enumerate(schedule):
            g = grad_fn(thetas[-1], syn.embeds[idx], syn.mask[idx], labels[idx])
            lr = syn.lr(i)
            thetas.append({n: thetas[-1][n] - lr * g[n] for n in start})
    return thetas


def _adjoint(problem: InnerProblem, syn: SyntheticSet, start: Params, target: Params, schedule: list[torch.Tensor], hessian: bool) -> MetaGradient:
    grad_fn = problem.grad_fn
    thetas = _forward(problem, syn, start, schedule)
    final = thetas[-1]
    denom = squared_distance(start, target)
    loss = squared_distance(final, target) / denom
    lam = {n: 2 * (final[n] - target[n]) / denom for n in start}  # ∂L/∂θ_N
    learn_labels = syn.label_param.requires_grad
    d_embeds = torch.zeros_like(syn.embeds)
    d_labels = torch.zeros_like(syn.label_param) if learn_labels else None
    d_lr = torch.zeros_like(syn.lr_param)
    x_all, z_all = syn.embeds.detach(), syn.label_param.detach()
    with torch.no_grad():
        lrs = [syn.lr(i) for i in range(len(schedule))]
        lr_slope = [torch.sigmoid(syn.lr_param[syn.lr_index(i)]) * (syn.lr_min < lrs[i] < syn.lr_max) for i in range(len(schedule))]
    for i in reversed(range(len(schedule))):
        idx = schedule[i]
        mask = syn.mask[idx]
        if learn_labels:
            def step(p, x, z, mask=mask):
                return grad_fn(p, x, mask, syn.labels_of(z))

            g, pullback = vjp(step, thetas[i], x_all[idx], z_all[idx])
            h_lam, d_x, d_z = pullback(lam)
            d_labels.index_add_(0, idx, -lrs[i] * d_z)
        else:
            labels = syn.labels_of(z_all[idx])

            def step(p, x, mask=mask, labels=labels):
                return grad_fn(p, x, mask, labels)

            g, pullback = vjp(step, thetas[i], x_all[idx])
            h_lam, d_x = pullback(lam)
        with torch.no_grad():
            d_lr[syn.lr_index(i)] += -sum((lam[n] * g[n]).sum() for n in lam) * lr_slope[i]
            d_embeds.index_add_(0, idx, -lrs[i] * d_x)
            if hessian:
                lam = {n: lam[n] - lrs[i] * h_lam[n] for n in lam}
    return MetaGradient(float(loss), d_embeds, d_labels, d_lr, final)
