"""The outer loop of trajectory matching (MTT's ``distill.py``, with softplus learning rates, three
meta-gradient modes and guards).

Each iteration draws an expert and a start epoch t < ``max_start_epoch``, unrolls ``syn_steps`` steps on
the synthetic set from θ*_t, and steps Adam on the synthetic embeddings, labels and learning rates to
reduce ‖θ̂ − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖². Guards stop the run with a message (the last good set is
kept) on a non-finite loss or gradient, a running loss above ``divergence_factor`` × its first value for
``patience`` iterations, or a learning rate held at ``lr_max`` for ``patience`` iterations. Every
``eval_every`` iterations a fresh student is trained on the set and its validation accuracy logged; the
set best on validation is the one written to ``out`` (the last one too, as ``out/last``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from training.trajectory.config import TTMConfig
from training.trajectory.errors import DistillationStopped, TrajectorySetupError
from training.trajectory.experts import Experts, load_experts
from training.trajectory.fit import CHECK_SEED, SmallSet, fit, nan_low
from training.trajectory.initialise import (
    Filler,
    Initial,
    init_manifold,
    init_mask_fill,
    init_noise,
    init_real,
    nearest_tokens,
)
from training.trajectory.losses import squared_distance
from training.trajectory.matching import movement, select_matched
from training.trajectory.synthetic import SyntheticSet
from training.trajectory.unroll import make_schedule, meta_gradient, problem_for

logger = logging.getLogger(__name__)


@dataclass
class DistillResult:
    synthetic: SyntheticSet
    folder: Path
    log: list[dict[str, Any]]
    stopped: str | None  # the guard's message when one stopped the run
    seconds: float
    peak_memory_mb: float  # above the level before the run started


def initial_set(cfg: TTMConfig, experts: Experts) -> Initial:
    setup = experts.setup
    train = setup.splits["train"]
    rng = random.Random(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.init == "real":
        return init_real(train, setup.embedder, cfg.per_class, rng)
    if cfg.init == "noise":
        return init_noise(train, setup.embedder, cfg.per_class, generator)
    if cfg.init == "manifold":
        return init_manifold(train, setup.embedder, cfg.per_class, cfg.pca_variance, generator)
    return init_mask_fill(train, setup.embedder, cfg.per_class, cfg.mask_ratio, cfg.fills, Filler(cfg.fill_model, cfg.fill_top_k, generator), rng, cfg.progress)


def matched_names(cfg: TTMConfig, experts: Experts) -> list[str]:
    trained = experts.settings["trained"]
    if cfg.match == "all":
        return list(trained)
    epochs = experts.settings["epochs"]
    initial = [experts.checkpoint(k, 0) for k in range(experts.count)]
    final = [experts.checkpoint(k, epochs) for k in range(experts.count)]
    sizes = {n: t.numel() for n, t in initial[0].items()}
    return select_matched(cfg.match, sizes, movement(initial, final), cfg.seed)


class PeakMemory:
    """Peak resident memory above the level at ``start()``: Linux's VmHWM reset through
    /proc/self/clear_refs where it can be, else the process's lifetime peak (ru_maxrss)."""

    def __init__(self) -> None:
        self.reset = False
        self.base = 0.0

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.base = self._status("VmRSS:") or 0.0

    def peak_mb(self) -> float:
        """Megabytes above the level at start (or the lifetime peak, when the peak could not be reset)."""
        import resource

        hwm = self._status("VmHWM:") if self.reset else None
        return (hwm - self.base) if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def snapshot_of(syn: SyntheticSet) -> dict[str, torch.Tensor]:
    return {"embeds": syn.embeds.detach().clone(), "label_param": syn.label_param.detach().clone(), "lr_param": syn.lr_param.detach().clone()}


