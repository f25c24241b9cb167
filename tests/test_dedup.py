"""synth.dedup: ROUGE-L and Jaccard near-duplicates, exact LCS, pruning, on real SmolLM2 copies."""

from __future__ import annotations

import json
import random

import pytest

from synth.dedup import DuplicateIndex, jaccard, lcs_length, ngrams, rouge_l, similarity_tokens
from data.records import MCQItem
from prompts.parse import MCQDraft, parse_completion
from tests.testing_utils import read_fixture_records


def lcs_reference(a: list[str], b: list[str]) -> int:
    """Textbook O(n m) dynamic programme."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bit_parallel_lcs_equals_the_dynamic_programme():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 80))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 80))]
        assert lcs_length(a, b) == lcs_reference(a, b)
        assert rouge_l(a, b) == pytest.approx(rouge_l(b, a))


def test_rouge_l_closed_forms():
    assert rouge_l([], []) == 1.0 and rouge_l(["a"], []) == 0.0
    assert rouge_l("a b c d".split(), "a b c d".split()) == 1.0
    assert rouge_l("a b c d".split(), "a x c y".split()) == pytest.approx(0.5)  # LCS "a c": 2*2/8


def item(id_: str, question: str, options: list[str]) -> MCQItem:
    return MCQItem(id=id_, question=question, options={chr(65 + i): t for i, t in enumerate(options)}, answer_idx="A")


def test_option_order_does_not_matter():
    a = item("a", "Which vitamin deficiency causes scurvy in sailors?", ["Vitamin C", "Vitamin A", "Vitamin D", "Vitamin K"])
    b = item("b", "Which vitamin deficiency causes scurvy in sailors?", ["Vitamin K", "Vitamin D", "Vitamin C", "Vitamin A"])
    assert similarity_tokens(a.question, a.options) == similarity_tokens(b.question, b.options)


@pytest.mark.parametrize("metric", ["rouge_l", "jaccard"])
def test_pruned_index_query_equals_brute_force(metric):
    rng = random.Random(1)
    words = "heart lung liver kidney nerve vitamin acid cell blood bone which the of is a".split()
    pool = [item(f"p{i}", " ".join(rng.choices(words, k=rng.randint(4, 25))), [" ".join(rng.choices(words, k=2)) + f" {j}" for j in range(4)]) for i in range(150)]
    index = DuplicateIndex(n=3, threshold=0.6, metric=metric)
    index.add_items(pool)
    for _ in range(40):
        q = rng.choice(pool)
        tokens = similarity_tokens(q.question, q.options)
        tokens = [t if rng.random() > 0.2 else rng.choice(words) for t in tokens]  # edit ~20% of the words
        question = " ".join(tokens)
        got = index.nearest(question, {})
        scores = {}
        for p in pool:
            other = similarity_tokens(p.question, p.options)
            scores[p.id] = rouge_l(tokens, other) if metric == "rouge_l" else jaccard(ngrams(tokens, 3), ngrams(other, 3))
        best = max(scores.values())
        if best < 0.6:
            assert got is None
        else:
            assert got is not None and got.score == pytest.approx(best) and scores[got.id] == pytest.approx(best)


def _fixture_copy(record_id: str) -> tuple[MCQItem, MCQItem]:
    """A real SmolLM2 generation and the exemplar its prompt showed."""
    record = next(r for r in read_fixture_records("outputs.jsonl") if r["id"] == record_id)
    draft = parse_completion(record["completion"], MCQDraft, record["prefill"]).value
    user = record["messages"][0]["content"]
    example = json.loads(user[user.index("Example:") + len("Example:") : user.index("Now write")])
    return (
        MCQItem(id="generated", question=draft.question, options=draft.options, answer_idx=draft.answer_idx),
        MCQItem(id="exemplar", question=example["question"], options=example["options"], answer_idx=example["answer_idx"]),
    )


@pytest.mark.parametrize("record_id", ["generate_short-gen-0-2c5bc858-1", "generate_short-gen-0-5adf741a-1"])
def test_rouge_l_catches_real_light_edits_that_3gram_jaccard_misses(record_id):
    """SmolLM2 rewrote a few words of its exemplar: many 3-grams break, the word order survives."""
    generated, exemplar = _fixture_copy(record_id)
    rouge = DuplicateIndex(threshold=0.7, metric="rouge_l")
    grams = DuplicateIndex(n=3, threshold=0.7, metric="jaccard")
    for index in (rouge, grams):
        index.add_items([exemplar])
    assert rouge.exact(generated.question, generated.options) is None  # not an exact copy
    assert rouge.nearest(generated.question, generated.options).score >= 0.75
    assert grams.nearest(generated.question, generated.options) is None


def test_index_arguments_are_checked():
    with pytest.raises(ValueError, match="metric"):
        DuplicateIndex(metric="cosine")
    with pytest.raises(ValueError, match="threshold"):
        DuplicateIndex(threshold=1.5)
