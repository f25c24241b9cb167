"""The teacher's targets, computed once per (teacher, sentences) and cached as safetensors.

Two targets per sentence: the sentence embedding (stages 3 and 4, and every evaluation) and the
embedding layer's output mean-pooled over the tokens (stage 2). The cache file is named by a hash of the
teacher's identity and the sentence list, written to a temporary sibling and renamed, so a killed run
never leaves a half file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from training.embedding.losses import masked_mean

logger = logging.getLogger(__name__)


@dataclass
class TeacherTargets:
    """Teacher targets of ``sentences`` (row i belongs to sentence i)."""

    sentences: list[str]
    sentence: torch.Tensor  # (N, D) sentence embeddings
    token_mean: torch.Tensor  # (N, H) embedding-layer outputs, mean-pooled

    def __post_init__(self) -> None:
        self._row = {s: i for i, s in enumerate(self.sentences)}

    def rows(self, texts: Sequence[str]) -> list[int]:
        missing = [t for t in texts if t not in self._row]
        if missing:
            raise KeyError(f"{len(missing)} texts have no teacher target (first: {missing[0][:60]!r})")
        return [self._row[t] for t in texts]

    def sentence_of(self, texts: Sequence[str]) -> torch.Tensor:
        return self.sentence[self.rows(texts)]

    def token_mean_of(self, texts: Sequence[str]) -> torch.Tensor:
        return self.token_mean[self.rows(texts)]


def teacher_identity(teacher: Any) -> str:
    """A fingerprint of the teacher's weights and tokenizer settings (changes when the model does)."""
    h = hashlib.sha256()
    for name, p in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        flat = p.detach().reshape(-1)
        h.update(flat[: min(64, flat.numel())].float().cpu().numpy().tobytes())
        h.update(str(tuple(p.shape)).encode())
    h.update(str(teacher.max_seq_length).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_targets(teacher: Any, sentences: Sequence[str], batch_size: int = 64, progress: bool = True) -> TeacherTargets:
    """Sentence embeddings and mean-pooled embedding-layer outputs of the teacher, in batches."""
    teacher.eval()
    bert = teacher[0].auto_model
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))  # similar lengths share a batch
    sent = [None] * len(sentences)
    tok = [None] * len(sentences)
    for start in tqdm(range(0, len(order), batch_size), desc="teacher targets", disable=not progress, unit="batch"):
        idx = order[start : start + batch_size]
        features = teacher.preprocess([sentences[i] for i in idx])
        features = {k: v.to(teacher.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        out = teacher(dict(features))["sentence_embedding"].float().cpu()
        emb = bert.embeddings(input_ids=features["input_ids"], token_type_ids=features.get("token_type_ids"))
        pooled = masked_mean(emb, features["attention_mask"]).float().cpu()
        for j, i in enumerate(idx):
            sent[i], tok[i] = out[j], pooled[j]
    return TeacherTargets(list(sentences), torch.stack(sent), torch.stack(tok))


def cached_targets(teacher: Any, sentences: Sequence[str], cache_dir: str | Path, batch_size: int = 64, progress: bool = True) -> TeacherTargets:
    """``compute_targets`` once; later calls with the same teacher and sentences read the cache."""
    from safetensors.torch import load_file, save

    from data.records import atomic_write_bytes

    sentences = list(sentences)
    key = hashlib.sha256((teacher_identity(teacher) + "\n" + "\n".join(sentences)).encode()).hexdigest()[:20]
    cache_dir = Path(cache_dir)
    file = cache_dir / f"teacher-{key}.safetensors"
    if file.is_file():
        tensors = load_file(str(file))
        logger.info("teacher targets of %d sentences from %s", len(sentences), file)
        return TeacherTargets(sentences, tensors["sentence"], tensors["token_mean"])
    targets = compute_targets(teacher, sentences, batch_size, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"sentence": targets.sentence.contiguous(), "token_mean": targets.token_mean.contiguous()}
    atomic_write_bytes(file, save(tensors, metadata={"sentences": str(len(sentences)), "format": json.dumps({"rows": "sentence order"})}))
    return targets
