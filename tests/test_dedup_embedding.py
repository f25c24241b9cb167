"""The embedding near-duplicate metric: DuplicateIndex(metric="embedding"), node_exemplars(embed=...)
and validate_items with near_dup_metric="embedding".

No encoder is loaded: the embed functions are deterministic numpy fakes (a bag-of-words hashing
embedder, or a lookup table text -> vector), so every cosine can be checked exactly against a numpy
reference and every call to the encoder can be counted.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict

import numpy as np
import pytest

from data.records import GeneratedItem, MCQItem
from data.text import word_tokens
from synth.dedup import DuplicateIndex, embedding_text, rouge_l, similarity_tokens
from synth.targets import node_exemplars, node_text
from synth.validate import ValidationConfig, validate_items
from tests.fixtures.scripted_engine import ScriptedEngine, user_text

DIM = 64


def word_vector(word: str) -> np.ndarray:
    """A fixed random vector per word (seeded by a stable hash of the word, not Python's salted hash)."""
    return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(DIM)


def bow_embed(texts):
    """Bag-of-words hashing embedder: the sum of the word vectors (not unit-norm, on purpose)."""
    return np.stack([sum((word_vector(w) for w in word_tokens(t)), np.zeros(DIM)) for t in texts])


class CountingEmbed:
    """Wraps an embed function and records every call's texts, to check batching."""

    def __init__(self, fn=bow_embed) -> None:
        self.fn = fn
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return self.fn(texts)


def lookup_embed(table: dict[str, np.ndarray]):
    """An embed function that knows exactly the texts in ``table`` (any other text is a test error)."""

    def embed(texts):
        missing = [t for t in texts if t not in table]
        assert not missing, f"unexpected texts embedded: {missing}"
        return np.stack([np.asarray(table[t], dtype=float) for t in texts])

    return embed


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def item(id_: str, question: str, options: list[str], key: str = "A") -> MCQItem:
    return MCQItem(id=id_, question=question, options={chr(65 + i): t for i, t in enumerate(options)}, answer_idx=key)


POOL = [
    item("p-deltoid", "Which nerve innervates the deltoid muscle?", ["Axillary nerve", "Radial nerve", "Median nerve", "Ulnar nerve"]),
    item("p-scurvy", "Which vitamin deficiency causes scurvy?", ["Vitamin C", "Vitamin A", "Vitamin D", "Vitamin K"]),
    item("p-insulin", "Which organ produces insulin?", ["Pancreas", "Liver", "Spleen", "Kidney"]),
    item("p-aorta", "Which chamber of the heart pumps blood into the aorta?", ["Left ventricle", "Right atrium", "Left atrium", "Right ventricle"]),
]


# ------------------------------------------------------------------------------- DuplicateIndex


def test_embedding_metric_needs_an_embed_function():
    """Without an encoder the metric cannot work: fail at construction, not at the first query."""
    with pytest.raises(ValueError, match="embed"):
        DuplicateIndex(metric="embedding")


def test_describe_and_len():
    """describe() names the metric in rejection reasons; len() counts indexed items."""
    index = DuplicateIndex(threshold=0.9, metric="embedding", embed=bow_embed)
    assert index.describe() == "embedding cosine"
    assert len(index) == 0
    index.add_items(POOL[:3])
    assert len(index) == 3
    index.add(POOL[3].id, POOL[3].question, POOL[3].options)
    assert len(index) == 4


def test_empty_index_returns_none_without_embedding():
    """Nothing to compare with: no match, and the (possibly expensive) encoder is not even called."""
    embed = CountingEmbed()
    index = DuplicateIndex(threshold=0.1, metric="embedding", embed=embed)
    assert index.nearest(POOL[0].question, POOL[0].options) is None
    index.add_items([])
    assert len(index) == 0 and embed.calls == []


def test_nearest_id_and_cosine_equal_a_numpy_reference():
    """The match is the pool item of highest cosine, and its score is that cosine (up to float32)."""
    index = DuplicateIndex(threshold=0.01, metric="embedding", embed=bow_embed)
    index.add_items(POOL)
    queries = [
        ("Which nerve supplies the deltoid muscle?", {"A": "Axillary nerve", "B": "Radial nerve", "C": "Ulnar nerve", "D": "Musculocutaneous nerve"}),
        ("Lack of which vitamin leads to scurvy?", {"A": "Vitamin C", "B": "Vitamin B12", "C": "Vitamin D", "D": "Vitamin E"}),
        ("Which heart chamber ejects blood to the aorta?", {"A": "Left ventricle", "B": "Right ventricle", "C": "Left atrium", "D": "Right atrium"}),
    ]
    expected_ids = ["p-deltoid", "p-scurvy", "p-aorta"]
    for (question, options), expected in zip(queries, expected_ids):
        q_vec = bow_embed([embedding_text(question, options)])[0]
        reference = {p.id: cosine(q_vec, bow_embed([embedding_text(p.question, p.options)])[0]) for p in POOL}
        best = max(reference, key=reference.get)
        assert best == expected  # the fake embedder is sensible, so the check below is meaningful
        match = index.nearest(question, options)
        assert match is not None and match.id == best
        assert match.score == pytest.approx(reference[best], abs=1e-5)


def test_threshold_is_respected():
    """A cosine of exactly 0.6 matches at threshold 0.59 and 0.6 is reported; at 0.61 there is no match."""
    a = item("a", "alpha", ["w", "x", "y", "z"])
    query = ("query", {"A": "w", "B": "x", "C": "y", "D": "z"})
    table = {embedding_text(a.question, a.options): [3.0, 0.0], embedding_text(*query): [0.6, 0.8]}
    for threshold, matched in ((0.59, True), (0.61, False)):
        index = DuplicateIndex(threshold=threshold, metric="embedding", embed=lookup_embed(table))
        index.add_items([a])
        match = index.nearest(*query)
        if matched:
            assert match is not None and match.id == "a" and match.score == pytest.approx(0.6, abs=1e-6)
        else:
            assert match is None


def test_best_of_several_above_threshold_and_ties_go_to_the_first_added():
    """Among matches the highest cosine wins; equal cosines resolve to the earliest indexed item."""
    texts = {"q": [1.0, 0.0, 0.0], "far": [0.0, 1.0, 0.0], "mid": [0.8, 0.6, 0.0], "twin1": [1.0, 0.0, 0.1], "twin2": [1.0, 0.0, 0.1]}
    table = {embedding_text(t, {}): v for t, v in texts.items()}
    index = DuplicateIndex(threshold=0.5, metric="embedding", embed=lookup_embed(table))
    for name in ("far", "mid"):
        index.add(name, name, {})
    assert index.nearest("q", {}).id == "mid"
    index.add("twin1", "twin1", {})
    index.add("twin2", "twin2", {})
    match = index.nearest("q", {})
    assert match.id == "twin1" and match.score == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)


