"""The synthetic set: what dataset distillation learns, and its folder.

Learnable leaves: ``embeds`` (N, L, H) in the students' token-embedding space, ``label_param`` (N, C)
and ``lr_param`` (S,) with S = 1 (one learning rate) or the number of inner steps (one per step).
``mask`` (N, L) is fixed. Labels are ``hard`` (one-hot, not learnt), ``soft`` (softmax of learnt
logits) or ``unrestricted`` (the learnt vectors themselves, used as cross-entropy targets). Learning
rates go through softplus, so they stay positive (MTT's raw learnt rate can turn negative), and are
clamped to ``[lr_min, lr_max]``.

Folder: ``synthetic.safetensors`` (the tensors), ``card.json`` (how it was made: initialisation,
label kind, the source data's fingerprint, the expert settings, the distillation settings and its
log) and ``examples.txt`` (each row's nearest tokens, for a person to read). Written atomically.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.trajectory.errors import TrajectorySetupError

LABEL_KINDS = ("hard", "soft", "unrestricted")
FORMAT = 1


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0), stable for small y."""
    return y + math.log(-math.expm1(-y))


def label_logits(classes: torch.Tensor, n_classes: int, confidence: float) -> torch.Tensor:
    """Logits whose softmax puts ``confidence`` on each row's class and the rest evenly elsewhere
    (softmax of a plain one-hot would put only e / (e + C - 1) there: 0.35 for six classes)."""
    if n_classes == 1:
        return torch.zeros(len(classes), 1)
    margin = math.log(confidence * (n_classes - 1) / (1 - confidence))
    return F.one_hot(classes, n_classes).float() * margin


@dataclass
class SyntheticSet:
    """A learnable synthetic training set (see the module docstring)."""

    embeds: torch.Tensor  # (N, L, H)
    mask: torch.Tensor  # (N, L)
    classes: torch.Tensor  # (N,) the class each row was made for
    label_param: torch.Tensor  # (N, C)
    lr_param: torch.Tensor  # (S,)
    label_kind: str = "hard"
    lr_min: float = 1e-4
    lr_max: float = 10.0
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label_kind not in LABEL_KINDS:
            raise TrajectorySetupError(f"--labels must be one of {', '.join(LABEL_KINDS)}, got {self.label_kind!r}")
        n = self.embeds.shape[0]
        if self.mask.shape != self.embeds.shape[:2] or self.classes.shape != (n,) or self.label_param.shape[0] != n:
            raise TrajectorySetupError(f"inconsistent synthetic set: embeds {tuple(self.embeds.shape)}, mask {tuple(self.mask.shape)}, classes {tuple(self.classes.shape)}, labels {tuple(self.label_param.shape)}")

    @classmethod
    def create(cls, embeds: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor, n_classes: int, label_kind: str = "hard", lr: float = 0.01, lr_steps: int = 1, confidence: float = 0.9, **kwargs: Any) -> SyntheticSet:
        """A set made for learning: leaves that require grad (labels only when they are learnt)."""
        if label_kind == "hard":
            labels = F.one_hot(classes, n_classes).float()
        else:
            labels = label_logits(classes, n_classes, confidence) if label_kind == "soft" else F.one_hot(classes, n_classes).float()
        dtype = embeds.dtype
        syn = cls(embeds.detach().clone().requires_grad_(True), mask.clone(), classes.clone(), labels.to(dtype).requires_grad_(label_kind != "hard"),
                  torch.full((lr_steps,), inverse_softplus(lr), dtype=dtype).requires_grad_(True), label_kind, **kwargs)
        return syn

    @property
    def n_classes(self) -> int:
        return self.label_param.shape[1]

    @property
    def leaves(self) -> list[torch.Tensor]:
        """What the distillation optimises."""
        return [t for t in (self.embeds, self.label_param, self.lr_param) if t.requires_grad]

    def labels_of(self, param: torch.Tensor) -> torch.Tensor:
        """Row-wise map from label parameters to cross-entropy targets (so a batch's slice commutes)."""
        return F.softmax(param, dim=-1) if self.label_kind == "soft" else param

    def labels(self) -> torch.Tensor:
        return self.labels_of(self.label_param)

    def lr(self, step: int) -> torch.Tensor:
        """The learning rate of inner step ``step`` (a 0-d tensor in the graph of ``lr_param``)."""
        raw = self.lr_param[min(step, self.lr_param.shape[0] - 1)]
        return F.softplus(raw).clamp(self.lr_min, self.lr_max)

    def lr_index(self, step: int) -> int:
        return min(step, self.lr_param.shape[0] - 1)

    def lrs(self) -> list[float]:
        return [float(self.lr(i).detach()) for i in range(self.lr_param.shape[0])]

    def lr_at_bound(self) -> bool:
        """True when a learning rate sits at ``lr_min`` or ``lr_max``, where the clamp passes no gradient
        (the guard stops a run that keeps it there)."""
        return any(v >= self.lr_max * (1 - 1e-6) or v <= self.lr_min * (1 + 1e-6) for v in self.lrs())

    def save(self, folder: str | Path, tokens: list[str] | None = None, files: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> Path:
        """Write the folder atomically (a temporary sibling renamed into place), with ``files`` (name:
        text) beside the tensors and the old folder's ``keep`` entries carried over. An existing folder is replaced only when it is a synthetic set (or
        empty): ``--out`` pointed at a folder of other things must not delete them."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not (folder / "card.json").is_file():
            raise TrajectorySetupError(f"{folder} exists and is not a synthetic set: choose another --out (nothing was replaced)")
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {"embeds": self.embeds, "mask": self.mask, "classes": self.classes, "label_param": self.label_param, "lr_param": self.lr_param}
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "synthetic.safetensors"))
        card = self.card | {"format": FORMAT, "label_kind": self.label_kind, "lr_min": self.lr_min, "lr_max": self.lr_max, "rows": int(self.embeds.shape[0]),
                            "length": int(self.embeds.shape[1]), "hidden": int(self.embeds.shape[2]), "classes": int(self.n_classes), "learning_rates": self.lrs()}
        (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
        if tokens is not None:
            (tmp / "examples.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name in keep:
            if (folder / name).exists():
                (folder / name).rename(tmp / name)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, trainable: bool = False) -> SyntheticSet:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "synthetic.safetensors").is_file() or not (folder / "card.json").is_file():
            raise TrajectorySetupError(f"{folder} is not a synthetic set (it needs synthetic.safetensors and card.json)")
        try:
            card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise TrajectorySetupError(f"{folder}/card.json: cannot read the card ({e})") from None
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise TrajectorySetupError(f"{folder}/card.json: not a synthetic-set card of format {FORMAT}")
        missing = [k for k in ("label_kind", "lr_min", "lr_max") if k not in card]
        if missing:
            raise TrajectorySetupError(f"{folder}/card.json: no {', '.join(missing)}")
        try:
            t = load_file(str(folder / "synthetic.safetensors"))
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise TrajectorySetupError(f"{folder}/synthetic.safetensors: cannot read it ({e})") from None
        if set(t) != {"embeds", "mask", "classes", "label_param", "lr_param"}:
            raise TrajectorySetupError(f"{folder}/synthetic.safetensors: not a synthetic set (tensors {', '.join(sorted(t))})")
        syn = cls(t["embeds"], t["mask"], t["classes"], t["label_param"], t["lr_param"], card["label_kind"], card["lr_min"], card["lr_max"], card)
        if trainable:
            for leaf in (syn.embeds, syn.lr_param) + ((syn.label_param,) if syn.label_kind != "hard" else ()):
                leaf.requires_grad_(True)
        return syn
