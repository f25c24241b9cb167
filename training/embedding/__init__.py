"""Multi-stage distillation of sentence encoders (Ding et al. 2022): a bottleneck embedding (stage 2),
shared repeated layers (stage 3) and pair training with mcl / mse / ce / bool (stage 4), built on
sentence-transformers; evaluation by fidelity to the teacher; ONNX export. ``python -m training.embedding``.

Names are imported on first use (sentence-transformers is heavy); ``training.embedding.student``
registers the student's model class with transformers when it is imported.
"""

from __future__ import annotations

from training.lazy import lazy_exports

_EXPORTS = {
    "EncoderDistillConfig": "training.embedding.config",
    "distill_encoder": "training.embedding.distill",
    "build_student": "training.embedding.student",
    "StudentShape": "training.embedding.student",
    "RecurrentBertModel": "training.embedding.student",
    "RecurrentBertConfig": "training.embedding.student",
    "load_encoder": "training.embedding.encoders",
    "pair_loss": "training.embedding.losses",
    "PairDistillLoss": "training.embedding.losses",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