def test_option_order_does_not_matter():
    """embedding_text sorts the options, so a shuffled (and re-lettered) copy encodes to the same text."""
    a = POOL[0]
    shuffled = {"A": "Ulnar nerve", "B": "Median nerve", "C": "Axillary nerve", "D": "Radial nerve"}
    assert embedding_text(a.question, a.options) == embedding_text(a.question, shuffled)
    assert embedding_text(a.question, a.options) == embedding_text(f"  {a.question}\n", {k: f" {v} " for k, v in shuffled.items()})
    index = DuplicateIndex(threshold=0.99, metric="embedding", embed=bow_embed)
    index.add_items([a, *POOL[1:]])
    match = index.nearest(a.question, shuffled)
    assert match is not None and match.id == a.id and match.score == pytest.approx(1.0, abs=1e-5)


def test_exact_still_works_with_the_embedding_metric():
    """Exact duplicates (case, punctuation, option order ignored) are found by key, without the encoder."""
    embed = CountingEmbed()
    index = DuplicateIndex(threshold=0.9, metric="embedding", embed=embed)
    index.add_items(POOL)
    calls = len(embed.calls)
    copy = index.exact("WHICH organ produces insulin", {"A": "kidney", "B": "Spleen.", "C": "Liver", "D": "Pancreas"})
    assert copy is not None and copy.id == "p-insulin" and copy.score == 1.0
    assert index.exact("Which organ produces glucagon?", POOL[2].options) is None
    assert len(embed.calls) == calls  # exact() never encodes


