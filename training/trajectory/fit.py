"""Training a fresh student on a small set, the way every row of the evaluation does it: full-batch
plain SGD for ``steps`` steps from a seeded initialisation, validation and test accuracy recorded at a
few checkpoints, so that the learning rate and the stopping point can be chosen on validation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from training.trajectory.experts import ExpertSetup, accuracy
from training.trajectory.losses import soft_cross_entropy

# Students of the evaluation and of the distillation's own checks start from seeds far from the experts'
# (0, 1, ... by default): a synthetic set is trained to move the experts' very initialisations, and a
# student that started there would be favoured over the baselines'.
EVAL_SEED = 1_000_000
CHECK_SEED = 2_000_000


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


def nan_low(value: float) -> float:
    """For max(): a NaN score (a diverged student) ranks below every real one."""
    return -math.inf if math.isnan(value) else value


def fit(setup: ExpertSetup, small: SmallSet, init_seed: int, lr: float, steps: int, with_test: bool = True) -> list[FitResult]:
    """Train a fresh student (initialised from ``init_seed``) on ``small``; one result per checkpoint
    (test accuracy NaN when ``with_test`` is off: the distillation's own checks read validation only)."""
    model = setup.student(init_seed)
    params = [p for p in model.parameters() if p.requires_grad]
    x, mask, y = small.embeds.detach(), small.mask, small.targets.detach()
    marks, out = set(checkpoints(steps)), []
    for step in range(1, steps + 1):
        loss = soft_cross_entropy(model(x, mask), y)
        if not torch.isfinite(loss):
            out.append(FitResult(lr, step, float("nan"), float("nan")))
            break
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        if step in marks:
            test = accuracy(model, setup.embedder, setup.encoded["test"]) if with_test else float("nan")
            out.append(FitResult(lr, step, accuracy(model, setup.embedder, setup.encoded["val"]), test))
    return out


def best_fit(setup: ExpertSetup, small: SmallSet, init_seed: int, lrs: list[float], steps: int) -> FitResult:
    """The checkpoint best on validation over the learning-rate grid (plus, for a synthetic set, the
    mean of its own learnt rates: they are part of what was distilled, as in MTT's evaluation)."""
    grid = sorted(set(lrs) | ({sum(small.learnt_lrs) / len(small.learnt_lrs)} if small.learnt_lrs else set()))
    results = [r for lr in grid for r in fit(setup, small, init_seed, lr, steps)]
    if not results:
        return FitResult(float("nan"), 0, float("nan"), float("nan"))
    return max(results, key=lambda r: (nan_low(r.val), -r.step))
