"""Where a synthetic set starts: ``per_class`` rows per class, as token-embedding sequences.

- ``real``: random real training examples of the class (their token-table rows).
- ``noise``: Gaussian rows with the table's per-dimension mean and standard deviation.
- ``manifold``: a PCA of the class's real examples (each flattened to L·H numbers) keeping
  ``pca_variance`` of their variance; rows are drawn from a Gaussian in that latent space (the
  components' own variances) and mapped back.
- ``mask-fill``: random real examples with ``mask_ratio`` of their tokens masked and each mask filled
  with a token drawn from a language model's ``top_k`` candidates, ``fills`` variants per example (each
  a row). A masked LM fills from both sides; a causal LM (SmolLM2 by default) from the left context.
  The filled texts are tokenized again by the student's tokenizer.

Every row's mask is all ones: every position of a synthetic row is learnt.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from training.trajectory.data import TextDataset
from training.trajectory.errors import TrajectorySetupError
from training.trajectory.models import TokenEmbedder

logger = logging.getLogger(__name__)


@dataclass
class Initial:
    embeds: torch.Tensor  # (N, L, H)
    classes: torch.Tensor  # (N,)
    texts: list[str]  # where each row came from ("" for noise / manifold rows)
    info: dict[str, Any]


def pick_per_class(ds: TextDataset, per_class: int, rng: random.Random) -> list[int]:
    """``per_class`` random rows of each class (all of them, repeated, where a class has fewer)."""
    out = []
    for c, rows in enumerate(ds.by_class()):
        if not rows:
            raise TrajectorySetupError(f"class {ds.names[c]!r} has no training rows")
        out += rng.sample(rows, per_class) if len(rows) >= per_class else [rows[i % len(rows)] for i in range(per_class)]
    return out


def init_real(ds: TextDataset, embedder: TokenEmbedder, per_class: int, rng: random.Random) -> Initial:
    rows = pick_per_class(ds, per_class, rng)
    texts = [ds.texts[i] for i in rows]
    embeds, _ = embedder.embed(texts)
    return Initial(embeds, torch.tensor([ds.labels[i] for i in rows]), texts, {"init": "real"})


def init_noise(ds: TextDataset, embedder: TokenEmbedder, per_class: int, generator: torch.Generator) -> Initial:
    mean, std = embedder.table.mean(0), embedder.table.std(0)
    n = per_class * ds.n_classes
    embeds = mean + std * torch.randn(n, embedder.max_length, embedder.hidden, generator=generator)
    return Initial(embeds, torch.arange(ds.n_classes).repeat_interleave(per_class), [""] * n, {"init": "noise"})


def pca(x: torch.Tensor, variance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(mean (D,), components (k, D), component variances (k,), kept fraction) of rows ``x`` (n, D):
    the fewest components whose variance reaches ``variance`` of the total."""
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / max(x.shape[0] - 1, 1)
    total = float(var.sum())
    if total == 0:
        return mean, vh[:0], var[:0], 1.0
    cum = torch.cumsum(var, 0) / total
    k = int(torch.searchsorted(cum, torch.tensor(variance, dtype=cum.dtype) - 1e-12)) + 1
    k = min(k, len(var))
    return mean, vh[:k], var[:k], float(cum[k - 1])


def init_manifold(ds: TextDataset, embedder: TokenEmbedder, per_class: int, variance: float, generator: torch.Generator, max_rows: int = 2000) -> Initial:
    rows, classes, kept = [], [], []
    for c, members in enumerate(ds.by_class()):
        sample = members[:max_rows]
        x, _ = embedder.embed([ds.texts[i] for i in sample])  # (n, L, H)
        flat = x.flatten(1)
        mean, comps, var, frac = pca(flat, variance)
        z = torch.randn(per_class, len(var), generator=generator, dtype=torch.float64) * var.sqrt()
        rows.append((mean + z @ comps).float().view(per_class, *x.shape[1:]))
        classes += [c] * per_class
        kept.append({"class": ds.names[c], "rows": len(sample), "components": len(var), "variance_kept": round(frac, 4)})
    return Initial(torch.cat(rows), torch.tensor(classes), [""] * len(classes), {"init": "manifold", "pca": kept})


