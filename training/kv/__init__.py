"""Multi-teacher KV-cache distillation from heterogeneous teachers, hosted by ``KDTrainer``.

Teachers with other tokenizers, layer counts, head counts and widths (decoders and encoders) read the
same conversations each its own way; their keys and values at mapped layers are aligned to the
student's tokens (``align``), projected into its heads (``adapters``), fused by fixed weights, similarity
routing, a learned router or FuseLLM's CE rules (``fusion``) and matched by the losses of
``training.losses.kv``. ``KVDistillation`` (``objective``) is the ``training.objectives.Objective``
that ``KDTrainer`` adds when ``KDConfig.kv_teachers`` is set; ``KVCollator`` puts each teacher's tokens
and the token overlaps into the batches.
"""

from __future__ import annotations

from training.lazy import lazy_exports

_EXPORTS = {
    "KVAdapter": "training.kv.adapters",
    "KVCollator": "training.kv.collator",
    "KVDistillation": "training.kv.objective",
    "KVSettings": "training.kv.settings",
    "KVTeacher": "training.kv.teachers",
    "LearnedRouter": "training.kv.fusion",
    "alignment_matrix": "training.kv.align",
    "layer_map": "training.kv.align",
    "load_kv_teacher": "training.kv.teachers",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
