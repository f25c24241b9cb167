"""Alignment of a teacher's tokens, layers and rotary positions to the student's (pure functions).

**Tokens.** Teacher and student see the same content rendered each its own way (its own chat template,
its own special tokens), so token ``i`` of one has no fixed partner in the other. Alignment works on
*content characters*: each rendering is cut into segments that copy a message's content verbatim
(``render_segments``, which finds them by rendering once more with markers in place of the contents); a token's character offsets (from a fast tokenizer's ``offset_mapping``) are
mapped into content coordinates (``content_spans``), and ``overlap_matrix`` counts, for every student
token and teacher token, the characters they share. Rows normalised, that is the alignment matrix A
(student tokens x teacher tokens). Decoded strings are never compared: byte-level BPE splits one
multi-byte character into pieces that decode to nothing printable, and every piece keeps its
character's span.

Tokens without content characters (BOS, ``<|im_start|>``, role names, ``[CLS]``) get no span and an
empty row: they are left out of the KV loss, which is the explicit handling TRL issue 4393 asks for.
A student token that has characters but overlaps no teacher token (a run of spaces that a WordPiece
teacher drops) takes its whole mass from the nearest teacher token, the preceding one on a tie, so
every student token with characters gets mass.

**Layers.** ``layer_map`` sends teacher layers to student layers (ratio, uniform, skip or explicit
pairs); several teacher layers feeding one student layer are averaged with interpolation weights.

**Rotary positions.** Keys are compared before rotary embedding by default (the ``k_proj`` output),
which makes different RoPE bases and lengths irrelevant. ``apply_rotary`` / ``derotate`` convert
between cached (post-RoPE) and pre-RoPE keys, and ``ntk_scaled_base`` is the NTK-aware base scaling
for the post-RoPE option.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

Span = tuple[int, int]  # [start, end) in content characters

# --------------------------------------------------------------------------------------------- tokens


def content_marker(k: int) -> str:
    """A stand-in for message k's content: private-use characters no template or text contains."""
    return f"\ue000{k}\ue001"


def render_segments(text: str, contents: Sequence[str], marked: str) -> list[tuple[int, int, int]]:
    """Where each message's content sits in ``text``: ``[(start, offset, length)]`` for non-empty contents.

    ``marked`` is the same rendering with each content replaced by ``content_marker(k)``: the pieces
    between markers are the template's own text, so a short content ("a", "user") is never mistaken for
    template text that happens to contain it. ``start`` is the position in ``text``; ``offset`` the
    position of the same character in the concatenated contents. Raises ValueError if the template does
    not copy the contents verbatim (it strips, escapes or reorders them): such a rendering cannot be
    aligned on characters.
    """
    pieces, cursor, order = [], 0, []
    while True:
        at = marked.find("\ue000", cursor)
        if at < 0:
            break
        end = marked.find("\ue001", at)
        if end < 0:
            raise ValueError("a content marker is cut in the marked rendering")
        pieces.append(marked[cursor:at])
        order.append(int(marked[at + 1 : end]))
        cursor = end + 1
    pieces.append(marked[cursor:])
    if order != list(range(len(contents))):
        raise ValueError(
            f"the template renders the messages as {order}, not each once in order: their tokens cannot be aligned "
            "on characters"
        )
    segments, position, offset = [], 0, 0
    for k, content in enumerate(contents):
        position += len(pieces[k])
        if content:
            segments.append((position, offset, len(content)))
        position += len(content)
        offset += len(content)
    rebuilt = "".join(p + c for p, c in zip(pieces, [*contents, ""]))
    if rebuilt != text:
        raise ValueError(
            "the chat template does not copy message contents verbatim (it strips or rewrites them), so their tokens "
            "cannot be aligned on characters"
        )
    return segments


def content_spans(offsets: Sequence[tuple[int, int]], segments: Sequence[tuple[int, int, int]]) -> list[Span | None]:
    """Each token's span in content coordinates, or None when it covers no content character.

    ``offsets`` are the tokenizer's ``(start, end)`` into the rendered text (``(0, 0)`` for added
    special tokens); ``segments`` come from ``render_segments`` as ``(text_start, content_offset,
    length)``. A token that straddles a segment boundary gets the hull of its content parts.
    """
    spans: list[Span | None] = []
    for start, end in offsets:
        lo, hi = None, None
        if end > start:
            for seg_start, seg_offset, length in segments:
                a, b = max(start, seg_start), min(end, seg_start + length)
                if a < b:
                    a, b = a - seg_start + seg_offset, b - seg_start + seg_offset
                    lo = a if lo is None else min(lo, a)
                    hi = b if hi is None else max(hi, b)
        spans.append(None if lo is None else (lo, hi))
    return spans


def overlap_matrix(student: Sequence[Span | None], teacher: Sequence[Span | None]) -> np.ndarray:
    """Characters shared by student token i and teacher token j, ``(L_s, L_t)`` float32.

    A student token with a span that meets no teacher span gets weight 1 on the nearest teacher token
    (by character gap; the preceding one on a tie). Rows of tokens without a span stay zero.
    """
    out = np.zeros((len(student), len(teacher)), dtype=np.float32)
    t_idx = [j for j, s in enumerate(teacher) if s is not None]
    if not t_idx:
        return out
    t_start = np.array([teacher[j][0] for j in t_idx])  # type: ignore[index]
    t_end = np.array([teacher[j][1] for j in t_idx])  # type: ignore[index]
    cols = np.array(t_idx)
    for i, span in enumerate(student):
        if span is None:
            continue
        shared = np.minimum(span[1], t_end) - np.maximum(span[0], t_start)
        hit = shared > 0
        if hit.any():
            out[i, cols[hit]] = shared[hit]
            continue
        # Gap to each teacher span: before it (t_start - end) or after it (start - t_end).
        gap = np.where(t_end <= span[0], span[0] - t_end, t_start - span[1]).astype(np.float64)
        gap = gap + np.where(t_end <= span[0], 0.0, 0.5)  # a tie goes to the preceding token
        out[i, cols[int(np.argmin(gap))]] = 1.0
    return out