def test_add_items_is_one_batched_call_and_equals_adding_one_by_one():
    """add_items encodes the whole batch in ONE call; each nearest() query is one more call; the stored
    vectors (and so every score) are the same as when items are added one at a time."""
    batched_embed, single_embed = CountingEmbed(), CountingEmbed()
    batched = DuplicateIndex(threshold=0.01, metric="embedding", embed=batched_embed)
    single = DuplicateIndex(threshold=0.01, metric="embedding", embed=single_embed)
    batched.add_items(POOL)
    for p in POOL:
        single.add(p.id, p.question, p.options)
    assert batched_embed.calls == [[embedding_text(p.question, p.options) for p in POOL]]
    assert len(single_embed.calls) == len(POOL) and all(len(c) == 1 for c in single_embed.calls)
    np.testing.assert_allclose(np.stack(batched._vectors), np.stack(single._vectors), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.stack(batched._vectors), axis=1), 1.0, atol=1e-5)  # unit rows

    queries = [("Which nerve supplies the deltoid?", POOL[0].options), ("Which organ makes insulin?", POOL[2].options), ("Scurvy comes from lacking which vitamin?", POOL[1].options)]
    for n, (question, options) in enumerate(queries, start=1):
        got, want = batched.nearest(question, options), single.nearest(question, options)
        assert got is not None and got.id == want.id and got.score == pytest.approx(want.score, abs=1e-6)
        assert len(batched_embed.calls) == 1 + n  # one call per query, with one text
        assert batched_embed.calls[-1] == [embedding_text(question, options)]


def test_embed_may_return_any_array_like():
    """The encoder contract is "an (N, D) array-like": plain nested lists work too."""
    index = DuplicateIndex(threshold=0.5, metric="embedding", embed=lambda texts: bow_embed(texts).tolist())
    index.add_items(POOL)
    assert index.nearest(POOL[1].question, POOL[1].options).id == "p-scurvy"


# ------------------------------------------------------------------------------- node_exemplars


class FakeTree:
    """The four methods node_exemplars uses; node ids are "/"-paths, descendants exclude the node."""

    def __init__(self, nodes: dict[str, str], placed: dict[str, str]) -> None:
        self.nodes = nodes  # node -> name
        self.placed = placed  # item id -> node

    def info(self, node: str) -> dict:
        return {"name": self.nodes[node], "description": f"questions about {self.nodes[node].lower()}"}

    def node_of(self, it: MCQItem) -> str:
        return self.placed[it.id]

    def descendants(self, node: str) -> set[str]:
        return {n for n in self.nodes if n.startswith(node + "/")}

    def parent(self, node: str) -> str | None:
        return node.rsplit("/", 1)[0] if "/" in node else None


TREE_NODES = {
    "med": "Medicine",
    "med/cardio": "Cardiology",
    "med/cardio/arrhythmia": "Arrhythmia",
    "med/neuro": "Neurology",
    "med/renal": "Nephrology",
}
# item id -> (node, 2-d direction in degrees): cosine with a node at angle t is cos(angle - t).
EX_ITEMS = {
    "c1": ("med/cardio", 80),
    "c2": ("med/cardio", 10),
    "a1": ("med/cardio/arrhythmia", 90),
    "n1": ("med/neuro", 5),
    "n2": ("med/neuro", 60),
    "n3": ("med/neuro", 170),
    "r1": ("med/renal", 30),
}
NODE_ANGLES = {"med/cardio/arrhythmia": 0, "med/cardio": 0, "med/neuro": 90, "med/renal": 180}


def direction(degrees: float) -> np.ndarray:
    return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))])


def exemplar_setup():
    """A tree, its seed items and an embed table placing every item and node at a known angle."""
    items = [item(i, f"Question {i} about topic {i}?", [f"{i} one", f"{i} two", f"{i} three", f"{i} four"]) for i in EX_ITEMS]
    tree = FakeTree(TREE_NODES, {i: node for i, (node, _) in EX_ITEMS.items()})
    table = {embedding_text(it.question, it.options): 2.5 * direction(EX_ITEMS[it.id][1]) for it in items}
    table.update({node_text(tree, n): direction(a) for n, a in NODE_ANGLES.items()})
    return tree, items, table


def test_node_text_is_path_name_and_description():
    tree = FakeTree(TREE_NODES, {})
    assert node_text(tree, "med/cardio") == "med > cardio: Cardiology. questions about cardiology"


