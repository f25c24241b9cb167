"""Distillation objectives beyond the logits, added to ``KDTrainer``'s CE + KD loss with a weight each.

An objective is an ``nn.Module`` (so it may own learned parameters, e.g. a projection from the student's
width to the teacher's) that maps one micro-batch's ``ObjectiveInputs`` to a scalar. ``KDTrainer`` adds
``weight * value * token_share`` to the loss, trains the objective's parameters with the student, logs
``<name>_loss`` (the unweighted value) every step, and saves the parameters beside the model
(``objectives.safetensors``). Built in:

- ``HiddenStateObjective``: the student's hidden states, through a learned linear projection, match the
  teacher's at mapped layers (FitNets / TinyBERT style), normalised MSE or cosine distance.
- ``LayerWeightObjective``: the student's own attention weights (query and output projections by
  default) are pulled towards the teacher's at mapped layers, through learned left/right projections
  when the shapes differ; a data-free term, useful to keep a pruned student near its teacher.

Layer maps are ``"auto"`` (each student layer to the teacher layer at the same relative depth) or
``"s:t,s:t"``. For hidden states, index 0 is the embedding output and i the output of decoder layer i;
for weights, i is decoder layer i (0-based). New objectives subclass ``Objective``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ObjectiveInputs:
    """What an objective may read for one micro-batch (teacher fields are None without an online teacher)."""

    student: nn.Module  # the causal LM (under any PEFT wrapper; LoRA layers active)
    teacher: nn.Module | None
    student_hidden_states: tuple[torch.Tensor, ...] | None  # (B, L, H) each; [0] = embeddings
    teacher_hidden_states: tuple[torch.Tensor, ...] | None  # (B, L, H_t) each
    attention_mask: torch.Tensor  # (B, L), 1 on real tokens
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # batch entries named by ``batch_prefix``
    input_ids: torch.Tensor | None = None  # (B, L), the student's tokens


class Objective(nn.Module, ABC):
    """Base class: ``forward(inputs) -> scalar`` averaged over this micro-batch.

    Class attributes tell the trainer what to compute: ``needs_hidden_states`` (student and teacher run
    with ``output_hidden_states``) and ``needs_teacher`` (an online teacher model is required).
    ``batch_prefix``: batch entries whose names start with it are taken out of the model's inputs and
    handed over in ``ObjectiveInputs.extras`` (what a collator added for this objective). ``recording()``
    is entered around the student's forward pass (to capture activations with hooks). ``metrics`` is
    logged after each step as ``<name>_<key>``, besides the value itself as ``<name>_loss``.
    """

    needs_hidden_states: bool = False
    needs_teacher: bool = True
    batch_prefix: str | None = None

    def __init__(self, name: str, weight: float) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"objective {name!r}: weight must be >= 0, got {weight}")
        self.name = name
        self.weight = float(weight)

    def recording(self) -> AbstractContextManager[Any]:
        """Entered around the student's forward pass; nothing by default."""
        return nullcontext()

    @property
    def metrics(self) -> dict[str, float]:
        """Extra figures of the last call (logged per step); none by default."""
        return {}

    def save_extra(self, output_dir: str) -> None:
        """Write what the objective needs saved beside the model besides its parameters; nothing by default."""

    @abstractmethod
    def forward(self, inputs: ObjectiveInputs) -> torch.Tensor:
        """This micro-batch's value (a scalar tensor, differentiable where it should train something)."""


