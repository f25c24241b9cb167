"""Sentences and pairs for encoder distillation, from MCQ files (a domain's pool) and parallel TSV files.

- sentences: every question and option text, unique, in first-seen order;
- training pairs: a ``--pairs`` TSV (source TAB target: a real parallel file, or question TAB paraphrase)
  when the user has one, else in-domain pairs (question ↔ key option);
- held-out: items are split by a hash of their id, so no held-out question is trained on; the dev
  pairs are each held-out question against every option of its item and against another held-out
  question, which spreads the teacher's cosines over the whole range (what fidelity ranks).

Nothing here is cross-lingual: a parallel file is only read as pairs of texts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data.records import MCQItem, read_items
from training.embedding.errors import EmbeddingDataError


@dataclass
class EncoderData:
    """What the stages train on and the evaluation reads."""

    train_sentences: list[str]
    train_pairs: list[tuple[str, str]]
    dev_pairs: list[tuple[str, str]]
    dev_items: list[MCQItem] = field(default_factory=list)
    pairs_source: str = "in-domain"

    def summary(self) -> dict[str, object]:
        return {"train sentences": len(self.train_sentences), "train pairs": len(self.train_pairs), "pairs from": self.pairs_source, "dev pairs": len(self.dev_pairs), "dev items": len(self.dev_items)}


def read_mcq_files(paths: Sequence[str | Path]) -> list[MCQItem]:
    """MCQ JSONL files (the records' schema); a bad line raises EmbeddingDataError naming file:line."""
    try:
        return read_items(paths, allow_empty=False)
    except ValueError as e:
        raise EmbeddingDataError(str(e)) from None


def read_pairs_tsv(path: str | Path) -> list[tuple[str, str]]:
    """A parallel file: one ``source<TAB>target`` per line, both non-empty; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingDataError(f"{path}: file not found")
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 2:
                raise EmbeddingDataError(f"{path}:{lineno}: expected 'source<TAB>target' (2 columns), got {len(cols)}")
            src, tgt = (c.strip() for c in cols)
            if not src or not tgt:
                raise EmbeddingDataError(f"{path}:{lineno}: empty {'source' if not src else 'target'} sentence")
            pairs.append((src, tgt))
    if not pairs:
        raise EmbeddingDataError(f"{path}: no pairs in the file")
    return pairs


def read_sentences(path: str | Path) -> list[str]:
    """A plain text file of sentences, one per line; an empty line inside the file is an error."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingDataError(f"{path}: file not found")
    lines = [ln.rstrip("\r") for ln in path.read_text(encoding="utf-8").split("\n")]  # not splitlines(): \f, \x85 ... are not line ends
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise EmbeddingDataError(f"{path}:{lineno}: empty sentence")
    if not lines:
        raise EmbeddingDataError(f"{path}: no sentences in the file")
    return [ln.strip() for ln in lines]


def is_dev(item_id: str, dev_fraction: float) -> bool:
    """Stable held-out membership from the id alone (the same split on every run and machine). Salted:
    the domain presets' seed and eval files were themselves cut by an unsalted hash of the id, which would
    put a whole seed file on one side."""
    h = int.from_bytes(hashlib.sha256(b"atkd-encoder-dev\0" + item_id.encode()).digest()[:8], "big")
    return h / 2**64 < dev_fraction


def unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def item_sentences(items: Sequence[MCQItem]) -> list[str]:
    return unique([t for it in items for t in (it.question, *it.options.values())])


def in_domain_pairs(items: Sequence[MCQItem]) -> list[tuple[str, str]]:
    """Question ↔ key option. (Question ↔ paraphrase pairs come in through a ``--pairs`` file.)"""
    return [(it.question.strip(), it.options[it.answer_idx].strip()) for it in items]


def dev_pairs_of(items: Sequence[MCQItem], seed: int = 0) -> list[tuple[str, str]]:
    """Each held-out question with every option of its item and with one held-out question of other
    text (never itself: a pair of identical texts has cosine 1 whatever the encoder); no pair twice."""
    rng = random.Random(seed)
    pairs = [(it.question.strip(), text.strip()) for it in items for text in it.options.values()]
    questions = list(dict.fromkeys(it.question.strip() for it in items))
    for it in items:
        q = it.question.strip()
        others = [o for o in questions if o != q]
        if others:
            pairs.append((q, others[rng.randrange(len(others))]))
    return list(dict.fromkeys(p for p in pairs if p[0] != p[1]))


def build_data(items: Sequence[MCQItem], pairs: list[tuple[str, str]] | None = None, dev_fraction: float = 0.1, extra_sentences: Sequence[str] = (), seed: int = 0) -> EncoderData:
    """Split items into train and held-out by id; train on the train items' texts (plus a parallel file's)."""
    if not 0.0 < dev_fraction < 1.0:
        raise EmbeddingDataError(f"--dev-fraction must be in (0, 1), got {dev_fraction}")
    dev = [it for it in items if is_dev(it.id, dev_fraction)]
    train = [it for it in items if not is_dev(it.id, dev_fraction)]
    if not train or not dev:
        raise EmbeddingDataError(f"{len(items)} items give {len(train)} to train and {len(dev)} held out; give more items or change --dev-fraction")
    # Held-out questions are never trained on; an option text that training items share ("None of the
    # above", "yes") is trained like any other.
    held = {it.question.strip() for it in dev} - {it.question.strip() for it in train}
    train_pairs = pairs if pairs is not None else in_domain_pairs(train)
    train_pairs = [(a, b) for a, b in train_pairs if a not in held and b not in held]
    sentences = unique([*item_sentences(train), *extra_sentences, *(t for p in train_pairs for t in p)])
    sentences = [s for s in sentences if s not in held]
    return EncoderData(sentences, train_pairs, dev_pairs_of(dev, seed), dev, "parallel file" if pairs is not None else "in-domain")
