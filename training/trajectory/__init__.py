"""Dataset distillation of text by trajectory matching (MTT, Cazenavette et al. 2022; TESLA's constant
memory; text in token-embedding space): expert trajectories, a learnable synthetic set, the matching
loop with three meta-gradient modes and subset matching, and an evaluation against same-size real
baselines. ``python -m training.trajectory``.

Names are imported on first use.
"""

from __future__ import annotations

from training.lazy import lazy_exports

_EXPORTS = {
    "ExpertsConfig": "training.trajectory.config",
    "TTMConfig": "training.trajectory.config",
    "EvaluateConfig": "training.trajectory.config",
    "train_experts": "training.trajectory.experts",
    "load_experts": "training.trajectory.experts",
    "distill_set": "training.trajectory.distill",
    "evaluate_sets": "training.trajectory.evaluate",
    "SyntheticSet": "training.trajectory.synthetic",
    "meta_gradient": "training.trajectory.unroll",
    "parameter_matching_loss": "training.trajectory.losses",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
