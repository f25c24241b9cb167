"""Budget allocation: exact sums, floor and cap, determinism per seed, weak nodes first."""

from __future__ import annotations

import random

import pytest

from tree import AbilityTree
from tree.allocate import AllocationConfig, allocate, node_weights


def make_tree(accuracies: dict[str, tuple[int, int]], extra_leaves: tuple[str, ...] = ()) -> AbilityTree:
    """Nodes root/<name> with (correct, n) own results in iteration 1."""
    t = AbilityTree("root")
    results = []
    for name, (correct, n) in accuracies.items():
        node = t.add_ability(f"root/{name}")
        results += [(f"{name}-{i}", node, i < correct) for i in range(n)]
    for leaf in extra_leaves:
        t.add_ability(f"root/{leaf}")
    t.record(results, iteration=1)
    return t


@pytest.fixture()
def tree() -> AbilityTree:
    return make_tree({"weak": (3, 30), "mid": (18, 30), "strong": (29, 30), "few": (1, 2)}, extra_leaves=("new",))


def test_targets_are_data_nodes_and_empty_leaves(tree):
    assert set(allocate(tree, 10, 1)) == {"root/weak", "root/mid", "root/strong", "root/few", "root/new"}


def test_sums_exactly_and_respects_floor_and_cap_on_random_trees():
    rng = random.Random(0)
    for trial in range(60):
        k = rng.randint(1, 9)
        accs = {f"n{i}": (c, n) for i in range(k) for n in [rng.randint(0, 40)] for c in [rng.randint(0, n)]}
        t = make_tree(accs)
        targets = len(node_weights(t, 1, AllocationConfig()))
        floor = rng.randint(0, 3)
        cap = rng.choice([None, max(floor, 1) + rng.randint(0, 10)])
        budget = rng.randint(0, 60) if cap is None else rng.randint(0, cap * targets)
        strategy = rng.choice(["weakness", "uniform"])
        alloc = allocate(t, budget, 1, strategy=strategy, floor=floor, cap=cap, seed=trial)
        assert sum(alloc.values()) == budget, (trial, alloc)
        if floor * targets <= budget:
            assert min(alloc.values()) >= floor
        if cap is not None:
            assert max(alloc.values()) <= cap


def test_weak_and_uncertain_nodes_get_more(tree):
    alloc = allocate(tree, 100, 1, floor=0)
    assert alloc["root/weak"] > alloc["root/mid"] > alloc["root/strong"]
    assert alloc["root/new"] > alloc["root/strong"] and alloc["root/few"] > alloc["root/strong"]


def test_max_nodes_keeps_the_heaviest_nodes(tree):
    weights = node_weights(tree, 1, AllocationConfig())
    heaviest = sorted(weights, key=weights.get, reverse=True)[:2]
    alloc = allocate(tree, 40, 1, max_nodes=2)
    assert set(alloc) == set(heaviest) and sum(alloc.values()) == 40
    assert "root/weak" in alloc and "root/strong" not in alloc
    assert allocate(tree, 40, 1, max_nodes=10) == allocate(tree, 40, 1)  # more than there are: all of them


def test_cap_redistributes_to_the_rest(tree):
    alloc = allocate(tree, 100, 1, floor=2, cap=25)
    assert sum(alloc.values()) == 100 and max(alloc.values()) == 25 and min(alloc.values()) >= 2


def test_deterministic_per_seed_and_ties_follow_the_seed():
    t = make_tree({f"n{i}": (5, 10) for i in range(6)})
    runs = {seed: allocate(t, 9, 1, strategy="uniform", floor=0, seed=seed) for seed in range(8)}
    assert all(allocate(t, 9, 1, strategy="uniform", floor=0, seed=s) == a for s, a in runs.items())
    assert all(sorted(a.values()) == [1, 1, 1, 2, 2, 2] for a in runs.values())
    assert len({tuple(a.values()) for a in runs.values()}) > 1  # which nodes get the extra item depends on the seed


def test_small_budget_lowers_the_floor(tree):
    alloc = allocate(tree, 3, 1, floor=2)
    assert sum(alloc.values()) == 3 and max(alloc.values()) == 1


def test_config_object_and_overrides(tree):
    cfg = AllocationConfig(strategy="uniform", floor=0)
    assert allocate(tree, 10, 1, cfg) == allocate(tree, 10, 1, strategy="uniform", floor=0)
    assert allocate(tree, 10, 1, cfg, strategy="weakness") == allocate(tree, 10, 1, floor=0)
    with pytest.raises(TypeError):
        allocate(tree, 10, 1, colour="red")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"strategy": "greedy"}, "strategy"), ({"floor": -1}, "floor"), ({"cap": 0}, "cap"),
     ({"floor": 3, "cap": 2}, "cap"), ({"target": 1.0}, "target"), ({"max_nodes": 0}, "max_nodes")],
)
def test_config_range_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AllocationConfig(**kwargs)


def test_infeasible_cap_and_negative_budget(tree):
    with pytest.raises(ValueError, match="cannot hold"):
        allocate(tree, 100, 1, cap=5)
    with pytest.raises(ValueError, match="budget"):
        allocate(tree, -1, 1)


def test_temperature_moves_the_budget_to_the_weakest_and_share_of_measures_it(tree):
    from tree.allocate import share_of

    plain = allocate(tree, 200, 1, floor=0)
    sharp = allocate(tree, 200, 1, floor=0, temperature=0.5)
    flat = allocate(tree, 200, 1, floor=0, temperature=4.0)
    weak = {"root/weak"}
    assert share_of(sharp, weak) > share_of(plain, weak) > share_of(flat, weak)
    assert sum(sharp.values()) == sum(flat.values()) == 200
    uniform = allocate(tree, 200, 1, strategy="uniform", temperature=0.5)  # uniform weights stay equal
    assert set(uniform.values()) == {40}
    assert share_of({"root/weak": 3, "root/weak/sub": 1, "root/mid": 4}, weak) == 0.5  # a child counts for its parent
    assert share_of({}, weak) == 0.0
    with pytest.raises(ValueError, match="temperature must be > 0"):
        AllocationConfig(temperature=0)
