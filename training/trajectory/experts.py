"""Expert trajectories: students trained on the real data with plain SGD at a constant learning rate,
their trained parameters saved at epoch 0 and after every epoch (MTT's ``buffer.py``).

Folder: ``experts.json`` (the settings, the data's fingerprint, class names, the split sizes) and
``expert_<k>/epoch_<e>.safetensors`` plus ``expert_<k>/trajectory.json`` (per-epoch train loss and
validation / test accuracy), the last written when expert k is complete. A killed run resumes from the
last saved epoch: each epoch's batch order is drawn from (seed, expert, epoch), so the resumed expert
is the one an uninterrupted run makes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.records import atomic_write_json
from training.trajectory.config import ExpertsConfig
from training.trajectory.data import TextDataset, read_text_jsonl, split
from training.trajectory.errors import TrajectorySetupError
from training.trajectory.losses import soft_cross_entropy
from training.trajectory.models import (
    TokenEmbedder,
    build_student,
    freeze_except,
    load_embedder,
    trainable_names,
)

logger = logging.getLogger(__name__)
FORMAT = 1


@dataclass
class Encoded:
    """A split as token ids (embedded on the fly through the frozen table) and class indices."""

    ids: torch.Tensor  # (N, L)
    mask: torch.Tensor  # (N, L)
    labels: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class ExpertSetup:
    """Everything the experts, the distillation and the evaluation share."""

    cfg: ExpertsConfig
    embedder: TokenEmbedder
    encoder: Any  # the SentenceTransformer the token table comes from
    backbone: Any
    splits: dict[str, TextDataset]
    encoded: dict[str, Encoded]
    names: list[str]

    def student(self, seed: int) -> nn.Module:
        model = build_student(self.cfg.model.partition(":")[0], self.embedder, len(self.names), self.backbone, self.cfg.width, seed)
        freeze_except(model, trainable_names(model, self.cfg.train))
        return model

    def trained(self) -> list[str]:
        return trainable_names(self.student(0), self.cfg.train)


def load_setup(cfg: ExpertsConfig) -> ExpertSetup:
    """Read and split the data, load the encoder's tokenizer and table (and backbone)."""
    ds = read_text_jsonl(cfg.data, cfg.text_field, cfg.label_field)
    parts = split(ds, cfg.val_fraction, 0.0 if cfg.test else cfg.test_fraction)
    if cfg.test:
        parts["test"] = read_text_jsonl(cfg.test, cfg.text_field, cfg.label_field, names=ds.names)
    for name in ("train", "val", "test"):
        if len(parts[name]) == 0:
            raise TrajectorySetupError(f"the {name} split of {cfg.data} is empty (validation chooses every evaluation's learning rate and stopping point): give more rows or change --val-fraction / --test-fraction")
    embedder, encoder = load_embedder(cfg.model.partition(":")[2], cfg.max_length)
    encoded = {}
    for name, part in parts.items():
        ids, mask = embedder.ids(part.texts) if len(part) else (torch.zeros(0, cfg.max_length, dtype=torch.long),) * 2
        encoded[name] = Encoded(ids, mask, torch.tensor(part.labels, dtype=torch.long))
    return ExpertSetup(cfg, embedder, encoder, encoder[0].auto_model if cfg.model.startswith("backbone:") else None, parts, encoded, ds.names)


def accuracy(model: nn.Module, embedder: TokenEmbedder, data: Encoded, params: dict[str, torch.Tensor] | None = None, batch: int = 512) -> float:
    """Accuracy of ``model`` (with ``params`` swapped in, if given) on ``data``."""
    if len(data) == 0:
        return float("nan")
    from torch.func import functional_call

    state = {**dict(model.named_parameters()), **dict(model.named_buffers()), **(params or {})}
    hits = 0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = embedder.embed_ids(data.ids[i : i + batch])
            logits = functional_call(model, state, (x,), {"attention_mask": data.mask[i : i + batch]})
            hits += int((logits.argmax(-1) == data.labels[i : i + batch]).sum())
    return hits / len(data)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object file of ours; a missing, broken or foreign file is a one-line error naming it."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrajectorySetupError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(obj, dict):
        raise TrajectorySetupError(f"{path}: not {what} (expected a JSON object)")
    return obj


