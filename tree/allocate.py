"""Split a generation budget over the tree's nodes: more new questions where the student is weak.

Targets are the nodes that hold items of their own in the iteration, plus every leaf (a sub-ability the
teacher proposed but that has no data yet). Node ``i`` with ``c_i`` of ``n_i`` own items right gets the
weight

    w_i = E[max(0, target - acc_i)],   acc_i ~ Beta(1 + c_i, 1 + n_i - c_i)

the expected shortfall below the target accuracy. It grows with how weak a node is (unlike
P(acc < target), which saturates at 1 for every node well below the target, the usual case for a small
student) and with how uncertain it is: a node with no data has w = target^2 / 2, and a node whose
mean sits at the target still gets weight while its interval is wide. Each target first
gets ``floor`` items (exploration: no node starves), the rest of the budget is split in proportion to
``w`` with water-filling so that no node exceeds ``cap``, and the fractional shares are rounded by
largest remainder so the counts sum to the budget exactly. Equal remainders are ordered by a
permutation drawn from ``seed``, so the result is deterministic per seed without favouring nodes by
their names. ``strategy="uniform"`` uses equal weights (the baseline to compare against).

How much the weakness strategy concentrates is set by three knobs: ``floor`` (0: a node the weights do
not favour gets nothing), ``max_nodes`` (only the heaviest nodes are targets) and ``temperature``: the
weights are raised to ``1 / temperature`` before the split, so below 1 the budget moves further towards
the weakest nodes (0.5 squares the weights) and above 1 it evens out. ``share_of`` tells what share of
a budget a set of nodes received (the contrast a comparison of strategies needs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tree.ability_tree import AbilityTree
from tree.posterior import expected_shortfall

logger = logging.getLogger(__name__)

STRATEGIES = ("weakness", "uniform")


@dataclass
class AllocationConfig:
    """How the loop splits its per-iteration generation budget over nodes."""

    strategy: str = field(default="weakness", metadata={"help": "weakness (favour weak/uncertain nodes) or uniform"})
    floor: int = field(default=1, metadata={"help": "items every target node gets before weighting"})
    cap: int | None = field(default=None, metadata={"help": "most items one node may get (None: no cap)"})
    target: float = field(default=0.8, metadata={"help": "accuracy a node should reach"})
    seed: int = field(default=0, metadata={"help": "orders equal remainders when rounding"})
    max_nodes: int | None = field(default=None, metadata={"help": "spread the budget over at most this many nodes, those of largest weight (None: all targets)"})
    temperature: float = field(default=1.0, metadata={"help": "weights are raised to 1/temperature: < 1 concentrates the budget on the weakest nodes, > 1 evens it out"})

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.floor < 0:
            raise ValueError(f"floor must be >= 0, got {self.floor}")
        if self.cap is not None and self.cap < max(self.floor, 1):
            raise ValueError(f"cap must be >= max(floor, 1) = {max(self.floor, 1)}, got {self.cap}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {self.target}")
        if self.max_nodes is not None and self.max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {self.max_nodes}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def node_weights(tree: AbilityTree, iteration: int | None, config: AllocationConfig) -> dict[str, float]:
    """Weight per target node (see the module docstring), in the tree's node order."""
    iteration = tree.latest_iteration(iteration)
    data = set(tree.data_nodes(iteration))
    targets = [n for n in tree.nodes() if n in data or tree.graph.out_degree(n) == 0]
    if config.strategy == "uniform":
        return {n: 1.0 for n in targets}
    weights = {}
    for node in targets:
        n, correct = tree.counts(node, iteration, subtree=False)
        weights[node] = expected_shortfall(config.target, correct, n) ** (1.0 / config.temperature)
    return weights


def _capped_shares(weights: np.ndarray, total: int, room: np.ndarray) -> np.ndarray:
    """Real shares of ``total`` proportional to ``weights`` with share_i <= room_i (water-filling)."""
    shares = np.zeros_like(weights)
    free = room > 0
    left = float(total)
    while left > 1e-9 and free.any():
        w = np.where(free, weights, 0.0)
        if w.sum() <= 0:  # every free node has zero weight: split what is left evenly
            w = free.astype(float)
        want = left * w / w.sum()
        over = free & (shares + want >= room - 1e-12)
        if not over.any():
            shares += want
            break
        left -= float((room[over] - shares[over]).sum())
        shares[over] = room[over]
        free &= ~over
    return shares


def allocate(
    tree: AbilityTree,
    budget: int,
    iteration: int | None = None,
    config: AllocationConfig | None = None,
    **overrides: Any,
) -> dict[str, int]:
    """Items to generate per target node; the counts sum to ``budget`` exactly.

    ``overrides`` are AllocationConfig fields (``strategy``, ``floor``, ``cap``, ``target``, ``seed``, ...)
    applied on top of ``config`` (default: AllocationConfig()); an unknown name is a TypeError.
    When the budget cannot give every target ``floor`` items, the floor drops to ``budget // targets``
    and the rest goes by weight; a ``cap`` too small to place the whole budget is an error.
    """
    config = replace(config or AllocationConfig(), **overrides)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    weights = node_weights(tree, iteration, config)
    if config.max_nodes is not None and len(weights) > config.max_nodes:
        # The heaviest nodes; equal weights in a seeded order (as for remainders below), tree order kept.
        rank = np.random.default_rng(config.seed).permutation(len(weights))
        keep = set(sorted(weights, key=lambda n: (-weights[n], rank[list(weights).index(n)]))[: config.max_nodes])
        weights = {n: w for n, w in weights.items() if n in keep}
    nodes = list(weights)
    k = len(nodes)
    if config.cap is not None and config.cap * k < budget:
        raise ValueError(f"cap {config.cap} x {k} nodes = {config.cap * k} cannot hold a budget of {budget}")
    floor_each = min(config.floor, budget // k)
    if floor_each < config.floor:
        logger.warning("budget %d is too small for a floor of %d on %d nodes; using %d", budget, config.floor, k,
                       floor_each)
    cap_each = config.cap if config.cap is not None else budget
    w = np.array([weights[n] for n in nodes], dtype=float)
    rest = budget - floor_each * k
    shares = _capped_shares(w, rest, np.full(k, float(cap_each - floor_each)))
    base = np.floor(shares + 1e-9).astype(int)
    remainder = shares - base
    short = rest - int(base.sum())
    # Largest remainder first; equal remainders in a seeded random order (not by name).
    tiebreak = np.random.default_rng(config.seed).permutation(k)
    order = sorted(range(k), key=lambda i: (-round(remainder[i], 12), tiebreak[i]))
    for i in order:
        if short <= 0:
            break
        if floor_each + base[i] < cap_each:
            base[i] += 1
            short -= 1
    counts = {n: int(floor_each + b) for n, b in zip(nodes, base)}
    if sum(counts.values()) != budget:  # cannot happen if the arithmetic above is right; never return less
        raise RuntimeError(f"allocation of {budget} summed to {sum(counts.values())}: {counts}")
    logger.info("allocated %d items over %d nodes (%s)", budget, k,
                ", ".join(f"{n.rsplit('/', 1)[-1]}={c}" for n, c in counts.items() if c))
    return counts



def share_of(counts: dict[str, int], nodes: set[str] | frozenset[str]) -> float:
    """The share of an allocation's items that went to ``nodes`` or below them (a child grown under a
    weak node counts for it); 0.0 for an empty allocation."""
    total = sum(counts.values())
    if not total:
        return 0.0
    inside = sum(c for node, c in counts.items() if any(node == n or node.startswith(n + "/") for n in nodes))
    return inside / total
