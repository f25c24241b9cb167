"""Coreset baselines: real subsets of ``per_class`` rows per class, chosen in a feature space (the
sentence encoder's embeddings), per class as DiLM does.

- ``k_center``: greedy farthest-first (Sener & Savarese 2018): start from the row nearest the class
  mean, then repeatedly add the row farthest from everything chosen (Euclidean distance).
- ``herding``: greedy mean matching (Welling 2009; DiLM's ``herding.py``): add the row that brings the
  running sum of chosen features closest to (i + 1) × the class mean.
- ``random_subset``: seeded random rows.
"""

from __future__ import annotations

import random

import torch


def k_center(features: torch.Tensor, k: int) -> list[int]:
    """Indices of ``k`` rows of ``features`` (n, D) by greedy farthest-first, from the row nearest the mean."""
    n = features.shape[0]
    k = min(k, n)
    first = int(torch.cdist(features.mean(0, keepdim=True), features)[0].argmin())
    chosen = [first]
    nearest = torch.cdist(features[first : first + 1], features)[0]  # distance to the chosen set
    while len(chosen) < k:
        nearest[chosen] = -1.0
        j = int(nearest.argmax())
        chosen.append(j)
        nearest = torch.minimum(nearest, torch.cdist(features[j : j + 1], features)[0])
    return chosen


def herding(features: torch.Tensor, k: int) -> list[int]:
    """Indices of ``k`` rows whose running mean tracks the class mean most closely (greedy)."""
    n = features.shape[0]
    k = min(k, n)
    mean = features.mean(0)
    total = torch.zeros_like(mean)
    chosen: list[int] = []
    free = torch.ones(n, dtype=torch.bool)
    for i in range(k):
        gap = ((total + features) - (i + 1) * mean).norm(dim=1)
        gap[~free] = float("inf")
        j = int(gap.argmin())
        chosen.append(j)
        free[j] = False
        total = total + features[j]
    return chosen


def per_class(by_class: list[list[int]], features: torch.Tensor, k: int, method: str, seed: int = 0) -> list[int]:
    """Row indices (into ``features``) of ``k`` rows per class by ``method`` (random, kcenter, herding)."""
    out: list[int] = []
    rng = random.Random(seed)
    for rows in by_class:
        if method == "random":
            out += rng.sample(rows, min(k, len(rows)))
            continue
        pick = k_center if method == "kcenter" else herding
        out += [rows[i] for i in pick(features[rows], k)]
    return out
