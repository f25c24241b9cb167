"""Distillation losses as pure tensor functions (no trainer state), so they can be tested against a
float64 reference and reused by any trainer."""

from training.losses.base import (
    Divergence,
    dense_distillation_loss,
    reduce_tokens,
    select_tokens,
    tempered_log_probs,
    topk_bucket_log_probs,
    topk_distillation_loss,
)
from training.losses.kd import (
    KD_LOSS_TYPES,
    combine_losses,
    cross_entropy_loss,
    forward_kl,
    forward_kl_loss,
    generalized_jsd,
    get_divergence,
    kd_loss,
    reverse_kl,
    topk_kd_loss,
)

__all__ = [
    "Divergence",
    "KD_LOSS_TYPES",
    "combine_losses",
    "cross_entropy_loss",
    "dense_distillation_loss",
    "forward_kl",
    "forward_kl_loss",
    "generalized_jsd",
    "get_divergence",
    "kd_loss",
    "reduce_tokens",
    "reverse_kl",
    "select_tokens",
    "tempered_log_probs",
    "topk_bucket_log_probs",
    "topk_distillation_loss",
    "topk_kd_loss",
]
