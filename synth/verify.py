"""The verifier gate of the validate stage, and the verifier's check of the label stage's solutions.

Where a domain can compute the truth (``data.verification``), a generated item's key is judged by the
domain before any agent sees it: a right key goes on to the agents; a wrong key whose right value is
among the options is re-keyed (``on_wrong="rekey"``, counted apart; the generator's explanation, which
argues for the old key, is dropped) or rejected (``"reject"``); a wrong key with the right value nowhere
among the options is rejected with stage ``verifier`` and the verifier's reason. An item the verifier
cannot judge goes on (``on_unknown="keep"``) or is rejected (``"reject"``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from data.records import MCQItem
from data.verification import Verification, Verifier, run_verifier

logger = logging.getLogger(__name__)

ON_WRONG = ("rekey", "reject")
ON_UNKNOWN = ("keep", "reject")
Item = TypeVar("Item", bound=MCQItem)


@dataclass
class GateOutcome:
    """One item through the gate: the item to go on with (None: rejected), the verdict, what was done."""

    item: MCQItem | None
    verification: Verification
    action: str  # passed, rekeyed, rejected, kept_unknown

    def record(self) -> dict[str, Any]:
        return {**self.verification.as_dict(), "action": self.action}


@dataclass
class GateCounts:
    """Per verdict and action, over every item the gate saw (the validate report's ``verifier``)."""

    name: str
    counts: Counter = field(default_factory=Counter)

    def add(self, outcome: GateOutcome) -> None:
        self.counts[outcome.verification.verdict] += 1
        self.counts[outcome.action] += 1

    def as_dict(self) -> dict[str, Any]:
        keys = ("right", "wrong", "unknown", "passed", "rekeyed", "rejected", "kept_unknown")
        return {"name": self.name, **{k: self.counts.get(k, 0) for k in keys}}


def gate(item: Item, verifier: Verifier, on_wrong: str = "rekey", on_unknown: str = "keep") -> GateOutcome:
    """Judge ``item``'s key with ``verifier``; see the module docstring for what follows each verdict."""
    if on_wrong not in ON_WRONG or on_unknown not in ON_UNKNOWN:
        raise ValueError(f"on_wrong must be one of {ON_WRONG} and on_unknown one of {ON_UNKNOWN}")
    v = run_verifier(verifier, item)
    if v.verdict == "right":
        return GateOutcome(item, v, "passed")
    if v.verdict == "unknown":
        return GateOutcome(item if on_unknown == "keep" else None, v, "kept_unknown" if on_unknown == "keep" else "rejected")
    if on_wrong == "rekey" and v.answer in item.options and v.answer != item.answer_idx:
        update: dict[str, Any] = {"answer_idx": v.answer}
        if hasattr(item, "explanation"):
            update["explanation"] = ""
        return GateOutcome(item.model_copy(update=update), v, "rekeyed")
    return GateOutcome(None, v, "rejected")


def check_solutions(verifier: Verifier, items: Sequence[Item]) -> tuple[list[Item], list[tuple[Item, Verification]]]:
    """``(kept, refused)``: items whose ``solution`` the verifier does not find wrong, and the others with
    the verdict (a wrong step, or a stated answer that is not the computed one)."""
    kept: list[Item] = []
    refused: list[tuple[Item, Verification]] = []
    for item in items:
        v = run_verifier(verifier, item, item.solution)
        if v.verdict == "wrong":
            refused.append((item, v))
        else:
            kept.append(item)
    if refused:
        logger.info("verifier refused %d of %d worked solutions (e.g. %s)", len(refused), len(items), refused[0][1].reason)
    return kept, refused
