"""Training a fresh student on a small set, the way every row of the evaluation does it: full-batch
plain SGD for ``steps`` steps from a seeded initialisation, validation and test accuracy recorded at a
few checkpoints, so that the learning rate and the stopping point can be chosen on validation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from training.trajectory.experts import ExpertSetup, accuracy
from training.trajectory.losses import soft_cross_entropy


@dataclass
class SmallSet:
    """A training set in embedding space: rows, mask and targets (one-hot, soft or unrestricted)."""

    name: str
    embeds: torch.Tensor  # (n, L, H)
    mask: torch.Tensor  # (n, L)
    targets: torch.Tensor  # (n, C)
    learnt_lrs: list[float] | None = None  # a synthetic set's own inner learning rates


@dataclass
class FitResult:
    lr: float
    step: int
    val: float
    test: float


def checkpoints(steps: int) -> list[int]:
    return sorted({max(1, steps // 8), max(1, steps // 4), max(1, steps // 2), steps})


def fit(setup: ExpertSetup, small: SmallSet, seed: int, lr: float, steps: int, lr_schedule: list[float] | None = None) -> list[FitResult]:
    """Train a fresh student (init ``seed``) on ``small``; one result per checkpoint. With
    ``lr_schedule`` (a synthetic set's per-step rates) step i uses ``lr * schedule[i] / schedule[0]``
    while the schedule lasts, then its last value."""
    model = setup.student(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    x, mask, y = small.embeds.detach(), small.mask, small.targets.detach()
    marks, out = set(checkpoints(steps)), []
    for step in range(1, steps + 1):
        rate = lr if not lr_schedule else lr * lr_schedule[min(step - 1, len(lr_schedule) - 1)] / lr_schedule[0]
        loss = soft_cross_entropy(model(x, mask), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= rate * g
        if not torch.isfinite(loss):
            out.append(FitResult(lr, step, float("nan"), float("nan")))
            break
        if step in marks:
            out.append(FitResult(lr, step, accuracy(model, setup.embedder, setup.encoded["val"]), accuracy(model, setup.embedder, setup.encoded["test"])))
    return out


def best_fit(setup: ExpertSetup, small: SmallSet, seed: int, lrs: list[float], steps: int) -> FitResult:
    """The checkpoint best on validation over the learning-rate grid (and the set's own learnt rate)."""
    grid = sorted(set(lrs) | ({sum(small.learnt_lrs) / len(small.learnt_lrs)} if small.learnt_lrs else set()))
    results = [r for lr in grid for r in fit(setup, small, seed, lr, steps) if not math.isnan(r.val)]
    if not results:
        return FitResult(float("nan"), 0, float("nan"), float("nan"))
    return max(results, key=lambda r: (r.val, -r.step))
