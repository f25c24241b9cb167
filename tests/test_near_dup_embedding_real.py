"""The embedding near-duplicate gate with the real all-MiniLM-L6-v2 on real SmolLM2 exemplar copies:
at the default threshold it catches every copy ROUGE-L catches (benchmarks/bench_near_dup.py measures
the false-positive rate on distinct seed-pool pairs)."""

from __future__ import annotations

import numpy as np
import pytest

from synth.dedup import DuplicateIndex, rouge_l, similarity_tokens
from synth.validate import ValidationConfig, encoder_embed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embed():
    return encoder_embed("minilm")


def test_the_default_threshold_catches_every_rouge_l_copy(embed):
    from benchmarks.bench_near_dup import exemplar_copies

    pairs = exemplar_copies()
    threshold = ValidationConfig().near_dup_embedding_threshold
    copies = [(g, e) for _, g, e in pairs if rouge_l(similarity_tokens(g.question, g.options), similarity_tokens(e.question, e.options)) >= 0.7]
    assert len(pairs) >= 10 and len(copies) >= 10
    for generated, exemplar in copies:
        index = DuplicateIndex(threshold=threshold, metric="embedding", embed=embed)
        index.add_items([exemplar])
        match = index.nearest(generated.question, generated.options)
        assert match is not None and match.id == "exemplar", (generated.question, exemplar.question)


def test_unrelated_items_stay_below_the_threshold(embed):
    from data.domains import get_domain

    items = get_domain("clinical").seed_items()[:40]
    index = DuplicateIndex(threshold=ValidationConfig().near_dup_embedding_threshold, metric="embedding", embed=embed)
    index.add_items(items[:20])
    flagged = [it.id for it in items[20:] if index.nearest(it.question, it.options) is not None]
    assert len(flagged) <= 1, flagged
    vectors = np.asarray(embed(["The heart has four chambers."]))
    assert vectors.shape == (1, 384)
