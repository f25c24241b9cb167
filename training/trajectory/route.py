"""The distillation-mode trajectory term: route-constrained optimisation (Jin et al. 2019, RCO) as a
``KDTrainer`` objective.

The teacher's own fine-tuning checkpoints are anchor points along its route. At training progress
f = step / max_steps the student's hidden states, through the learned projection of the hidden-state
objective (``training.objectives.HiddenStateObjective``: the same projection modules when that
objective is on, its own otherwise), are pulled towards the hidden states of anchor
``min(floor(f · P), P − 1)``, with P anchors spread evenly over the checkpoints given (the last is
always the final one). Seed settings: weight 0.3, 3 points. The anchors read the student's own tokens,
so they must share its tokenizer (the same vocabulary).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from training.objectives import HiddenStateObjective, Objective, ObjectiveInputs

logger = logging.getLogger(__name__)


def spread(items: Sequence[Any], points: int) -> list[Any]:
    """``points`` items spread evenly over ``items``, ending with the last one."""
    if points >= len(items):
        return list(items)
    n = len(items)
    return [items[round((i + 1) * n / points) - 1] for i in range(points)]


def anchor_at(progress: float, points: int) -> int:
    return min(int(progress * points), points - 1)


class TrajectoryObjective(Objective):
    """Student hidden states, projected, matched to the anchor checkpoint of the current training stage."""

    needs_hidden_states = True
    needs_teacher = False  # the anchors are its own models

    def __init__(self, anchors: Sequence[nn.Module], hidden: HiddenStateObjective, *, weight: float = 0.3, name: str = "trajectory", share_projection: bool = False) -> None:
        super().__init__(name, weight)
        if not anchors:
            raise ValueError("the trajectory objective needs at least one teacher checkpoint")
        self.anchors = list(anchors)  # plain list: frozen models, neither trained nor saved with the objective
        for a in self.anchors:
            a.eval().requires_grad_(False)
        # Shared: the hidden-state objective owns (and saves) the projections; otherwise this one does.
        self._hidden = [hidden] if share_projection else None
        self.hidden = None if share_projection else hidden
        self.progress = 0.0

    @property
    def projection(self) -> HiddenStateObjective:
        return self._hidden[0] if self._hidden is not None else self.hidden

    @property
    def anchor(self) -> int:
        return anchor_at(self.progress, len(self.anchors))

    @property
    def metrics(self) -> dict[str, float]:
        return {"anchor": float(self.anchor)}

    @torch.no_grad()
    def anchor_states(self, inputs: ObjectiveInputs) -> tuple[torch.Tensor, ...]:
        model = self.anchors[self.anchor]
        device = next(model.parameters()).device
        out = model.base_model(input_ids=inputs.input_ids.to(device), attention_mask=inputs.attention_mask.to(device), output_hidden_states=True, use_cache=False)
        return out.hidden_states

    def forward(self, inputs: ObjectiveInputs) -> torch.Tensor:
        if inputs.input_ids is None:
            raise ValueError(f"objective {self.name!r} needs the student's input_ids")
        states = self.anchor_states(inputs)
        routed = ObjectiveInputs(inputs.student, None, inputs.student_hidden_states, states, inputs.attention_mask, inputs.extras, inputs.input_ids)
        return self.projection(routed)


class TrajectoryProgress(TrainerCallback):
    """Tells the objective how far training is (optimizer steps done / max steps)."""

    def __init__(self, objective: TrajectoryObjective) -> None:
        self.objective = objective

    def on_step_begin(self, args, state, control, **kwargs):
        self.objective.progress = state.global_step / max(state.max_steps, 1)
        return control


def load_anchors(checkpoints: Sequence[str], points: int, student: nn.Module, tokenizer: Any = None, dtype: Any = None) -> list[nn.Module]:
    """The anchor models: ``points`` of ``checkpoints`` (folders of causal LMs) in ``dtype``, checked
    against the student's vocabulary and, where a checkpoint holds one, tokenizer."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.collator import check_same_tokenizer

    chosen = spread(list(checkpoints), points)
    anchors = []
    vocab = student.get_input_embeddings().weight.shape[0]
    for path in chosen:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if model.get_input_embeddings().weight.shape[0] != vocab:
            raise ValueError(f"trajectory checkpoint {path} has a vocabulary of {model.get_input_embeddings().weight.shape[0]}, the student {vocab}: anchors must share the student's tokenizer")
        if tokenizer is not None and (Path(path) / "tokenizer_config.json").is_file():
            try:
                check_same_tokenizer(tokenizer, AutoTokenizer.from_pretrained(path))
            except ValueError as e:
                raise ValueError(f"trajectory checkpoint {path}: {e}; anchors must share the student's tokenizer") from None
        anchors.append(model)
    logger.info("trajectory anchors: %s", ", ".join(chosen))
    return anchors