def row_normalize(overlap: torch.Tensor) -> torch.Tensor:
    """Alignment matrix A from an overlap matrix ``(..., L_s, L_t)``: rows sum to 1 where they have mass."""
    total = overlap.sum(-1, keepdim=True)
    return torch.where(total > 0, overlap / total.clamp(min=1e-12), torch.zeros_like(overlap))


def alignment_matrix(student: Sequence[Span | None], teacher: Sequence[Span | None]) -> torch.Tensor:
    """Row-normalised ``overlap_matrix``: A[i, j] is the share of student token i that teacher token j holds."""
    return row_normalize(torch.from_numpy(overlap_matrix(student, teacher)))


# --------------------------------------------------------------------------------------------- layers

LAYER_MAP_KINDS = ("ratio", "uniform", "skip")


def layer_map(spec: str, student_layers: int, teacher_layers: int) -> dict[int, list[tuple[int, float]]]:
    """``{student_layer: [(teacher_layer, weight), ...]}`` (0-based, weights summing to 1).

    - ``ratio``: every teacher layer l_t (1-based) goes to student layer ``round(l_t * L_s / L_t)``
      (at least 1); a student layer fed by several teacher layers averages them.
    - ``uniform``: student layer s takes the teacher at the same relative depth, ``(s + 1) * L_t / L_s``,
      interpolated linearly between the two teacher layers around it.
    - ``skip``: student layer s takes teacher layer ``round((s + 1) * L_t / L_s) - 1`` alone.
    - explicit pairs ``"s:t,s:t"`` (0-based; a student layer may appear more than once: averaged).
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got student {student_layers}, teacher {teacher_layers}")
    kind = spec.strip()
    mapping: dict[int, list[tuple[int, float]]] = {}
    if kind == "ratio":
        for t in range(1, teacher_layers + 1):
            s = max(1, round(t * student_layers / teacher_layers))
            mapping.setdefault(s - 1, []).append((t - 1, 1.0))
    elif kind == "uniform":
        for s in range(student_layers):
            # Fractional 0-based teacher layer; a student deeper than its teacher starts at teacher layer 0.
            pos = max(0.0, (s + 1) * teacher_layers / student_layers - 1)
            lo = math.floor(pos + 1e-9)
            frac = pos - lo
            if frac < 1e-9 or lo + 1 >= teacher_layers:
                mapping[s] = [(min(lo, teacher_layers - 1), 1.0)]
            else:
                mapping[s] = [(lo, 1.0 - frac), (lo + 1, frac)]
    elif kind == "skip":
        for s in range(student_layers):
            mapping[s] = [(max(0, round((s + 1) * teacher_layers / student_layers) - 1), 1.0)]
    else:
        for part in filter(None, (p.strip() for p in kind.split(","))):
            s, sep, t = part.partition(":")
            if not sep or not s.strip().isdigit() or not t.strip().isdigit():
                raise ValueError(
                    f"layer map {spec!r}: {part!r} is not 'student:teacher'; use {', '.join(LAYER_MAP_KINDS)} or "
                    "pairs such as '0:1,2:5'"
                )
            s_i, t_i = int(s), int(t)
            if not 0 <= s_i < student_layers:
                raise ValueError(f"layer map {spec!r}: student layer {s_i} is outside 0..{student_layers - 1}")
            if not 0 <= t_i < teacher_layers:
                raise ValueError(f"layer map {spec!r}: teacher layer {t_i} is outside 0..{teacher_layers - 1}")
            mapping.setdefault(s_i, []).append((t_i, 1.0))
        if not mapping:
            raise ValueError(f"layer map {spec!r} maps no layers")
    # Equal shares where several teacher layers feed one student layer with weight 1 each.
    out = {}
    for s, sources in sorted(mapping.items()):
        total = sum(w for _, w in sources)
        out[s] = [(t, w / total) for t, w in sources]
    return out


def teacher_layers_used(mapping: dict[int, list[tuple[int, float]]]) -> list[int]:
    """The teacher layers a map reads (the only ones captured or stored)."""
    return sorted({t for sources in mapping.values() for t, _ in sources})


# ------------------------------------------------------------------------------------ rotary positions


def rope_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """Rotary inverse frequencies ``base ** (-2i / d)``, as Llama's default rotary embedding."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def ntk_scaled_base(base: float, scale: float, head_dim: int) -> float:
    """NTK-aware base for a context ``scale`` times longer: ``base * scale ** (d / (d - 2))``."""
    if scale <= 0 or head_dim <= 2:
        raise ValueError(f"scale must be > 0 and head_dim > 2, got {scale}, {head_dim}")
    return base * scale ** (head_dim / (head_dim - 2))


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``(..., L, d)`` for integer positions ``(..., L)`` in the rotate-half layout."""
    angles = positions.to(inv_freq.dtype)[..., None] * inv_freq  # (..., L, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., L, d)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, L, d)`` (or any ``(..., L, d)``) by its positions' angles."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def derotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo ``apply_rotary``: cached keys back to the pre-RoPE keys (rotation by minus the angle)."""
    return apply_rotary(x, cos, -sin)