def test_embed_exemplars_own_subtree_first_then_nearest_others():
    """Own-subtree items come first, ranked by cosine to the node, even when an outsider is closer;
    the rest of k is filled by the nearest other items anywhere in the tree (not just siblings)."""
    tree, items, table = exemplar_setup()
    embed = CountingEmbed(lookup_embed(table))
    out = node_exemplars(tree, items, list(NODE_ANGLES), k=4, seed=0, embed=embed)
    ids = {node: [it.id for it in chosen] for node, chosen in out.items()}
    # Leaf at 0 deg: its one item a1 (90 deg, cosine 0) first, then n1 (5), c2 (10), r1 (30).
    assert ids["med/cardio/arrhythmia"] == ["a1", "n1", "c2", "r1"]
    # Cardiology's subtree (c1, c2, a1) first, by cosine: c2 (10), c1 (80), a1 (90); then n1 (5).
    assert ids["med/cardio"] == ["c2", "c1", "a1", "n1"]
    # Neurology at 90 deg: n2 (60), n3 (170), n1 (5) ranked by cosine; then a1 (90, cosine 1).
    assert ids["med/neuro"] == ["n2", "n3", "n1", "a1"]
    # Nephrology at 180 deg: r1 (30) is its only item; then n3 (170), then a1 (90) and c1 (80).
    assert ids["med/renal"] == ["r1", "n3", "a1", "c1"]
    # Two encoder calls in all: every seed item once, every node once.
    assert len(embed.calls) == 2 and len(embed.calls[0]) == len(items) and len(embed.calls[1]) == len(NODE_ANGLES)


def test_embed_exemplars_match_a_numpy_reference_ranking():
    """The full ranking equals (outside own subtree, -cosine, id) computed independently."""
    tree, items, table = exemplar_setup()
    out = node_exemplars(tree, items, list(NODE_ANGLES), k=len(items), seed=0, embed=lookup_embed(table))
    for node, chosen in out.items():
        own = {i for i, (n, _) in EX_ITEMS.items() if n == node or n.startswith(node + "/")}
        node_vec = table[node_text(tree, node)]
        expected = sorted(items, key=lambda it: (it.id not in own, -cosine(table[embedding_text(it.question, it.options)], node_vec), it.id))
        assert [it.id for it in chosen] == [it.id for it in expected]
        assert {it.id for it in chosen[: len(own)]} == own


def test_embed_exemplars_are_deterministic_and_ignore_seed_and_order():
    """The embedding choice is a ranking: the same for any seed, any input order, with duplicate ids
    collapsed, and ties broken by id."""
    tree, items, table = exemplar_setup()
    embed = lookup_embed(table)
    first = node_exemplars(tree, items, list(NODE_ANGLES), k=3, seed=0, embed=embed)
    shuffled = items[:] + items[:2]  # repeated ids are counted once
    random.Random(7).shuffle(shuffled)
    for seed in (0, 1, 123):
        again = node_exemplars(tree, shuffled, list(NODE_ANGLES), k=3, seed=seed, embed=embed)
        assert {n: [i.id for i in v] for n, v in again.items()} == {n: [i.id for i in v] for n, v in first.items()}
    # Ties: two neurology items at the same angle come back in id order.
    twins = [item("z-twin", "twin?", ["a", "b", "c", "d"]), item("m-twin", "twin?", ["a", "b", "c", "e"])]
    tree.placed.update({"z-twin": "med/neuro", "m-twin": "med/neuro"})
    table.update({embedding_text(t.question, t.options): direction(90) for t in twins})
    out = node_exemplars(tree, [*items, *twins], ["med/neuro"], k=2, seed=0, embed=lookup_embed(table))
    assert [i.id for i in out["med/neuro"]] == ["m-twin", "z-twin"]


def test_embed_exemplars_small_pools():
    """k larger than the pool gives every item once; no items or no nodes give empty lists."""
    tree, items, table = exemplar_setup()
    out = node_exemplars(tree, items, ["med/renal"], k=50, seed=0, embed=lookup_embed(table))
    assert sorted(i.id for i in out["med/renal"]) == sorted(EX_ITEMS)
    assert node_exemplars(tree, [], ["med/renal"], k=3, seed=0, embed=lookup_embed(table)) == {"med/renal": []}
    assert node_exemplars(tree, items, [], k=3, seed=0, embed=lookup_embed(table)) == {}


def old_node_exemplars(tree, seed_items, nodes, k, seed):
    """The selection before embed= existed (verbatim copy): own, else subtree, else parent's subtree,
    sampled with ``seed`` from the pool sorted by id."""
    by_node = defaultdict(list)
    for it in seed_items:
        by_node[tree.node_of(it)].append(it)
    out = {}
    for node in nodes:
        pool = list(by_node.get(node, []))
        if len(pool) < k:
            for desc in tree.descendants(node):
                pool += by_node.get(desc, [])
        if len(pool) < k:
            parent = tree.parent(node)
            if parent is not None:
                for desc in tree.descendants(parent):
                    pool += by_node.get(desc, [])
        unique = {i.id: i for i in pool}
        out[node] = random.Random(seed).sample(sorted(unique.values(), key=lambda i: i.id), min(k, len(unique)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 42])