def parse_layer_map(spec: str | dict[int, int], student_layers: int, teacher_layers: int, *, hidden_states: bool) -> dict[int, int]:
    """``{student_index: teacher_index}`` from ``"auto"`` or ``"s:t,s:t"``, checked against the valid ranges.

    ``hidden_states=True``: indices into ``output_hidden_states`` (0 = embeddings, n = last layer), and
    ``"auto"`` maps each i in 1..n to ``round(i * n_t / n_s)``. ``hidden_states=False``: 0-based decoder
    layers 0..n-1, and ``"auto"`` maps layer i to ``round((i + 1) * n_t / n_s) - 1`` (same relative depth).
    """
    lo, s_hi, t_hi = (0, student_layers, teacher_layers) if hidden_states else (0, student_layers - 1, teacher_layers - 1)
    if isinstance(spec, dict):
        mapping = {int(s): int(t) for s, t in spec.items()}
    elif spec.strip() == "auto":
        shift = 0 if hidden_states else 1
        first = 1 if hidden_states else 0
        mapping = {
            i: round((i + shift) * teacher_layers / student_layers) - shift for i in range(first, s_hi + 1)
        }
    else:
        mapping = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            s, sep, t = part.partition(":")
            if not sep or not s.strip().isdigit() or not t.strip().isdigit():
                raise ValueError(f"layer map {spec!r}: {part!r} is not 'student:teacher' (e.g. '3:6,6:12' or 'auto')")
            if int(s) in mapping:
                raise ValueError(f"layer map {spec!r}: student layer {int(s)} is mapped twice")
            mapping[int(s)] = int(t)
    if not mapping:
        raise ValueError(f"layer map {spec!r} maps no layers")
    for s, t in mapping.items():
        if not lo <= s <= s_hi:
            raise ValueError(f"layer map {spec!r}: student index {s} is outside {lo}..{s_hi}")
        if not lo <= t <= t_hi:
            raise ValueError(f"layer map {spec!r}: teacher index {t} is outside {lo}..{t_hi}")
    return dict(sorted(mapping.items()))


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM (``model.model.layers`` for Llama, Qwen, Mistral, Gemma, ...)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(core, "base_model", core)
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find the decoder layers of {type(core).__name__} (expected .model.layers)")
    return layers


