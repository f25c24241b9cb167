"""Which nodes improved or fell between two trees (two iterations, or two runs on the same domain).

A node's change is judged on its posterior, not on the raw accuracies: ``p_better`` is the probability
that its accuracy in B exceeds that in A (tree.posterior.prob_greater), and the verdict is "improved"
when it is at least ``confidence``, "fell" when it is at most ``1 - confidence``, else "unclear". Nodes
present on one side only are "added" / "removed".
"""

from __future__ import annotations

from dataclasses import dataclass

from tree.ability_tree import AbilityTree
from tree.posterior import prob_greater


@dataclass(frozen=True)
class NodeChange:
    node: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    p_better: float | None
    verdict: str  # improved | fell | unclear | added | removed

    @property
    def delta(self) -> float | None:
        return None if self.mean_a is None or self.mean_b is None else self.mean_b - self.mean_a


def diff_trees(
    a: AbilityTree, b: AbilityTree, iteration_a: int | None = None, iteration_b: int | None = None, confidence: float = 0.9
) -> list[NodeChange]:
    """Every node of either tree, ordered by change (largest rise first, then added/removed by id)."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    ia, ib = a.latest_iteration(iteration_a), b.latest_iteration(iteration_b)
    ids_a = {n.casefold(): n for n in a.nodes()}
    ids_b = {n.casefold(): n for n in b.nodes()}
    changes: list[NodeChange] = []
    for key in sorted(ids_a.keys() | ids_b.keys()):
        pa = a.stats(ids_a[key], ia).posterior if key in ids_a else None
        pb = b.stats(ids_b[key], ib).posterior if key in ids_b else None
        node = ids_b.get(key) or ids_a[key]
        if pa is None or pb is None:
            verdict = "added" if pa is None else "removed"
            changes.append(NodeChange(node, pa.n if pa else 0, pb.n if pb else 0, pa and pa.mean, pb and pb.mean, None, verdict))
            continue
        p = prob_greater(pb.correct, pb.n, pa.correct, pa.n)
        verdict = "improved" if p >= confidence else "fell" if p <= 1 - confidence else "unclear"
        changes.append(NodeChange(node, pa.n, pb.n, pa.mean, pb.mean, p, verdict))
    return sorted(changes, key=lambda c: (c.delta is None, -(c.delta or 0.0), c.node))
