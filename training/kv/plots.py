"""Pictures of a KV distillation run, written beside the student (matplotlib, Agg backend, PNG).

- ``kv_routing.png``: each teacher's mean routing weight per step over training.
- ``kv_routing_by_tag.png``: the mean weight of each teacher on each item tag (domain or task).
- ``kv_layer_map.png``: for each teacher, which teacher layers feed which student layer, and how much.
- ``kv_alignment.png``: the token alignment matrix A of one example per teacher, tokens on the axes.
Each writer returns the path written, or None when there is nothing to draw; files are written to a
temporary name and renamed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_routing(history: Sequence[dict[str, float]], path: Path, window: int = 1) -> Path | None:
    """Routing weight per teacher over the objective's calls (micro-batches), smoothed over ``window`` calls."""
    if not history:
        return None
    plt = _pyplot()
    names = list(history[0])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in names:
        values = np.array([h.get(name, 0.0) for h in history])
        if window > 1 and len(values) >= window:
            values = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(values)), values, label=name)
    ax.set_xlabel("micro-batch")
    ax.set_ylabel("mean routing weight")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Routing weight per teacher over training")
    ax.legend(loc="best", fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def mean_by_tag(tag_history: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Average the per-batch ``{tag: {teacher: weight}}`` records over training."""
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for record in tag_history:
        for tag, weights in record.items():
            counts[tag] = counts.get(tag, 0) + 1
            for name, w in weights.items():
                sums.setdefault(tag, {}).setdefault(name, 0.0)
                sums[tag][name] += w
    return {tag: {n: v / counts[tag] for n, v in weights.items()} for tag, weights in sums.items()}


def plot_routing_by_tag(tag_history: Sequence[dict[str, dict[str, float]]], path: Path) -> Path | None:
    means = mean_by_tag(tag_history)
    if not means:
        return None
    plt = _pyplot()
    tags = sorted(means)
    names = list(next(iter(means.values())))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(tags) + 2), 3.5))
    x = np.arange(len(tags))
    for k, name in enumerate(names):
        ax.bar(x + k * width - 0.4 + width / 2, [means[t].get(name, 0.0) for t in tags], width, label=name)
    ax.set_xticks(x, tags, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean routing weight")
    ax.set_title("Routing weight per teacher and item tag")
    ax.legend(fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_layer_maps(maps: Sequence[dict[int, list[tuple[int, float]]]], names: Sequence[str], student_layers: int,
                    teacher_layers: Sequence[int], path: Path) -> Path | None:
    if not maps:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2), squeeze=False)
    for ax, mapping, name, n_t in zip(axes[0], maps, names, teacher_layers):
        grid = np.zeros((student_layers, n_t))
        for s, sources in mapping.items():
            for t, w in sources:
                grid[s, t] += w
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
        ax.set_xlabel(f"{name} layer")
        ax.set_ylabel("student layer")
        ax.set_title(name, fontsize=9)
    fig.suptitle("Layer map (weight of each teacher layer in a student layer's target)", fontsize=9)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def alignment_panels(student_ids: Sequence[int], student_tokenizer: Any, teachers: dict[int, tuple]) -> list[dict[str, Any]]:
    """The panels of ``plot_alignments`` from token ids: ``teachers`` maps i to (name, tokenizer, ids, A)."""

    def tokens(tokenizer, ids):
        return tokenizer.convert_ids_to_tokens(list(ids)) if tokenizer is not None else [str(i) for i in ids]

    student = tokens(student_tokenizer, student_ids)
    return [{"name": name, "student_tokens": student, "teacher_tokens": tokens(tok, ids), "matrix": matrix}
            for name, tok, ids, matrix in teachers.values()]


def plot_alignments(examples: Sequence[dict[str, Any]], path: Path, max_tokens: int = 48) -> Path | None:
    """One panel per teacher: ``{"name", "student_tokens", "teacher_tokens", "matrix" (L_s, L_t)}``."""
    if not examples:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(examples), figsize=(6 * len(examples), 6), squeeze=False)
    for ax, ex in zip(axes[0], examples):
        matrix = np.asarray(ex["matrix"])[:max_tokens, :max_tokens]
        ax.imshow(matrix, cmap="Greens", vmin=0, vmax=1, aspect="auto")
        ax.set_yticks(range(matrix.shape[0]), [repr(t)[1:-1] for t in ex["student_tokens"][: matrix.shape[0]]], fontsize=5)
        ax.set_xticks(range(matrix.shape[1]), [repr(t)[1:-1] for t in ex["teacher_tokens"][: matrix.shape[1]]], fontsize=5,
                      rotation=90)
        ax.set_xlabel(f"{ex['name']} tokens")
        ax.set_ylabel("student tokens")
        ax.set_title(f"alignment A, student x {ex['name']} (first {max_tokens} tokens)", fontsize=9)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
