"""One table: fresh students trained on each synthetic set and on real baselines of the same size.

Every row uses the same protocol (``training.trajectory.fit``): ``seeds`` fresh students, full-batch
plain SGD for ``steps`` steps, the learning rate and stopping point chosen on the validation split from
the same grid (a synthetic set's own learnt rate added to it), the test accuracy of that choice
reported as mean ± std over seeds. Rows:

- each synthetic set;
- ``random``: a random real subset of the same size (a new subset per seed);
- ``kcenter``, ``herding``: coresets in the sentence encoder's embedding space;
- ``random-soft``: a random subset labelled by an expert's softened predictions (Qin et al. 2024: a
  label is worth a thousand images), epoch and temperature chosen on validation;
- ``full``: students trained on all the training data with the experts' recipe (minibatch SGD at each
  grid rate, epochs of the experts), chosen on validation;
- ``expert``: the experts' own test accuracy at their epoch best on validation (the ceiling).
Chance is 1 / classes; the table's last column is each row's share of the full-data gain over chance.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data.records import atomic_write_text
from training.trajectory.config import EvaluateConfig
from training.trajectory.coreset import per_class
from training.trajectory.errors import TrajectorySetupError
from training.trajectory.experts import (
    Encoded,
    Experts,
    accuracy,
    epoch_order,
    load_experts,
    train_epoch,
)
from training.trajectory.fit import EVAL_SEED, FitResult, SmallSet, best_fit, nan_low
from training.trajectory.synthetic import SyntheticSet

logger = logging.getLogger(__name__)
BASELINES = ("random", "kcenter", "herding", "random-soft", "full", "expert")


@dataclass
class Row:
    name: str
    rows: int
    accuracies: list[float]
    chosen: list[str] = field(default_factory=list)  # the validation-chosen settings per seed
    seconds: float = 0.0
    note: str = ""

    @property
    def mean(self) -> float:
        return statistics.mean(self.accuracies) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def real_set(name: str, experts: Experts, rows: list[int], targets: torch.Tensor | None = None) -> SmallSet:
    enc = experts.setup.encoded["train"]
    ids, mask = enc.ids[rows], enc.mask[rows]
    y = targets if targets is not None else F.one_hot(enc.labels[rows], len(experts.setup.names)).float()
    return SmallSet(name, experts.setup.embedder.embed_ids(ids), mask, y)


def encoder_features(experts: Experts) -> torch.Tensor:
    """The sentence encoder's normalised embeddings of the training texts (the coresets' space), read
    at the students' token length (the setup loads the encoder at it)."""
    return experts.setup.encoder.encode(experts.setup.splits["train"].texts, convert_to_tensor=True, batch_size=64, show_progress_bar=False, normalize_embeddings=True).float()


def expert_logits(experts: Experts, expert: int, epoch: int, enc: Encoded) -> torch.Tensor:
    from torch.func import functional_call

    model = experts.initial_model(expert)

    state = {**dict(model.named_parameters()), **dict(model.named_buffers()), **experts.checkpoint(expert, epoch)}
    with torch.no_grad():
        return functional_call(model, state, (experts.setup.embedder.embed_ids(enc.ids),), {"attention_mask": enc.mask})


def fmt_choice(r: FitResult) -> str:
    return f"lr {r.lr:g}, {r.step} steps"


@dataclass
class Evaluation:
    rows: list[Row]
    classes: list[str]


