"""Text overlap between MCQs: exact and near duplicates, and n-gram contamination of evaluation sets.

All comparisons run on normalised word tokens (``data.text``: Unicode NFKC, lower case, every run of
characters that are not letters or digits becomes one space), so punctuation, case and spacing never
hide a copy.

* Exact duplicate: the same normalised question and the same set of normalised option texts (option
  order and letters do not matter, so a shuffled copy is still a copy).
* Near duplicate, one of two metrics on the question followed by the option texts in sorted order (so
  reordering the options changes nothing):
  - ``rouge_l`` (default): ROUGE-L F1, from the longest common subsequence of words, >= 0.7 (the
    Self-Instruct filter). It catches the commonest copy of small teachers: the exemplar with a few
    words changed, which breaks many n-grams but few words of the common subsequence. Only pool items
    whose shared-word count could reach the threshold (an upper bound of the LCS) are compared, and the
    LCS is computed bit-parallel, so a query against a pool of thousands takes milliseconds.
  - ``jaccard``: Jaccard similarity of the sets of word n-grams (default 3-grams) >= the threshold;
    texts shorter than n words use their word set. What MinHash estimates; exact here, through an
    inverted index on n-grams.
  - ``embedding``: cosine similarity of sentence embeddings of the question and sorted options, from an
    ``embed`` function given by the caller (the run's encoder: ``training.embedding``) >= the threshold.
    It sees a reworded copy that shares few words; its threshold is calibrated on real SmolLM2 copies
    (docs/embedding.md).
* Contamination: an item shares at least one word 13-gram with an evaluation item (question + options),
  or, for texts shorter than 13 words, has exactly the same normalised text.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from data.records import MCQItem
from data.text import normalize_text, word_tokens

logger = logging.getLogger(__name__)


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


METRICS = ("rouge_l", "jaccard", "embedding")

#: texts -> (N, D) embeddings (any array-like torch or numpy can hold); the ``embedding`` metric's encoder.
Embed = Callable[[Sequence[str]], Any]


def memoized(embed: Embed, size: int = 256) -> Embed:
    """``embed`` with the last ``size`` single-text results kept: the validate stage asks for one item's
    vector up to three times (seed-pool query, batch query, adding it to the batch)."""
    import numpy as np

    cache: dict[str, Any] = {}

    def wrapped(texts: Sequence[str]) -> Any:
        if len(texts) != 1:
            return embed(texts)
        (text,) = texts
        if text not in cache:
            if len(cache) >= size:
                cache.pop(next(iter(cache)))
            cache[text] = np.asarray(embed([text]), dtype=np.float32)
        return cache[text]

    return wrapped


def unit_rows(rows: Any) -> Any:
    """(N, D) embeddings (any array-like) as float32 rows of unit length (a zero row stays zero)."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.float32)
    rows = rows.reshape(len(rows), -1)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def embedding_text(question: str, options: Mapping[str, str]) -> str:
    """What the embedding metric encodes: the question, then the option texts in sorted order."""
    return "\n".join([question.strip(), *sorted(t.strip() for t in options.values())])


