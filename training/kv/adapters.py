"""Learned projections of a teacher's keys or values into the student's head shape.

Caches are compared per *key/value* head (grouped-query attention shares one K/V head among several
query heads, so ``num_key_value_heads`` is what a cache has). A teacher cache ``(B, L, H_t, d_t)``
becomes ``(B, L, H_s, d_s)`` in two steps: a head-dimension map ``d_t -> d_s`` shared by the heads,
then a head mix ``H_t -> H_s``:

- ``group``: H_t a multiple of H_s, each student head starts as the mean of its group of H_t / H_s
  teacher heads; or H_s a multiple of H_t, each teacher head is expanded to H_s / H_t student heads (as
  GQA repeats K/V heads); the mix stays learnable.
- ``dense``: any head counts, a learned H_s x H_t mix (initialised as ``group`` would where it can).
- ``auto``: ``group`` where the counts divide, else ``dense``.

Where the shapes already match (a student derived from its teacher) the adapter is the identity and
has no parameters, unless ``learn_identity``.
"""

from __future__ import annotations

import torch
from torch import nn

from training.kv.errors import KVSetupError

HEAD_MIXING = ("auto", "group", "dense")


class AdapterShapeError(KVSetupError):
    """A teacher's K/V heads cannot be bridged to the student's with the chosen head mixing."""


def _divides(a: int, b: int) -> bool:
    return a % b == 0 or b % a == 0


def _group_init(h_s: int, h_t: int) -> torch.Tensor:
    mix = torch.zeros(h_s, h_t)
    if h_t >= h_s and h_t % h_s == 0:
        g = h_t // h_s
        for s in range(h_s):
            mix[s, s * g : (s + 1) * g] = 1.0 / g
    elif h_s % h_t == 0:
        g = h_s // h_t
        for s in range(h_s):
            mix[s, s // g] = 1.0
    else:  # dense without a group structure: spread each student head over the nearest teacher heads
        for s in range(h_s):
            mix[s, min(h_t - 1, s * h_t // h_s)] = 1.0
    return mix


class KVAdapter(nn.Module):
    """``(B, L, H_t, d_t) -> (B, L, H_s, d_s)``; see the module docstring."""

    def __init__(
        self,
        teacher_heads: int,
        teacher_dim: int,
        student_heads: int,
        student_dim: int,
        head_mixing: str = "auto",
        learn_identity: bool = False,
    ) -> None:
        super().__init__()
        if head_mixing not in HEAD_MIXING:
            raise ValueError(f"head_mixing must be one of {HEAD_MIXING}, got {head_mixing!r}")
        if head_mixing == "group" and not _divides(teacher_heads, student_heads):
            raise AdapterShapeError(
                f"the teacher has {teacher_heads} key/value heads and the student {student_heads}: neither divides the "
                "other, so heads cannot be grouped or expanded; use head_mixing 'dense' (or 'auto')"
            )
        self.shapes = (teacher_heads, teacher_dim, student_heads, student_dim)
        self.identity = (teacher_heads, teacher_dim) == (student_heads, student_dim) and not learn_identity
        if self.identity:
            return
        self.dim = nn.Linear(teacher_dim, student_dim, bias=False)
        with torch.no_grad():
            self.dim.weight.zero_()
            n = min(teacher_dim, student_dim)
            self.dim.weight[:n, :n] = torch.eye(n)
            if teacher_dim != student_dim:  # a rectangular identity loses or pads dims: start from a scaled random map
                nn.init.orthogonal_(self.dim.weight)
        self.mix = nn.Parameter(_group_init(student_heads, teacher_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        x = self.dim(x.to(self.dim.weight.dtype))  # (B, L, H_t, d_s)
        return torch.einsum("st,bltd->blsd", self.mix.to(x.dtype), x)  # (B, L, H_s, d_s)

    def extra_repr(self) -> str:
        h_t, d_t, h_s, d_s = self.shapes
        return f"teacher=({h_t}, {d_t}), student=({h_s}, {d_s}), identity={self.identity}"