def evaluate_sets(cfg: EvaluateConfig) -> Evaluation:
    from tqdm.auto import tqdm

    sets = [SyntheticSet.load(s) for s in cfg.synthetic]
    folder = cfg.experts or (sets[0].card.get("experts", {}).get("folder") if sets else None)
    if not folder:
        raise TrajectorySetupError("give --experts (or --synthetic, whose card names its experts)")
    experts = load_experts(folder)
    setup = experts.setup
    if cfg.data:
        from training.trajectory.data import read_text_jsonl

        test = read_text_jsonl(cfg.data, experts.settings["text_field"], experts.settings["label_field"], names=setup.names)
        ids, mask = setup.embedder.ids(test.texts)
        setup.encoded["test"] = Encoded(ids, mask, torch.tensor(test.labels))
        overlap = len(set(test.texts) & set(setup.splits["train"].texts))
        if overlap:
            logger.warning("%s: %d of its %d texts are in the experts' training split; the test accuracies are inflated", cfg.data, overlap, len(test))
    for path, s in zip(cfg.synthetic, sets):
        if s.card.get("source_fingerprint") != experts.settings["fingerprint"]:
            raise TrajectorySetupError(f"{path} was distilled from other data than the experts in {folder} (fingerprints differ)")
        made = s.card.get("experts", {})
        differ = [key for key in ("model", "train", "max_length", "width") if key in made and made[key] != experts.settings.get(key)]
        if differ or tuple(s.embeds.shape[1:]) != (experts.settings["max_length"], setup.embedder.hidden):
            raise TrajectorySetupError(f"{path} was distilled for another student than the experts in {folder} ({', '.join(differ) or 'row shape'} differ)")
    clash = experts.seeds & {EVAL_SEED + seed for seed in range(cfg.seeds)}
    if clash:
        raise TrajectorySetupError(f"expert seeds {sorted(clash)} coincide with the evaluation students' ({EVAL_SEED} + seed); train the experts with another --seed")
    k = cfg.per_class or (sets[0].card.get("per_class") if sets else 10)
    baselines = [b.strip() for b in cfg.baselines.split(",") if b.strip()]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise TrajectorySetupError(f"--baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    rows: list[Row] = []
    seeds = range(cfg.seeds)
    bar = tqdm(total=len(sets) + len(baselines), desc="evaluate", disable=not cfg.progress)
    for path, s in zip(cfg.synthetic, sets):
        t0 = time.perf_counter()
        small = SmallSet(Path(path).name, s.embeds, s.mask, s.labels().detach(), s.lrs())
        fits = [best_fit(setup, small, EVAL_SEED + seed, cfg.lr_grid, cfg.steps) for seed in seeds]
        rows.append(Row(f"distilled: {Path(path).name} ({s.card.get('init', {}).get('init', '?')}, {s.label_kind} labels)", s.embeds.shape[0], [f.test for f in fits], [fmt_choice(f) for f in fits], time.perf_counter() - t0,
                        f"distilled in {s.card.get('total_seconds', '?')} s, peak memory {s.card.get('peak_memory_mb', '?')} MB; its learnt lr is tried too"))
        bar.update()
    by_class = setup.splits["train"].by_class()
    features = encoder_features(experts) if {"kcenter", "herding"} & set(baselines) else None
    for b in baselines:
        t0 = time.perf_counter()
        if b in ("random", "kcenter", "herding"):
            fits = []
            for seed in seeds:
                chosen = per_class(by_class, features, k, b, seed) if b != "random" else per_class(by_class, torch.empty(0), k, "random", seed)
                fits.append(best_fit(setup, real_set(b, experts, chosen), EVAL_SEED + seed, cfg.lr_grid, cfg.steps))
            rows.append(Row(b, len(chosen), [f.test for f in fits], [fmt_choice(f) for f in fits], time.perf_counter() - t0))
        elif b == "random-soft":
            rows.append(random_soft(cfg, experts, k, by_class))
        elif b == "full":
            rows.append(full_data(cfg, experts))
        else:
            rows.append(expert_row(experts))
        bar.update()
    bar.close()
    if cfg.out:
        write_csv(rows, Path(cfg.out), len(setup.names))
    return Evaluation(rows, setup.names)


def random_soft(cfg: EvaluateConfig, experts: Experts, k: int, by_class: list[list[int]]) -> Row:
    """Random subsets with expert 0's softened predictions as targets; (epoch, temperature) on validation."""
    t0 = time.perf_counter()
    setup, epochs = experts.setup, experts.settings["epochs"]
    enc = setup.encoded["train"]
    candidates = sorted({max(1, epochs // 4), max(1, epochs // 2), epochs})
    accs, chosen = [], []
    for seed in range(cfg.seeds):
        rows = per_class(by_class, torch.empty(0), k, "random", seed)
        sub = Encoded(enc.ids[rows], enc.mask[rows], enc.labels[rows])
        best: tuple[FitResult, str] | None = None
        for epoch in candidates:
            logits = expert_logits(experts, 0, epoch, sub)
            for temp in (1.0, 2.0):
                r = best_fit(setup, real_set("random-soft", experts, rows, F.softmax(logits / temp, -1)), EVAL_SEED + seed, cfg.lr_grid, cfg.steps)
                if best is None or nan_low(r.val) > nan_low(best[0].val):
                    best = (r, f"expert epoch {epoch}, T {temp:g}, {fmt_choice(r)}")
        accs.append(best[0].test)
        chosen.append(best[1])
    return Row("random-soft", len(rows), accs, chosen, time.perf_counter() - t0)


def full_data(cfg: EvaluateConfig, experts: Experts) -> Row:
    """Students trained on all the training data (experts' epochs and batch), rate chosen on validation."""
    t0 = time.perf_counter()
    setup = experts.setup
    epochs = cfg.full_epochs or experts.settings["epochs"]
    enc = setup.encoded["train"]
    accs, chosen = [], []
    grid = sorted(set(cfg.lr_grid) | {experts.settings["learning_rate"]})
    for seed in range(cfg.seeds):
        best: tuple[float, float, str] | None = None
        for lr in grid:
            model = setup.student(EVAL_SEED + seed)
            for epoch in range(epochs):
                loss = train_epoch(model, setup.embedder, enc, lr, experts.settings["batch_size"], epoch_order(len(enc), EVAL_SEED + seed, 0, epoch))
                if not math.isfinite(loss):
                    break
                val = accuracy(model, setup.embedder, setup.encoded["val"])
                if best is None or nan_low(val) > nan_low(best[0]):
                    best = (val, accuracy(model, setup.embedder, setup.encoded["test"]), f"lr {lr:g}, {epoch + 1} epochs")
        accs.append(best[1])
        chosen.append(best[2])
    return Row("full data", len(enc), accs, chosen, time.perf_counter() - t0)


def expert_row(experts: Experts) -> Row:
    """Each expert at its epoch best on validation, measured on the test split in use (``--data`` may
    have replaced the experts' own)."""
    accs, chosen = [], []
    for i, r in enumerate(experts.records):
        e = max(range(len(r["val_accuracy"])), key=lambda j: (nan_low(r["val_accuracy"][j]), -j))
        accs.append(accuracy(experts.initial_model(i), experts.setup.embedder, experts.setup.encoded["test"], experts.checkpoint(i, e)))
        chosen.append(f"epoch {e}")
    return Row("expert (its own training)", len(experts.setup.splits["train"]), accs, chosen, note=f"{experts.count} experts")


def gain_share(row: Row, full: float, chance: float) -> float:
    return (row.mean - chance) / (full - chance) if full > chance else float("nan")


def print_table(rows: list[Row], n_classes: int, title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    chance = 1 / n_classes
    full = next((r.mean for r in rows if r.name == "full data"), float("nan"))
    table = Table(title=title or f"test accuracy, mean ± std over seeds (chance {chance:.3f})")
    for col in ("set", "rows", "accuracy", "share of full-data gain", "chosen on validation", "seconds", "note"):
        table.add_column(col, justify="right" if col in ("rows", "accuracy", "share of full-data gain", "seconds") else "left")
    for r in rows:
        share = gain_share(r, full, chance)
        table.add_row(r.name, str(r.rows), f"{r.mean:.4f} ± {r.std:.4f}", "-" if math.isnan(share) else f"{share:.0%}", _summary(r.chosen), f"{r.seconds:.0f}", r.note)
    Console(width=max(Console().width, 150)).print(table)


def _summary(chosen: list[str]) -> str:
    """The most frequent choice and how often it was made (every seed's choice is in the CSV)."""
    if not chosen:
        return ""
    top = max(set(chosen), key=chosen.count)
    return top if chosen.count(top) == len(chosen) else f"{top} ({chosen.count(top)} of {len(chosen)})"


def write_csv(rows: list[Row], path: Path, n_classes: int) -> None:
    import io

    chance = 1 / n_classes
    full = next((r.mean for r in rows if r.name == "full data"), float("nan"))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["set", "rows", "mean", "std", "seeds", "accuracies", "share_of_full_gain", "chosen", "seconds", "note"])
    for r in rows:
        w.writerow([r.name, r.rows, round(r.mean, 4), round(r.std, 4), len(r.accuracies), " ".join(f"{a:.4f}" for a in r.accuracies), round(gain_share(r, full, chance), 4), " | ".join(r.chosen), round(r.seconds, 1), r.note])
    atomic_write_text(path, buf.getvalue())


def summary(rows: list[Row]) -> dict[str, Any]:
    return {r.name: {"mean": r.mean, "std": r.std, "accuracies": r.accuracies} for r in rows}