@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_without_embed_the_old_selection_is_unchanged(seed, k):
    """embed=None (the default) must draw exactly what the old code drew for the same seed."""
    tree, items, _ = exemplar_setup()
    nodes = [*NODE_ANGLES, "med"]
    want = old_node_exemplars(tree, items, nodes, k, seed)
    for got in (node_exemplars(tree, items, nodes, k, seed), node_exemplars(tree, items, nodes, k, seed, embed=None)):
        assert {n: [i.id for i in v] for n, v in got.items()} == {n: [i.id for i in v] for n, v in want.items()}


def test_embed_fills_a_lone_leaf_that_the_old_fallback_leaves_short():
    """Without embed a leaf borrows only from its siblings' subtrees (the parent's descendants, not the
    parent's own items), so an only child with one item gets one exemplar; with embed it gets k."""
    tree, items, table = exemplar_setup()
    old = node_exemplars(tree, items, ["med/cardio/arrhythmia"], k=3, seed=0)
    assert [i.id for i in old["med/cardio/arrhythmia"]] == ["a1"]
    new = node_exemplars(tree, items, ["med/cardio/arrhythmia"], k=3, seed=0, embed=lookup_embed(table))
    assert [i.id for i in new["med/cardio/arrhythmia"]] == ["a1", "n1", "c2"]


# ------------------------------------------------------------------------------- validate_items

SEED = MCQItem(
    id="seed-0", question="Which nerve innervates the deltoid muscle in the shoulder region?",
    options={"A": "Axillary nerve", "B": "Radial nerve", "C": "Median nerve", "D": "Ulnar nerve"}, answer_idx="A",
)


def gen(id_: str, question: str, options: list[str], key: str = "A") -> GeneratedItem:
    return GeneratedItem(id=id_, question=question, options={chr(65 + i): t for i, t in enumerate(options)}, answer_idx=key, target_node="n1", generator="teacher")


# The seed reworded: almost every word differs, so ROUGE-L (and word n-grams) see little overlap.
REWORDED = gen("g-reworded", "Deltoid paralysis after a humeral neck fracture points to injury of what?",
               ["Circumflex-accompanying axillary branch", "Spiral-groove radial trunk", "Carpal-tunnel median trunk", "Cubital-tunnel ulnar trunk"])
REWORDED_2 = gen("g-reworded-2", "Loss of shoulder abduction and a numb badge patch over the deltoid implicate which structure?",
                 ["The axillary", "The radial", "The median", "The ulnar"])
UNRELATED = gen("g-insulin", "Which organ produces insulin?", ["Pancreas", "Liver", "Spleen", "Kidney"])
CANDS = [REWORDED, REWORDED_2, UNRELATED]


def concept_embed(texts):
    """A fake encoder that "understands" the deltoid question: every text mentioning the deltoid maps
    to (nearly) the same direction; everything else gets its bag-of-words vector, far from it."""
    concept = np.zeros(DIM)
    concept[0] = 100.0
    rows = []
    for t in texts:
        bow = bow_embed([t])[0]
        rows.append(concept + 0.01 * bow / np.linalg.norm(bow) if "deltoid" in t.lower() else bow)
    return np.stack(rows)


def key_picker(prompt) -> str:
    """The scripted solver always picks the key's text, so only the gates can reject."""
    text = user_text(prompt)
    for it in CANDS:
        if it.question in text:
            return it.options[it.answer_idx]
    raise AssertionError(f"solver saw an unexpected item: {text[:80]}")


def validate(config: ValidationConfig, embed=None):
    solver = ScriptedEngine(pick=key_picker, name="solver")
    return validate_items(CANDS, solver=solver, critic=None, seed_pool=[SEED], config=config, embed=embed)


def test_rouge_l_misses_the_reworded_copy():
    """The premise: under the default ROUGE-L gate the reworded copies pass and reach the solver."""
    for copy in (REWORDED, REWORDED_2):
        score = rouge_l(similarity_tokens(copy.question, copy.options), similarity_tokens(SEED.question, SEED.options))
        assert score < 0.7
    result = validate(ValidationConfig(acceptance="solver"))
    assert result.rejected == []
    assert sorted(it.id for it in result.accepted) == sorted(c.id for c in CANDS)


