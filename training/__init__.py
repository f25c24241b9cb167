"""Knowledge-distillation training on TRL: ``KDTrainer`` / ``KDConfig``, pure losses in ``training.losses``,
sparse teacher logits in ``training.teacher_logits``, KV-cache distillation in ``training.kv``,
multi-stage sentence-encoder distillation in ``training.embedding`` and ``training.distill.distill()`` for the loop (not exported here: the name is the submodule's, which any
``import training.distill`` puts on the package).

Names are imported on first use, so ``import training`` stays cheap and pulls in neither TRL nor any
package of the loop (``agents`` depends on ``training``, never the reverse).
"""

from __future__ import annotations

from training.lazy import lazy_exports

_EXPORTS = {
    "KDConfig": "training.kd_config",
    "KDTrainer": "training.kd_trainer",
    "TopKCollator": "training.collator",
    "TeacherLogits": "training.teacher_logits",
    "extract_teacher_logits": "training.teacher_logits",
    "build_dataset": "training.mcq_data",
    "distill_config": "training.distill",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
