"""Stream stored teacher top-k log-probs into training batches, checked against the student's tokens.

The base collator (TRL's) pads ``input_ids`` / ``labels`` as usual; this one adds
``teacher_topk_ids`` ``(B, L, k)`` and ``teacher_topk_logprobs`` ``(B, L, k)`` aligned with ``labels``:
entry ``[b, t]`` is the teacher's distribution of token ``t`` of example ``b`` (zeros where the label is
-100). Every example is checked before use: same number of completion tokens, same tokens, same whole
sequence (hash). A mismatch means teacher and student tokenized differently, and training on it would
silently distil the wrong distribution, so it is an error naming the item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from training.teacher_logits import TeacherLogits, TeacherRows, completion_positions, sequence_hash

logger = logging.getLogger(__name__)


class TeacherAlignmentError(ValueError):
    """Stored teacher logits do not belong to the student's tokens for this item."""


def check_same_tokenizer(a: Any, b: Any, a_name: str = "student", b_name: str = "teacher") -> None:
    """Raise ValueError unless two tokenizers map the same strings to the same ids.

    A teacher whose *model* vocabulary is only padded larger passes: padding lives in the weights, not
    in the tokenizer.
    """
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a == vocab_b:
        return
    differing = next((t for t, i in vocab_a.items() if vocab_b.get(t) != i), None)
    example = "" if differing is None else f"; e.g. {differing!r} is {vocab_a[differing]} vs {vocab_b.get(differing)}"
    raise ValueError(
        f"the {a_name} and {b_name} tokenizers differ ({len(vocab_a)} vs {len(vocab_b)} tokens{example}): "
        "token-level distillation needs a shared tokenizer"
    )


def _check_alignment(item_id: str, input_ids: np.ndarray, positions: np.ndarray, rows: TeacherRows, where: str) -> None:
    n_student, n_teacher = len(positions), len(rows.tokens)
    if n_student != n_teacher:
        raise TeacherAlignmentError(
            f"item {item_id!r}: the student sequence has {n_student} completion tokens but {where} stores {n_teacher}; "
            "the logits were extracted from another tokenization (tokenizer or chat template differ, or the "
            "sequence was truncated by max_length)"
        )
    stored = rows.tokens.numpy()
    mismatch = np.nonzero(input_ids[positions] != stored)[0]
    if len(mismatch):
        i = int(mismatch[0])
        raise TeacherAlignmentError(
            f"item {item_id!r}: completion token {i} is id {int(input_ids[positions[i]])} for the student but "
            f"{int(stored[i])} in {where}: teacher and student tokenizers differ"
        )
    if len(input_ids) != rows.seq_len or sequence_hash(input_ids) != rows.seq_hash:
        raise TeacherAlignmentError(
            f"item {item_id!r}: the prompt tokens differ from those {where} was extracted from "
            f"({len(input_ids)} vs {rows.seq_len} tokens); chat template or system prompt changed"
        )


@dataclass
class TopKCollator:
    """Wrap ``base`` (which pads ``input_ids`` / ``labels``) and add the stored teacher top-k rows.

    ``vocab_size`` is the width of the student's LM head: stored ids at or beyond it (a teacher whose
    vocabulary is padded larger) are dropped by giving them log-prob -inf, which moves their mass to the
    tail bucket of the loss. ``top_k`` keeps the first (largest) ``top_k`` of the stored ones (all if None,
    0, or more than were stored).
    Examples carry the item id in ``key`` to find their rows.
    """

    base: Callable[[list[dict[str, Any]]], dict[str, Any]]
    store: TeacherLogits
    vocab_size: int
    top_k: int | None = None
    key: str = "id"

    def __post_init__(self) -> None:
        if self.top_k is None or self.top_k == 0:
            self.top_k = self.store.k
        if self.top_k > self.store.k:
            logger.warning("top_k=%d but %s stores only the top %d; using %d", self.top_k, self.store.path, self.store.k, self.store.k)
            self.top_k = self.store.k
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        for ex in examples:
            if self.key not in ex:
                raise ValueError(
                    f"an example has no {self.key!r} column: stored teacher logits are found by item id "
                    "(build the dataset with training.mcq_data.build_dataset)"
                )
        batch = self.base([{k: v for k, v in ex.items() if k != self.key} for ex in examples])
        batch_size, length = batch["labels"].shape
        k = self.top_k
        ids = torch.zeros(batch_size, length, k, dtype=torch.long)  # (B, L, k)
        logprobs = torch.zeros(batch_size, length, k, dtype=torch.float32)  # (B, L, k)
        for b, ex in enumerate(examples):
            item_id = ex[self.key]
            rows = self.store.rows(item_id)
            input_ids = np.asarray(ex["input_ids"])
            positions = completion_positions(ex["labels"])
            _check_alignment(item_id, input_ids, positions, rows, str(self.store.path))
            row_ids = rows.ids[:, :k].long()
            row_logprobs = rows.logprobs[:, :k].float()
            outside = row_ids >= self.vocab_size
            at = torch.from_numpy(positions)
            if not torch.equal(batch["input_ids"][b, : len(input_ids)], torch.as_tensor(input_ids)):
                raise ValueError("the base collator must pad on the right (rows are placed at unpadded positions)")
            ids[b, at] = row_ids.masked_fill(outside, 0)
            logprobs[b, at] = row_logprobs.masked_fill(outside, float("-inf"))
        batch["teacher_topk_ids"] = ids
        batch["teacher_topk_logprobs"] = logprobs
        return batch