def effective_weight(module: nn.Module) -> torch.Tensor:
    """A linear layer's weight as the forward pass uses it: with the active LoRA deltas added."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight
    weight = base.weight
    for adapter in getattr(module, "active_adapters", []):
        if adapter in getattr(module, "lora_A", {}) and not getattr(module, "disable_adapters", False):
            weight = weight + module.get_delta_weight(adapter)
    return weight


class HiddenStateObjective(Objective):
    """Projected student hidden states match the teacher's at mapped layers, on every real token.

    ``mse``: ``|P h_s - h_t|^2 / mean |h_t|^2`` (normalised so deep layers with large activations do not
    dominate); ``cosine``: ``1 - cos(P h_s, h_t)``. P is a learned ``H_s -> H_t`` linear map per mapped
    layer, initialised to the identity (or its rectangular cut) so a student derived from its teacher
    starts at its own pre-training.
    """

    needs_hidden_states = True

    def __init__(
        self,
        layer_map: dict[int, int],
        student_size: int,
        teacher_size: int,
        *,
        weight: float = 1.0,
        loss_type: str = "mse",
        name: str = "hidden",
    ) -> None:
        super().__init__(name, weight)
        if loss_type not in ("mse", "cosine"):
            raise ValueError(f"hidden-state loss must be mse or cosine, got {loss_type!r}")
        self.layer_map = dict(layer_map)
        self.loss_type = loss_type
        self.projections = nn.ModuleDict()
        for s in self.layer_map:
            proj = nn.Linear(student_size, teacher_size, bias=False)
            with torch.no_grad():
                proj.weight.copy_(torch.eye(teacher_size, student_size))
            self.projections[str(s)] = proj

    @classmethod
    def from_models(cls, student: nn.Module, teacher: nn.Module, layer_map: str | dict[int, int] = "auto", **kwargs: Any):
        s_cfg, t_cfg = _text_config(student), _text_config(teacher)
        mapping = parse_layer_map(layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers, hidden_states=True)
        return cls(mapping, s_cfg.hidden_size, t_cfg.hidden_size, **kwargs)

    def forward(self, inputs: ObjectiveInputs) -> torch.Tensor:
        if inputs.student_hidden_states is None or inputs.teacher_hidden_states is None:
            raise ValueError(f"objective {self.name!r} needs the hidden states of the student and of an online teacher")
        mask = inputs.attention_mask.bool()
        losses = []
        for s, t in self.layer_map.items():
            proj = self.projections[str(s)]
            h_s = inputs.student_hidden_states[s][mask.to(inputs.student_hidden_states[s].device)]  # (N, H_s)
            h_t = inputs.teacher_hidden_states[t][mask.to(inputs.teacher_hidden_states[t].device)].to(h_s.device)
            with torch.autocast(h_s.device.type, enabled=False):
                pred = proj(h_s.float().to(proj.weight.dtype)).float()  # (N, H_t)
                target = h_t.float()
                if self.loss_type == "mse":
                    losses.append((pred - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp(min=1e-12))
                else:
                    losses.append((1.0 - F.cosine_similarity(pred, target, dim=-1)).mean())
        return torch.stack(losses).mean()


class LayerWeightObjective(Objective):
    """Student attention weights pulled towards the teacher's: ``|A W_s B - W_t|^2 / |W_t|^2``.

    For each mapped decoder layer pair and each module name (``self_attn.q_proj`` and
    ``self_attn.o_proj`` by default), ``W_s`` is the student's effective weight (LoRA deltas included)
    and ``W_t`` the teacher's. ``A`` (out_t x out_s) and ``B`` (in_s x in_t) are learned, identity-
    initialised, and exist only where the shapes differ. It reads no activations: the value is the same
    for every micro-batch.
    """

    def __init__(
        self,
        layer_map: dict[int, int],
        student_shapes: dict[str, tuple[int, int]],
        teacher_shapes: dict[str, tuple[int, int]],
        *,
        modules: tuple[str, ...] = ("self_attn.q_proj", "self_attn.o_proj"),
        weight: float = 1.0,
        name: str = "weights",
    ) -> None:
        super().__init__(name, weight)
        self.layer_map = dict(layer_map)
        self.modules_to_match = tuple(modules)
        self.left = nn.ParameterDict()
        self.right = nn.ParameterDict()
        for module in self.modules_to_match:
            (out_s, in_s), (out_t, in_t) = student_shapes[module], teacher_shapes[module]
            key = module.replace(".", "__")
            if out_s != out_t:
                self.left[key] = nn.Parameter(torch.eye(out_t, out_s))
            if in_s != in_t:
                self.right[key] = nn.Parameter(torch.eye(in_s, in_t))

    @classmethod
    def from_models(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        layer_map: str | dict[int, int] = "auto",
        modules: tuple[str, ...] | list[str] = ("self_attn.q_proj", "self_attn.o_proj"),
        **kwargs: Any,
    ):
        s_layers, t_layers = decoder_layers(student), decoder_layers(teacher)
        mapping = parse_layer_map(layer_map, len(s_layers), len(t_layers), hidden_states=False)

        def shapes(layers: nn.ModuleList) -> dict[str, tuple[int, int]]:
            out = {}
            for module in modules:
                try:
                    w = effective_weight(layers[0].get_submodule(module))
                except AttributeError:
                    raise ValueError(f"decoder layers of {type(layers[0]).__name__} have no module {module!r}") from None
                out[module] = tuple(w.shape)
            return out

        return cls(mapping, shapes(s_layers), shapes(t_layers), modules=tuple(modules), **kwargs)

    def forward(self, inputs: ObjectiveInputs) -> torch.Tensor:
        if inputs.teacher is None:
            raise ValueError(f"objective {self.name!r} needs an online teacher model")
        s_layers, t_layers = decoder_layers(inputs.student), decoder_layers(inputs.teacher)
        losses = []
        for s, t in self.layer_map.items():
            for module in self.modules_to_match:
                key = module.replace(".", "__")
                w_s = effective_weight(s_layers[s].get_submodule(module)).float()
                with torch.no_grad():
                    w_t = effective_weight(t_layers[t].get_submodule(module)).float().to(w_s.device)
                if key in self.left:
                    w_s = self.left[key].float() @ w_s
                if key in self.right:
                    w_s = w_s @ self.right[key].float()
                losses.append((w_s - w_t).pow(2).sum() / w_t.pow(2).sum().clamp(min=1e-12))
        return torch.stack(losses).mean()
