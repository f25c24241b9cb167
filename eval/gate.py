"""The acceptance gate: is a newly trained student adopted, or does the current one stay?

Both students answer the same dev-split items (model selection only: disjoint from the probe, the
replayed items and the eval set), so the comparison is paired. Rules:

- ``margin``: adopted when the candidate's dev accuracy is at least the current student's minus
  ``margin`` points (0: not worse; a negative margin asks for a gain of at least that much);
- ``mcnemar``: adopted unless the exact one-sided McNemar test finds it worse at level ``alpha``
  (tolerates what the dev split cannot tell from noise; ``margin`` is the stricter default);
- ``off``: always adopted (the loop as it was before the gate).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from data.records import Reply

GATE_RULES = ("margin", "mcnemar", "off")


@dataclass(frozen=True)
class GateConfig:
    rule: str = field(default="margin", metadata={"help": f"How a trained student is accepted: {', '.join(GATE_RULES)}."})
    margin: float = field(default=0.0, metadata={"help": "margin rule: the dev-accuracy drop tolerated, in points (negative: the gain asked for)."})
    alpha: float = field(default=0.05, metadata={"help": "mcnemar rule: the level at which a worse candidate is rejected."})

    def __post_init__(self) -> None:
        if self.rule not in GATE_RULES:
            raise ValueError(f"gate rule must be one of {', '.join(GATE_RULES)}, got {self.rule!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"gate alpha must be in (0, 1), got {self.alpha}")
        if not math.isfinite(self.margin) or abs(self.margin) > 100:
            raise ValueError(f"gate margin is in points, within [-100, 100], got {self.margin}")


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and on what evidence (stored as the gate stage's gate.json)."""

    adopted: bool
    rule: str
    reason: str
    n: int  # dev items compared
    before: float | None  # the current student's dev accuracy
    after: float | None  # the candidate's
    delta: float | None  # after - before
    gained: int  # items right only after
    lost: int  # items right only before
    p_worse: float | None  # one-sided exact McNemar P(at least this many losses | no difference)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def p_worse(gained: int, lost: int) -> float:
    """One-sided exact McNemar: P(X >= lost) for X ~ Binomial(gained + lost, 1/2)."""
    m = gained + lost
    if m == 0:
        return 1.0
    return sum(math.comb(m, i) for i in range(lost, m + 1)) / (1 << m)


def decide(before: Sequence[Reply], after: Sequence[Reply], config: GateConfig = GateConfig()) -> GateDecision:
    """Compare the current student's (``before``) and the candidate's (``after``) dev replies."""
    if config.rule == "off":
        return GateDecision(True, "off", "the gate is off: every trained student is adopted", 0, None, None, None, 0, 0, None)
    if [r.id for r in before] != [r.id for r in after]:
        raise ValueError("the gate compares replies to the same dev items, in the same order")
    n = len(before)
    if n == 0:
        return GateDecision(True, config.rule, "no dev items: nothing to compare, the candidate is adopted", 0, None, None, None, 0, 0, None)
    right_before = sum(r.correct for r in before)
    right_after = sum(r.correct for r in after)
    gained = sum(a.correct and not b.correct for b, a in zip(before, after))
    lost = sum(b.correct and not a.correct for b, a in zip(before, after))
    acc_b, acc_a = right_before / n, right_after / n
    delta, p = acc_a - acc_b, p_worse(gained, lost)
    change = f"dev {100 * acc_b:.1f}% -> {100 * acc_a:.1f}% ({100 * delta:+.1f} points, +{gained}/-{lost} items)"
    if config.rule == "margin":
        adopted = 100 * delta >= -config.margin - 1e-9
        need = f"at least {-config.margin:+.1f} points" if config.margin else "not worse"
        reason = f"{change}: {'adopted' if adopted else 'rejected'}, the rule asks {need}"
    else:
        adopted = p >= config.alpha
        reason = (f"{change}: {'adopted' if adopted else 'rejected'}, one-sided McNemar p(worse) = {p:.3g} "
                  f"{'>=' if adopted else '<'} {config.alpha}")
    return GateDecision(adopted, config.rule, reason, n, acc_b, acc_a, delta, gained, lost, p)