class Filler:
    """Fills masked words from a language model's top-k: a masked LM when the folder has one, else a
    causal LM from the left context."""

    def __init__(self, spec: str, top_k: int, generator: torch.Generator) -> None:
        from pathlib import Path

        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForMaskedLM,
            AutoTokenizer,
        )

        from engines.smollm2 import ModelNotFoundError
        from engines.spec import SpecError, parse_spec

        try:
            path = spec if Path(spec).is_dir() else str(parse_spec(spec).local_path())
        except (SpecError, ModelNotFoundError) as e:
            raise TrajectorySetupError(f"--fill-model: {e}") from None
        config = AutoConfig.from_pretrained(path)
        self.masked = any(a.endswith("ForMaskedLM") for a in (config.architectures or []))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        cls = AutoModelForMaskedLM if self.masked else AutoModelForCausalLM
        self.model = cls.from_pretrained(path).eval()
        self.top_k, self.generator = top_k, generator

    def draw(self, logits: torch.Tensor, avoid: set[int]) -> int:
        top = torch.topk(logits, self.top_k + len(avoid)).indices.tolist()
        choices = [t for t in top if t not in avoid][: self.top_k]
        return choices[int(torch.randint(len(choices), (1,), generator=self.generator))]

    @torch.no_grad()
    def fill(self, text: str, ratio: float) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            return text
        n = max(1, round(ratio * len(ids)))
        positions = sorted(torch.randperm(len(ids), generator=self.generator)[:n].tolist())
        special = set(self.tokenizer.all_special_ids)
        if self.masked:
            masked = list(ids)
            for p in positions:
                masked[p] = self.tokenizer.mask_token_id
            full = self.tokenizer.build_inputs_with_special_tokens(masked)
            offset = full.index(masked[0]) if masked[0] in full else 0
            logits = self.model(input_ids=torch.tensor([full])).logits[0]
            for p in positions:
                ids[p] = self.draw(logits[offset + p], special)
        else:
            positions = [p for p in positions if p > 0] or [len(ids) - 1]  # a causal LM needs some left context
            for p in positions:
                logits = self.model(input_ids=torch.tensor([ids[:p]])).logits[0, -1]
                ids[p] = self.draw(logits, special)
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def init_mask_fill(ds: TextDataset, embedder: TokenEmbedder, per_class: int, ratio: float, fills: int, filler: Filler, rng: random.Random, progress: bool = False) -> Initial:
    from tqdm.auto import tqdm

    sources = pick_per_class(ds, math.ceil(per_class / fills), rng)
    texts, classes = [], []
    by_class: dict[int, list[int]] = {}
    for i in sources:
        by_class.setdefault(ds.labels[i], []).append(i)
    bar = tqdm(total=per_class * ds.n_classes, desc="mask-fill", disable=not progress, leave=False)
    for c in range(ds.n_classes):
        made = 0
        for i in by_class[c]:
            source = " ".join(ds.texts[i].split()[: embedder.max_length * 2])  # what the student would see, with room
            for _ in range(fills):
                if made == per_class:
                    break
                texts.append(filler.fill(source, ratio))
                classes.append(c)
                made += 1
                bar.update()
    bar.close()
    embeds, _ = embedder.embed(texts)
    return Initial(embeds, torch.tensor(classes), texts, {"init": "mask-fill", "mask_ratio": ratio, "fills": fills, "fill_model_masked": filler.masked})


def nearest_tokens(embeds: torch.Tensor, embedder: TokenEmbedder, limit: int = 16) -> list[str]:
    """Each row read back as the tokens nearest (cosine) to its first ``limit`` positions."""
    table = torch.nn.functional.normalize(embedder.table, dim=-1)
    out = []
    for row in embeds.detach():
        ids = (torch.nn.functional.normalize(row[:limit], dim=-1) @ table.T).argmax(-1)
        out.append(" ".join(embedder.tokenizer.convert_ids_to_tokens(ids.tolist())))
    return out