def epoch_order(n: int, seed: int, expert: int, epoch: int) -> torch.Tensor:
    """Expert ``expert``'s batch order in ``epoch``: a function of the three alone (resume-safe)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed((seed * 1_000_003 + expert * 10_007 + epoch) % 2**63))


def train_epoch(model: nn.Module, embedder: TokenEmbedder, data: Encoded, lr: float, batch_size: int, order: torch.Tensor, targets: torch.Tensor | None = None) -> float:
    """One epoch of plain SGD over ``data`` in ``order``; the mean training loss. ``targets`` (N, C)
    replace the hard labels (soft-label baselines)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total, batches = 0.0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        logits = model(embedder.embed_ids(data.ids[idx]), data.mask[idx])
        y = targets[idx] if targets is not None else torch.nn.functional.one_hot(data.labels[idx], logits.shape[-1]).to(logits.dtype)
        loss = soft_cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        total, batches = total + float(loss.detach()), batches + 1
    return total / max(batches, 1)


def snapshot(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    state = dict(model.named_parameters())
    return {n: state[n].detach().clone().contiguous() for n in names}


def settings_of(setup: ExpertSetup) -> dict[str, Any]:
    cfg = setup.cfg
    keep = ("data", "test", "text_field", "label_field", "model", "train", "epochs", "learning_rate", "batch_size", "max_length", "width", "val_fraction", "test_fraction", "seed")
    return {"format": FORMAT, **{k: getattr(cfg, k) for k in keep}, "classes": setup.names, "fingerprint": setup.splits["train"].fingerprint(),
            "rows": {s: len(d) for s, d in setup.splits.items()}, "trained": setup.trained()}


def train_experts(cfg: ExpertsConfig) -> tuple[ExpertSetup, list[dict[str, Any]]]:
    """Train (or finish) ``cfg.experts`` experts into ``cfg.out``; per expert its per-epoch record."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    setup = load_setup(cfg)
    out = Path(cfg.out)
    settings = settings_of(setup)
    index = out / "experts.json"
    if index.is_file():
        saved = read_json(index, "an experts index")
        changed = sorted(k for k in settings if k != "experts" and saved.get(k) != json.loads(json.dumps(settings[k])))
        if changed:
            raise TrajectorySetupError(f"{out} holds experts trained with other settings ({', '.join(changed)}); choose another --out to keep them")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(index, settings | {"experts": max(cfg.experts, read_json(index, "an experts index").get("experts", 0) if index.is_file() else 0)})
    names = settings["trained"]
    n_params = sum(p.numel() for n, p in setup.student(0).named_parameters() if n in set(names))
    print(f"data: {', '.join(f'{s} {len(d)}' for s, d in setup.splits.items())}; {len(setup.names)} classes; student {cfg.model}, {n_params:,} trained parameters ({cfg.train})")
    records = []
    for k in range(cfg.experts):
        folder = out / f"expert_{k}"
        done = folder / "trajectory.json"
        if done.is_file():
            records.append(read_json(done, "an expert record"))
            print(f"expert {k}: finished before (final test accuracy {records[-1]['test_accuracy'][-1]:.3f})")
            continue
        folder.mkdir(exist_ok=True)
        model = setup.student(cfg.seed + k)
        state = dict(model.named_parameters())
        history = {"train_loss": [float("nan")], "val_accuracy": [], "test_accuracy": []}
        first = 0
        while (folder / f"epoch_{first + 1:03d}.safetensors").is_file():
            first += 1
        if first:  # resume from the last saved epoch
            with torch.no_grad():
                for n, t in load_file(str(folder / f"epoch_{first:03d}.safetensors")).items():
                    state[n].copy_(t)
            # The accuracies are measured again from the checkpoints (a kill between a checkpoint and
            # partial.json would shift them); the training losses are kept where partial.json has them.
            losses = read_json(folder / "partial.json", "a partial expert record").get("train_loss", []) if (folder / "partial.json").is_file() else []
            history = {"train_loss": [losses[e] if e < len(losses) else float("nan") for e in range(first + 1)], "val_accuracy": [], "test_accuracy": []}
            for e in range(first + 1):
                ckpt = load_file(str(folder / f"epoch_{e:03d}.safetensors"))
                history["val_accuracy"].append(accuracy(model, setup.embedder, setup.encoded["val"], ckpt))
                history["test_accuracy"].append(accuracy(model, setup.embedder, setup.encoded["test"], ckpt))
        else:
            save_file(snapshot(model, names), str(folder / "epoch_000.safetensors"))
            history["val_accuracy"].append(accuracy(model, setup.embedder, setup.encoded["val"]))
            history["test_accuracy"].append(accuracy(model, setup.embedder, setup.encoded["test"]))
        bar = tqdm(range(first, cfg.epochs), desc=f"expert {k}", disable=not cfg.progress, leave=False)
        for epoch in bar:
            order = epoch_order(len(setup.encoded["train"]), cfg.seed, k, epoch)
            loss = train_epoch(model, setup.embedder, setup.encoded["train"], cfg.learning_rate, cfg.batch_size, order)
            if not torch.isfinite(torch.tensor(loss)):
                raise TrajectorySetupError(f"expert {k} diverged at epoch {epoch + 1} (loss {loss}); lower --learning-rate")
            tmp = folder / f".epoch_{epoch + 1:03d}.tmp"
            save_file(snapshot(model, names), str(tmp))
            tmp.rename(folder / f"epoch_{epoch + 1:03d}.safetensors")
            history["train_loss"].append(loss)
            history["val_accuracy"].append(accuracy(model, setup.embedder, setup.encoded["val"]))
            history["test_accuracy"].append(accuracy(model, setup.embedder, setup.encoded["test"]))
            atomic_write_json(folder / "partial.json", history)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{history['val_accuracy'][-1]:.3f}")
        record = {"expert": k, "seed": cfg.seed + k, **history}
        atomic_write_json(done, record)
        (folder / "partial.json").unlink(missing_ok=True)
        records.append(record)
        print(f"expert {k}: test accuracy by epoch " + " ".join(f"{a:.3f}" for a in history["test_accuracy"]))
    return setup, records


@dataclass
class Experts:
    """A finished experts folder, read back: settings, the setup, and checkpoints on demand."""

    folder: Path
    settings: dict[str, Any]
    setup: ExpertSetup
    records: list[dict[str, Any]]

    @property
    def count(self) -> int:
        return len(self.records)

    def checkpoint(self, expert: int, epoch: int) -> dict[str, torch.Tensor]:
        """The trained parameters of the ``expert``-th complete expert after ``epoch`` epochs."""
        from safetensors.torch import load_file

        return load_file(str(self.folder / f"expert_{self.records[expert]['expert']}" / f"epoch_{epoch:03d}.safetensors"))

    def initial_model(self, expert: int) -> nn.Module:
        """The ``expert``-th complete expert's network at its initialisation: its frozen (untrained)
        tensors are those of its own seed, which the checkpoints do not hold."""
        if expert not in self._initial:
            self._initial[expert] = self.setup.student(self.records[expert]["seed"])
        return self._initial[expert]

    @property
    def seeds(self) -> set[int]:
        return {r["seed"] for r in self.records}

    def __post_init__(self) -> None:
        self._initial: dict[int, nn.Module] = {}


def load_experts(folder: str | Path, progress: bool = False) -> Experts:
    """Read an experts folder (only complete experts count) and rebuild its setup."""
    folder = Path(folder)
    index = folder / "experts.json"
    if not index.is_file():
        raise TrajectorySetupError(f"{folder} holds no experts (no experts.json): run `python -m training.trajectory experts` first")
    settings = read_json(index, "an experts index")
    if settings.get("format") != FORMAT:
        raise TrajectorySetupError(f"{index}: format {settings.get('format')!r}, this version reads {FORMAT}")
    missing = [k for k in ("data", "model", "train", "epochs", "learning_rate", "batch_size", "fingerprint", "trained", "classes") if k not in settings]
    if missing:
        raise TrajectorySetupError(f"{index}: not an experts index of this version (no {', '.join(missing)})")
    records = [read_json(p, "an expert record") for p in sorted(folder.glob("expert_*/trajectory.json"), key=lambda p: int(p.parent.name.split("_")[1]))]
    if not records:
        raise TrajectorySetupError(f"{folder}: no expert is complete yet; run `experts` again to finish them")
    fields = {k: settings[k] for k in ExpertsConfig.__dataclass_fields__ if k in settings and k not in ("out", "experts", "progress")}
    cfg = ExpertsConfig(out=str(folder), progress=progress, experts=len(records), **fields)
    setup = load_setup(cfg)
    if setup.splits["train"].fingerprint() != settings["fingerprint"]:
        raise TrajectorySetupError(f"{cfg.data} changed since the experts in {folder} were trained (fingerprint {setup.splits['train'].fingerprint()} against {settings['fingerprint']})")
    return Experts(folder, settings, setup, records)

