"""Text classification data for dataset distillation: generic JSONL (a text field and a label field),
a stable train / validation / test split, a fingerprint for the synthetic set's card, and the shipped
real benchmarks built from the clinical items (question -> source dataset, six classes; question ->
MMLU subject, for the MMLU items with an ability path).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, StringConstraints, create_model

from data.records import (
    DataError,
    atomic_write_json,
    read_items,
    read_jsonl,
    write_jsonl,
)
from training.trajectory.errors import TrajectoryDataError

SPLITS = ("train", "val", "test")
BENCHMARKS = ("clinical-source", "clinical-subject")
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


@dataclass
class TextDataset:
    """Texts and their class indices into ``names`` (sorted class names)."""

    texts: list[str]
    labels: list[int]
    names: list[str]
    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        return TextDataset([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.names, self.source)

    def by_class(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.names]
        for i, y in enumerate(self.labels):
            out[y].append(i)
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for text, y in zip(self.texts, self.labels):
            h.update(f"{self.names[y]}\t{text}\n".encode())
        return h.hexdigest()[:16]


def read_text_jsonl(path: str | Path, text_field: str = "text", label_field: str = "label", names: Sequence[str] | None = None) -> TextDataset:
    """Rows of ``path``; labels are strings or integers (kept as their string). With ``names`` (the
    training classes), a label outside them is an error naming the line."""
    row = create_model("TextRow", __config__=ConfigDict(extra="allow"), **{text_field: (Text, ...), label_field: (str | int, ...)})  # type: ignore[call-overload]
    try:
        rows = read_jsonl(path, row)
    except DataError as e:
        raise TrajectoryDataError(str(e)) from None
    labels = [str(getattr(r, label_field)) for r in rows]
    if not rows:
        raise TrajectoryDataError(f"{path}: no rows")
    classes = list(names) if names is not None else sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    unknown = next((i for i, label in enumerate(labels) if label not in index), None)
    if unknown is not None:
        raise TrajectoryDataError(f"{path}:{_line_of(path, unknown)}: label {labels[unknown]!r} is not one of the training classes ({', '.join(classes)})")
    if names is None and len(classes) < 2:
        raise TrajectoryDataError(f"{path}: one class only ({classes[0]!r}); classification needs two or more")
    return TextDataset([getattr(r, text_field) for r in rows], [index[y] for y in labels], classes, str(path), dict(Counter(labels)))


def _line_of(path: str | Path, row: int) -> int:
    """The file line of row ``row`` (read_jsonl skips blank lines, so they are counted again here)."""
    numbers = [i for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]
    return numbers[row]


def _unit(salt: bytes, text: str) -> float:
    return int.from_bytes(hashlib.sha256(salt + text.encode()).digest()[:8], "big") / 2**64


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    """train, val or test from salted hashes of the text alone (the same split on every run). The test
    and the validation draws use different salts, so a file already cut by the test draw (as
    ``benchmark`` writes) still gives up ``val_fraction`` of its rows to validation."""
    if _unit(b"atkd-trajectory\0", text) < test_fraction:
        return "test"
    return "val" if _unit(b"atkd-trajectory-val\0", text) < val_fraction else "train"


def split(ds: TextDataset, val_fraction: float = 0.1, test_fraction: float = 0.0) -> dict[str, TextDataset]:
    """The dataset's rows by split (``test`` is empty when ``test_fraction`` is 0: a test file is given)."""
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, text in enumerate(ds.texts):
        parts[split_of(text, val_fraction, test_fraction)].append(i)
    return {s: ds.subset(idx) for s, idx in parts.items()}


def benchmark_rows(name: str, files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """``clinical-source``: question -> the dataset its item came from (the id's prefix: medmcqa,
    medqa, medxpertqa, mmlu, mmlu_pro, pubmedqa); ``clinical-subject``: question -> MMLU subject (the
    last step of the ability path) for the MMLU items that have one."""
    if name not in BENCHMARKS:
        raise TrajectoryDataError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {name!r}")
    try:
        items = read_items(list(files), allow_empty=False)
    except DataError as e:
        raise TrajectoryDataError(str(e)) from None
    if name == "clinical-source":
        rows = [{"text": it.question, "label": it.id.rsplit("-", 1)[0], "id": it.id} for it in items]
    else:
        rows = [{"text": it.question, "label": it.ability_path[-1], "id": it.id} for it in items if it.id.startswith("mmlu-") and it.ability_path]
    if not rows:
        raise TrajectoryDataError(f"{', '.join(map(str, files))}: no item fits the {name} benchmark (it needs MMLU items with an ability path)")
    return rows


def write_benchmark(name: str, files: Sequence[str | Path], out: str | Path, test_fraction: float = 0.2) -> dict[str, Path]:
    """``<out>/train.jsonl`` and ``<out>/test.jsonl`` of a benchmark (a hash split of the question text),
    written atomically; returns the paths."""
    rows = benchmark_rows(name, files)
    out = Path(out)
    parts = {"train": [r for r in rows if split_of(r["text"], 0.0, test_fraction) != "test"], "test": [r for r in rows if split_of(r["text"], 0.0, test_fraction) == "test"]}
    paths = {s: write_jsonl(out / f"{s}.jsonl", r) for s, r in parts.items()}
    card = {"benchmark": name, "sources": [str(f) for f in files], "test_fraction": test_fraction, "rows": {s: len(r) for s, r in parts.items()},
            "classes": dict(sorted(Counter(r["label"] for r in rows).items()))}
    atomic_write_json(out / "benchmark.json", card)
    return paths