def similarity_tokens(question: str, options: Mapping[str, str]) -> list[str]:
    """Words of the question, then of the option texts in sorted order (option order does not matter)."""
    return word_tokens(question) + [w for text in sorted(normalize_text(t) for t in options.values()) for w in text.split()]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel, O(len(b)) big-int steps)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of two token lists (symmetric)."""
    if not a or not b:
        return 1.0 if not a and not b else 0.0
    lcs = lcs_length(a, b)
    return 2.0 * lcs / (len(a) + len(b))


class DuplicateIndex:
    """Exact keys plus a near-duplicate index (ROUGE-L or n-gram Jaccard, see the module docstring)."""

    def __init__(self, n: int = 3, threshold: float = 0.7, metric: str = "rouge_l", embed: Embed | None = None) -> None:
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        if metric not in METRICS:
            raise ValueError(f"near-duplicate metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if metric == "embedding" and embed is None:
            raise ValueError("the embedding near-duplicate metric needs an embed function (an encoder)")
        self.n = n
        self.embed = embed
        self._ids: list[str] = []
        self._vectors: list[Any] = []  # unit-norm float32 rows (embedding metric)
        self._matrix: Any = None  # their stack, rebuilt after an add
        self.threshold = threshold
        self.metric = metric
        self._exact: dict[str, str] = {}
        self._grams: dict[str, set[tuple[str, ...]]] = {}
        self._tokens: dict[str, list[str]] = {}
        self._counts: dict[str, Counter[str]] = {}
        self._postings: dict[Any, list[str]] = defaultdict(list)

    def __len__(self) -> int:
        if self.metric == "embedding":
            return len(self._ids)
        return len(self._grams) if self.metric == "jaccard" else len(self._tokens)

    def describe(self) -> str:
        """How similarity is measured, for rejection reasons: "ROUGE-L", "3-gram Jaccard" or "embedding cosine"."""
        return {"rouge_l": "ROUGE-L", "jaccard": f"{self.n}-gram Jaccard", "embedding": "embedding cosine"}[self.metric]

    def _unit_rows(self, texts: Sequence[str]) -> Any:
        return unit_rows(self.embed(list(texts)))

    def add(self, item_id: str, question: str, options: Mapping[str, str], _vector: Any = None) -> None:
        self._exact.setdefault(exact_key(question, options), item_id)
        if self.metric == "embedding":
            self._ids.append(item_id)
            self._vectors.append(self._unit_rows([embedding_text(question, options)])[0] if _vector is None else _vector)
            self._matrix = None
            return
        tokens = similarity_tokens(question, options)
        if self.metric == "jaccard":
            keys: set[Any] = ngrams(tokens, self.n)
            self._grams[item_id] = keys
        else:
            self._tokens[item_id] = tokens
            self._counts[item_id] = Counter(tokens)
            keys = set(tokens)
        for key in keys:
            self._postings[key].append(item_id)

    def add_items(self, items: Sequence[MCQItem]) -> None:
        vectors = self._unit_rows([embedding_text(i.question, i.options) for i in items]) if self.metric == "embedding" and items else None
        for k, item in enumerate(items):
            self.add(item.id, item.question, item.options, None if vectors is None else vectors[k])

    def exact(self, question: str, options: Mapping[str, str]) -> Match | None:
        found = self._exact.get(exact_key(question, options))
        return Match(found, 1.0) if found is not None else None

    def nearest(self, question: str, options: Mapping[str, str]) -> Match | None:
        """The most similar indexed item at or above the threshold (ties: the first added)."""
        if self.metric == "embedding":
            scores = self._cosine_scores(question, options)
        else:
            tokens = similarity_tokens(question, options)
            scores = self._jaccard_scores(tokens) if self.metric == "jaccard" else self._rouge_scores(tokens)
        best: Match | None = None
        for other, score in scores:
            if score >= self.threshold and (best is None or score > best.score):
                best = Match(other, score)
        return best

    def _cosine_scores(self, question: str, options: Mapping[str, str]) -> Iterator[tuple[str, float]]:
        import numpy as np

        if not self._ids:
            return
        if self._matrix is None:
            self._matrix = np.stack(self._vectors)  # (N, D)
        cos = self._matrix @ self._unit_rows([embedding_text(question, options)])[0]
        yield from zip(self._ids, (float(c) for c in cos))

    def _jaccard_scores(self, tokens: list[str]) -> Iterator[tuple[str, float]]:
        grams = ngrams(tokens, self.n)
        shared: dict[str, int] = defaultdict(int)
        for g in grams:
            for other in self._postings.get(g, ()):
                shared[other] += 1
        for other, inter in shared.items():
            yield other, inter / (len(grams) + len(self._grams[other]) - inter)

    def _rouge_scores(self, tokens: list[str]) -> Iterator[tuple[str, float]]:
        counts = Counter(tokens)
        seen: set[str] = set()
        for token in counts:
            for other in self._postings.get(token, ()):
                if other in seen:
                    continue
                seen.add(other)
                # The LCS cannot exceed the shared word count: skip pairs that cannot reach the threshold.
                shared = sum((counts & self._counts[other]).values())
                if 2.0 * shared / (len(tokens) + len(self._tokens[other])) < self.threshold:
                    continue
                yield other, rouge_l(tokens, self._tokens[other])


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