def test_embedding_gate_rejects_the_reworded_copy(monkeypatch):
    """With the embedding metric the copy of the seed is a near duplicate, reported with its cosine;
    the second copy is caught too (against the seed pool first); the unrelated item passes. The given
    embed is used: the configured encoder is never loaded."""
    monkeypatch.setattr("synth.validate.encoder_embed", lambda spec: pytest.fail(f"encoder {spec!r} loaded although embed was given"))
    config = ValidationConfig(acceptance="solver", near_dup_metric="embedding", near_dup_embedding_threshold=0.95)
    result = validate(config, embed=concept_embed)
    rejected = {r["id"]: r for r in result.rejected}
    assert set(rejected) == {"g-reworded", "g-reworded-2"}
    for r in rejected.values():
        assert r["stage"] == "near_duplicate" and r["duplicate_of"] == "seed-0"
        assert "embedding cosine" in r["reason"] and r["reason"].startswith("near duplicate of seed-0 (seed pool): embedding cosine 1.00 >= 0.95")
        assert 0.95 <= r["similarity"] <= 1.0
    assert [it.id for it in result.accepted] == ["g-insulin"]
    assert result.report["rejected_by_stage"]["near_duplicate"] == 2


def test_embedding_gate_catches_a_reworded_copy_within_the_batch():
    """No seed pool: the second reworded item is a near duplicate of the first survivor of the batch."""
    config = ValidationConfig(acceptance="solver", near_dup_metric="embedding", near_dup_embedding_threshold=0.95)
    solver = ScriptedEngine(pick=key_picker, name="solver")
    result = validate_items(CANDS, solver=solver, critic=None, seed_pool=[], config=config, embed=concept_embed)
    assert [(r["id"], r["stage"], r["duplicate_of"]) for r in result.rejected] == [("g-reworded-2", "near_duplicate", "g-reworded")]
    assert result.rejected[0]["reason"].startswith("near duplicate of g-reworded (batch): embedding cosine")
    assert [it.id for it in result.accepted] == ["g-reworded", "g-insulin"]


def test_embedding_threshold_comes_from_near_dup_embedding_threshold():
    """near_dup_threshold (the ROUGE-L/Jaccard one) does not apply to cosines: a tiny value there changes
    nothing, while an embedding threshold above the copies' cosine lets them through."""
    loose_rouge = ValidationConfig(acceptance="solver", near_dup_metric="embedding", near_dup_threshold=0.01, near_dup_embedding_threshold=0.95)
    assert {r["id"] for r in validate(loose_rouge, embed=concept_embed).rejected} == {"g-reworded", "g-reworded-2"}

    def weaker(texts):
        """Like concept_embed, but the copies lean off the seed's direction: cosine ~0.958 with the
        seed (whose text alone says "region"), ~1 with each other."""
        rows = concept_embed(texts)
        rows[:, 1] += np.array([30.0 if "deltoid" in t.lower() and "region" not in t.lower() else 0.0 for t in texts])
        return rows

    strict = ValidationConfig(acceptance="solver", near_dup_metric="embedding", near_dup_embedding_threshold=0.99)
    result = validate(strict, embed=weaker)
    assert [(r["id"], r["duplicate_of"]) for r in result.rejected] == [("g-reworded-2", "g-reworded")]


def test_without_embed_the_configured_encoder_is_loaded(monkeypatch):
    """embed=None with the embedding metric loads config.encoder once (here a fake loader)."""
    loaded = []

    def fake_loader(spec):
        loaded.append(spec)
        return concept_embed

    monkeypatch.setattr("synth.validate.encoder_embed", fake_loader)
    config = ValidationConfig(acceptance="solver", near_dup_metric="embedding", near_dup_embedding_threshold=0.95, encoder="st:/nowhere/encoder")
    result = validate(config)
    assert loaded == ["st:/nowhere/encoder"]
    assert {r["id"] for r in result.rejected} == {"g-reworded", "g-reworded-2"}


@pytest.mark.parametrize("threshold", [1.5, 1.0001, 0.0, -0.5, -1.0, -2.0])
def test_config_rejects_embedding_threshold_out_of_range(threshold):
    with pytest.raises(ValueError, match="near_dup_embedding_threshold"):
        ValidationConfig(near_dup_metric="embedding", near_dup_embedding_threshold=threshold)


@pytest.mark.parametrize("threshold", [0.5, 0.9, 1.0])
def test_config_accepts_embedding_threshold_in_range(threshold):
    assert ValidationConfig(near_dup_metric="embedding", near_dup_embedding_threshold=threshold).near_dup_embedding_threshold == threshold


