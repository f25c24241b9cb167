"""Losses of trajectory matching: pure functions of tensors.

- ``parameter_matching_loss``: MTT's (Cazenavette et al. 2022, eq. 2) normalised distance between where
  a student trained on the synthetic set lands and where the expert went,
  ``‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²`` summed over the matched tensors. Below 1 means the N
  synthetic steps got closer to the expert's target than its own starting point was.
- ``soft_cross_entropy``: ``−Σ_c y_c log softmax(z)_c`` averaged over the batch, for hard (one-hot),
  soft (a distribution) or unrestricted (any vector) targets alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def squared_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """‖a − b‖² over the tensors named in ``b`` (a scalar)."""
    return sum(((a[n] - b[n]) ** 2).sum() for n in b)  # type: ignore[return-value]


def parameter_matching_loss(student: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``‖student − target‖² / ‖start − target‖²`` over the tensors named in ``target``."""
    return squared_distance(student, target) / squared_distance(start, target)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, C) logits and (B, C) targets -> the mean over the batch of ``−Σ_c y_c log p_c``."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()
