"""Checkpoint selection within a training run: score the model after every epoch, keep the best epoch.

A few steps on a small set can overshoot: the second epoch is not always better than the first. The
Trainer's own ``load_best_model_at_end`` keys on an eval *loss* and writes a checkpoint per evaluation;
what matters here is a task score (MCQ accuracy on a dev split, read from generated replies), and a copy
in memory of the weights that train is enough. ``BestEpochCallback`` takes any ``score(model) -> float``
(greater is better), keeps a CPU copy of the trainable parameters of the best epoch so far, and puts them
back at the end of training when a later epoch was worse. Ties keep the later epoch (it has seen more).

    from training.selection import BestEpochCallback
    selection = BestEpochCallback(lambda model: my_accuracy(model))
    trainer = KDTrainer(..., callbacks=[selection]); trainer.train()
    selection.best_epoch, selection.history   # [{"epoch": 1.0, "score": 0.41}, ...]
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class BestEpochCallback(TrainerCallback):
    """Scores the model at each epoch's end; restores the best epoch's trainable weights at train end."""

    def __init__(self, score: Callable[[Any], float]) -> None:
        self.score = score
        self.history: list[dict[str, float]] = []
        self.best_epoch: float | None = None
        self.best_score: float | None = None
        self._best: dict[str, Any] | None = None  # name -> CPU copy of each trainable parameter
        self._last_is_best = False

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        import torch

        if model is None:
            raise ValueError("BestEpochCallback needs the model (the Trainer passes it to callbacks)")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = float(self.score(model))
        finally:
            model.train(was_training)
        epoch = round(float(state.epoch or 0.0), 4)
        self.history.append({"epoch": epoch, "score": value})
        logger.info("epoch %.2f: dev score %.4f", epoch, value)
        self._last_is_best = self.best_score is None or value >= self.best_score
        if self._last_is_best:
            self.best_score, self.best_epoch = value, epoch
            self._best = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch

        if self._best is None or self._last_is_best or model is None:
            return control
        logger.info("restoring epoch %.2f (dev score %.4f), the best of %d", self.best_epoch, self.best_score, len(self.history))
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, saved in self._best.items():
                params[name].data.copy_(saved.to(params[name].device))
        self._best = None
        return control

    @property
    def restored(self) -> bool:
        """True when the weights kept are not the last epoch's."""
        return bool(self.history) and self.best_epoch is not None and self.best_epoch != self.history[-1]["epoch"]
