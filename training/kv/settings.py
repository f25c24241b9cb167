"""``KVSettings``: what the KV objective does, filled from ``KDConfig``'s ``kv_*`` fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training.kv.adapters import HEAD_MIXING
from training.kv.fusion import (
    ENTROPY_MODES,
    KV_FUSIONS,
    PROTOTYPES,
    ROUTERS,
    SIMILARITIES,
)
from training.losses.kv import KVLossWeights

ROPE_MODES = ("pre", "post_ntk")
ROUTER_TARGETS = ("loss", "teacher_ce")


@dataclass
class KVSettings:
    """What ``KVDistillation`` does; ``KDConfig``'s ``kv_*`` fields fill it (``KVSettings.from_config``)."""

    layer_map: str = "ratio"
    lambda_k: float = 1.0
    lambda_v: float = 1.0
    beta: float = 0.0
    gamma: float = 0.0
    fusion: str = "fixed"
    weights: list[float] | None = None
    router: str = "mlp"
    granularity: str = "token"
    similarity: str = "cosine"
    prototype: str = "mean"
    tau: float = 0.1
    entropy: str = "diverse"
    entropy_weight: float = 0.01
    head_mixing: str = "auto"
    rope: str = "pre"
    ntk_scale: float = 1.0
    ce_temperature: float = 1.0
    teacher_domains: list[str] | None = None
    router_target: str = "loss"

    @property
    def needs_teacher_ce(self) -> bool:
        return self.fusion in ("mince", "avgce") or (self.fusion == "learnable" and self.router_target == "teacher_ce")

    def __post_init__(self) -> None:
        choices = {
            "fusion": KV_FUSIONS, "router": ROUTERS, "granularity": ("token", "sequence"), "similarity": SIMILARITIES,
            "prototype": PROTOTYPES, "entropy": ENTROPY_MODES, "head_mixing": HEAD_MIXING, "rope": ROPE_MODES,
            "router_target": ROUTER_TARGETS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"kv_{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        KVLossWeights(self.lambda_k, self.lambda_v, self.beta, self.gamma)  # range checks
        if self.tau <= 0 or self.ntk_scale <= 0 or self.ce_temperature <= 0:
            raise ValueError("kv_tau, kv_ntk_scale and kv_ce_temperature must be > 0")
        if self.entropy_weight < 0:
            raise ValueError(f"kv_entropy_weight must be >= 0, got {self.entropy_weight}")
        if self.weights is not None and (any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ValueError(f"kv_weights must be >= 0 and not all 0, got {self.weights}")

    @property
    def loss_weights(self) -> KVLossWeights:
        return KVLossWeights(self.lambda_k, self.lambda_v, self.beta, self.gamma)

    @classmethod
    def from_config(cls, config: Any) -> KVSettings:
        names = [f for f in cls.__dataclass_fields__]
        return cls(**{n: getattr(config, f"kv_{n}") for n in names if hasattr(config, f"kv_{n}")})
