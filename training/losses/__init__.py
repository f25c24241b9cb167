"""Distillation losses as pure tensor functions (no trainer state), so they can be tested against a
float64 reference and reused by any trainer.

``kd_loss`` / ``topk_kd_loss`` take logits a caller already has; ``fused_linear_distillation`` takes
the final hidden states and the LM head and never materialises all logits (what ``KDTrainer`` uses).
"""

from training.losses.base import (
    Divergence,
    dense_distillation_loss,
    reduce_tokens,
    select_tokens,
    tempered_log_probs,
    topk_bucket_log_probs,
    topk_distillation_loss,
)
from training.losses.fused import (
    DenseTeacher,
    FusedLossOutput,
    LinearHead,
    TopKTeacher,
    auto_chunk_size,
    compile_pays,
    fused_linear_distillation,
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
    skew_forward_kl,
    skew_reverse_kl,
    topk_kd_loss,
)

__all__ = [
    "DenseTeacher",
    "Divergence",
    "FusedLossOutput",
    "KD_LOSS_TYPES",
    "LinearHead",
    "TopKTeacher",
    "combine_losses",
    "cross_entropy_loss",
    "dense_distillation_loss",
    "forward_kl",
    "forward_kl_loss",
    "fused_linear_distillation",
    "auto_chunk_size",
    "compile_pays",
    "generalized_jsd",
    "get_divergence",
    "kd_loss",
    "reduce_tokens",
    "reverse_kl",
    "select_tokens",
    "skew_forward_kl",
    "skew_reverse_kl",
    "tempered_log_probs",
    "topk_bucket_log_probs",
    "topk_distillation_loss",
    "topk_kd_loss",
]
