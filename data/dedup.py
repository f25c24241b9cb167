"""Text overlap between MCQs: exact and near duplicates, and n-gram contamination of evaluation sets.

All comparisons run on normalised word tokens (Unicode NFKC, lower case, every run of characters that
are not letters or digits becomes one space), so punctuation, case and spacing never hide a copy.

* Exact duplicate: the same normalised question and the same set of normalised option texts (option
  order and letters do not matter, so a shuffled copy is still a copy).
* Near duplicate: Jaccard similarity of the sets of word n-grams (default 3-grams) of question +
  options text >= a threshold (default 0.7). Texts shorter than n words use their word set. Candidates
  are found through an inverted index on n-grams, so a query touches only items that share one; a
  MinHash index can replace it behind the same ``add`` / ``query`` methods for large pools.
* Contamination: an item shares at least one word 13-gram with an evaluation item (question + options),
  or, for texts shorter than 13 words, has exactly the same normalised text.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping

from data.records import MCQItem

logger = logging.getLogger(__name__)

_NON_WORD = re.compile(r"[^\w]+|_+")


def normalize_text(text: str) -> str:
    """NFKC, lower case, non-alphanumeric runs to one space, stripped."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def word_tokens(text: str) -> list[str]:
    return normalize_text(text).split()


def item_text(question: str, options: Mapping[str, str]) -> str:
    """Question and option texts (in letter order) as one string: what overlap is measured on."""
    return "\n".join([question, *options.values()])


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams; a text shorter than ``n`` words gives its whole token tuple (if any)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def exact_key(question: str, options: Mapping[str, str]) -> str:
    """Key under which two items are exact duplicates (option order and letters ignored)."""
    return normalize_text(question) + "\n" + "\n".join(sorted(normalize_text(t) for t in options.values()))


@dataclass(frozen=True)
class Match:
    """The closest indexed item: its id and the similarity (1.0 for an exact duplicate)."""

    id: str
    score: float


class DuplicateIndex:
    """Exact keys plus an inverted n-gram index for near-duplicate queries."""

    def __init__(self, n: int = 3, threshold: float = 0.7) -> None:
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.n = n
        self.threshold = threshold
        self._exact: dict[str, str] = {}
        self._grams: dict[str, set[tuple[str, ...]]] = {}
        self._postings: dict[tuple[str, ...], list[str]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._grams)

    def add(self, item_id: str, question: str, options: Mapping[str, str]) -> None:
        self._exact.setdefault(exact_key(question, options), item_id)
        grams = ngrams(word_tokens(item_text(question, options)), self.n)
        self._grams[item_id] = grams
        for g in grams:
            self._postings[g].append(item_id)

    def add_items(self, items: list[MCQItem]) -> None:
        for item in items:
            self.add(item.id, item.question, item.options)

    def exact(self, question: str, options: Mapping[str, str]) -> Match | None:
        found = self._exact.get(exact_key(question, options))
        return Match(found, 1.0) if found is not None else None

    def nearest(self, question: str, options: Mapping[str, str]) -> Match | None:
        """The most similar indexed item at or above the threshold (ties: the first added)."""
        grams = ngrams(word_tokens(item_text(question, options)), self.n)
        shared: dict[str, int] = defaultdict(int)
        for g in grams:
            for other in self._postings.get(g, ()):
                shared[other] += 1
        best: Match | None = None
        for other, inter in shared.items():
            score = inter / (len(grams) + len(self._grams[other]) - inter)
            if score >= self.threshold and (best is None or score > best.score):
                best = Match(other, score)
        return best


class ContaminationIndex:
    """Word n-grams (default 13) of evaluation items; any shared n-gram marks an item contaminated."""

    def __init__(self, items: list[MCQItem], n: int = 13) -> None:
        if n < 1:
            raise ValueError(f"contamination n-gram size must be >= 1, got {n}")
        self.n = n
        self._grams: dict[tuple[str, ...], str] = {}
        self._short: dict[str, str] = {}
        for item in items:
            tokens = word_tokens(item_text(item.question, item.options))
            if len(tokens) < n:
                self._short.setdefault(" ".join(tokens), item.id)
            for i in range(len(tokens) - n + 1):
                self._grams.setdefault(tuple(tokens[i : i + n]), item.id)
        logger.debug("contamination index: %d %d-grams from %d eval items", len(self._grams), n, len(items))

    def match(self, question: str, options: Mapping[str, str]) -> tuple[str, str] | None:
        """``(eval id, the shared text)`` for the first shared n-gram (or identical short text), else None."""
        tokens = word_tokens(item_text(question, options))
        if len(tokens) < self.n:
            found = self._short.get(" ".join(tokens))
            return (found, " ".join(tokens)) if found is not None else None
        for i in range(len(tokens) - self.n + 1):
            gram = tuple(tokens[i : i + self.n])
            if gram in self._grams:
                return self._grams[gram], " ".join(gram)
        return None
