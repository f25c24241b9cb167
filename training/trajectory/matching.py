"""Subset matching: which of the trained parameters are unrolled and matched (the rest are held at the
start checkpoint). ``all``, or ``STRATEGY:F``: tensors are taken whole until a fraction F of the
trained parameters' elements is reached (at least one tensor), ordered by the strategy:

- ``random``: a seeded random order.
- ``importance``: how far training moves a tensor, the experts' mean of ‖θ*_E − θ*_0‖² / numel
  (final against initial checkpoint), largest first: the parameters that carry what was learnt.
- ``diversity``: round-robin over the network's parts (encoder layer k, or the module a tensor belongs
  to), each part's most-moved tensor first: the subset spans the depth instead of piling on one layer.
- ``hybrid``: half of the budget by importance, the other half by diversity among the rest.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

import torch

LAYER = re.compile(r"\.layer\.(\d+)\.")  # encoder layer k in a parameter name


def part_of(name: str) -> str:
    m = LAYER.search(name)
    return f"layer {m.group(1)}" if m else name.split(".")[0]


def movement(initial: list[Mapping[str, torch.Tensor]], final: list[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Per tensor: the mean over experts of ‖final − initial‖² / numel."""
    names = list(initial[0])
    return {n: sum(float(((f[n] - i[n]) ** 2).mean()) for i, f in zip(initial, final)) / len(initial) for n in names}


def _take(order: list[str], sizes: Mapping[str, int], budget: float, chosen: list[str]) -> None:
    for n in order:
        if budget <= 0 and chosen:
            return
        if n not in chosen:
            chosen.append(n)
            budget -= sizes[n]


def _diverse(names: list[str], moved: Mapping[str, float]) -> list[str]:
    parts: dict[str, list[str]] = {}
    for n in sorted(names, key=lambda n: -moved[n]):
        parts.setdefault(part_of(n), []).append(n)
    order, queues = [], list(parts.values())
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def select_matched(spec: str, sizes: Mapping[str, int], moved: Mapping[str, float], seed: int = 0) -> list[str]:
    """The matched tensor names, in the model's order (``sizes`` is ordered like the model)."""
    names = list(sizes)
    if spec == "all":
        return names
    strategy, _, fraction = spec.partition(":")
    budget = float(fraction) * sum(sizes.values())
    chosen: list[str] = []
    if strategy == "random":
        order = list(names)
        random.Random(seed).shuffle(order)
        _take(order, sizes, budget, chosen)
    elif strategy == "importance":
        _take(sorted(names, key=lambda n: -moved[n]), sizes, budget, chosen)
    elif strategy == "diversity":
        _take(_diverse(names, moved), sizes, budget, chosen)
    elif strategy == "hybrid":
        _take(sorted(names, key=lambda n: -moved[n]), sizes, budget / 2, chosen)
        used = sum(sizes[n] for n in chosen)
        _take([n for n in _diverse(names, moved) if n not in chosen], sizes, budget - used, chosen)
    else:
        raise ValueError(f"unknown matching strategy {strategy!r}")
    keep = set(chosen)
    return [n for n in names if n in keep]