def distill_set(cfg: TTMConfig) -> DistillResult:
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not (out / "card.json").is_file():
        raise TrajectorySetupError(f"{out} exists and is not a synthetic set: choose another --out (nothing was written)")
    memory = PeakMemory()
    memory.start()
    begin = time.perf_counter()
    experts = load_experts(cfg.experts)
    setup, settings = experts.setup, experts.settings
    epochs = settings["epochs"]
    if cfg.max_start_epoch - 1 + cfg.expert_epochs > epochs:
        raise TrajectorySetupError(f"--max-start-epoch {cfg.max_start_epoch} and --expert-epochs {cfg.expert_epochs} reach epoch {cfg.max_start_epoch - 1 + cfg.expert_epochs}; the experts have {epochs}")
    torch.manual_seed(cfg.seed)
    init = initial_set(cfg, experts)
    lr_init = cfg.lr_init or settings["learning_rate"]
    syn = SyntheticSet.create(init.embeds, torch.ones(init.embeds.shape[:2], dtype=torch.long), init.classes, len(setup.names), cfg.labels, lr_init,
                              cfg.syn_steps if cfg.lr_per_step else 1, cfg.label_confidence, lr_max=cfg.lr_max)
    if not syn.lr_min < lr_init < cfg.lr_max:
        raise TrajectorySetupError(f"the initial inner learning rate {lr_init:g} must lie strictly between {syn.lr_min:g} and --lr-max {cfg.lr_max:g}")
    matched = matched_names(cfg, experts)
    opt = torch.optim.Adam([{"params": [syn.embeds], "lr": cfg.lr_embeds}, {"params": [syn.lr_param], "lr": cfg.lr_lr}]
                           + ([{"params": [syn.label_param], "lr": cfg.lr_labels}] if syn.label_param.requires_grad else []))
    n_matched = sum(experts.checkpoint(0, 0)[n].numel() for n in matched)
    print(f"synthetic set: {syn.embeds.shape[0]} rows x {syn.embeds.shape[1]} tokens x {syn.embeds.shape[2]} ({cfg.init}); matching {len(matched)} tensors, "
          f"{n_matched:,} parameters ({cfg.match}); {cfg.syn_steps} steps of {cfg.batch_syn or syn.embeds.shape[0]} rows, {cfg.unroll} meta-gradient")
    card = {"init": init.info, "per_class": cfg.per_class, "classes": setup.names, "source_fingerprint": settings["fingerprint"], "source_data": settings["data"],
            "experts": {"folder": str(experts.folder), "count": experts.count, **{k: settings[k] for k in ("model", "train", "epochs", "learning_rate", "batch_size", "max_length", "width", "seed")}},
            "distillation": {k: v for k, v in asdict(cfg).items() if k not in ("experts", "out", "progress")}, "matched": matched}
    syn.card = card
    rng, generator = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    log: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    first_loss, running, over, at_bound, stopped, skipped = None, None, 0, 0, None, 0
    good = snapshot_of(syn)  # the set of the last iteration whose loss was finite and not diverging
    init_seconds = time.perf_counter() - begin
    start_time = time.perf_counter()
    bar = tqdm(range(1, cfg.iterations + 1), desc="distil", disable=not cfg.progress)
    for it in bar:
        k, t = rng.randrange(experts.count), rng.randrange(cfg.max_start_epoch)
        start_full, target_full = experts.checkpoint(k, t), experts.checkpoint(k, t + cfg.expert_epochs)
        start, target = {n: start_full[n] for n in matched}, {n: target_full[n] for n in matched}
        if float(squared_distance(start, target)) < 1e-12:  # the expert did not move there: nothing to match
            skipped += 1
            logger.warning("iteration %d: expert %d did not move its matched parameters between epochs %d and %d; draw skipped", it, k, t, t + cfg.expert_epochs)
            continue
        problem = problem_for(experts.initial_model(k), start_full, matched)  # frozen tensors: this expert's own
        schedule = make_schedule(syn.embeds.shape[0], cfg.syn_steps, cfg.batch_syn or syn.embeds.shape[0], generator)
        before = snapshot_of(syn)
        mg = meta_gradient(problem, syn, start, target, schedule, cfg.unroll)
        if not (math.isfinite(mg.loss) and torch.isfinite(mg.flat()).all()):
            stopped = f"iteration {it}: the matching loss or its gradient is not finite (expert {k}, start epoch {t}); lower --lr-embeds or --lr-lr, or --max-start-epoch"
            break
        first_loss = mg.loss if first_loss is None else first_loss
        running = mg.loss if running is None else 0.9 * running + 0.1 * mg.loss
        over = over + 1 if running > cfg.divergence_factor * first_loss else 0
        if over == 0:
            good = before
        mg.assign(syn)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(syn.leaves, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        at_bound = at_bound + 1 if syn.lr_at_bound() else 0
        row = {"iteration": it, "expert": k, "start_epoch": t, "loss": mg.loss, "running_loss": running, "lr": sum(syn.lrs()) / len(syn.lrs()), "val_accuracy": None, "seconds": round(time.perf_counter() - start_time, 2)}
        if cfg.eval_every and (it % cfg.eval_every == 0 or it == cfg.iterations):
            small = SmallSet("synthetic", syn.embeds, syn.mask, syn.labels().detach(), syn.lrs())
            res = fit(setup, small, CHECK_SEED + cfg.seed, row["lr"], cfg.eval_steps, with_test=False)
            row["val_accuracy"] = max((r.val for r in res), key=nan_low, default=float("nan"))
            if best is None or nan_low(row["val_accuracy"]) > nan_low(best[0]):
                best = (row["val_accuracy"], it, snapshot_of(syn))
        log.append(row)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{row['lr']:.3g}", **({"val": f"{row['val_accuracy']:.3f}"} if row["val_accuracy"] is not None else {}))
        if over >= cfg.patience:
            stopped = f"iteration {it}: the matching loss diverged (running {running:.3g} > {cfg.divergence_factor} x the first {first_loss:.3g} for {cfg.patience} iterations); lower --lr-embeds or --lr-lr"
            break
        if at_bound >= cfg.patience:
            stopped = (f"iteration {it}: the inner learning rate sat at a bound ({syn.lr_min:g} or --lr-max {cfg.lr_max:g}) for {cfg.patience} iterations; "
                       "lower --lr-lr, or raise --lr-max if the experts' steps need it")
            break
    bar.close()
    seconds = time.perf_counter() - start_time
    last = good if stopped else snapshot_of(syn)
    chosen = best[2] if best is not None and not stopped else last
    peak = memory.peak_mb()
    syn.card = card | {"iterations_run": len(log), "draws_skipped": skipped, "stopped": stopped, "init_seconds": round(init_seconds, 1), "seconds": round(seconds, 1),
                       "total_seconds": round(init_seconds + seconds, 1), "peak_memory_mb": round(peak)}
    buf = io.StringIO()
    if log:
        writer = csv.DictWriter(buf, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)
    if stopped:
        selected = "the last good iteration before the guard stopped the run"
    else:
        selected = f"iteration {best[1]} (best validation accuracy {best[0]:.4f})" if best else "the last iteration"
    for folder, tensors, which, keep in ((out, chosen, selected, ("last",)), (out / "last", last, "the last iteration" if not stopped else selected, ())):
        syn.card["selected"] = which
        with torch.no_grad():
            for name, v in tensors.items():
                getattr(syn, name).copy_(v)
        syn.save(folder, nearest_tokens(syn.embeds, setup.embedder), {"log.csv": buf.getvalue()}, keep)
    syn.card["selected"] = selected
    with torch.no_grad():  # the returned set is the selected one
        for name, v in chosen.items():
            getattr(syn, name).copy_(v)
    if stopped:
        logger.warning("stopped: %s", stopped)
    return DistillResult(syn, out, log, stopped, init_seconds + seconds, peak)


def stop_if(result: DistillResult) -> None:
    """Raise the guard's message as an error (for the CLI: exit code 2 after the files are written)."""
    if result.stopped:
        raise DistillationStopped(f"{result.stopped}; the last good set is in {result.folder}")

