"""Batches for KV distillation: each teacher's own tokens of the same conversations, and the overlaps.

``KVCollator`` wraps the base collator (TRL's, which pads the student's ``input_ids`` / ``labels`` on the
right) and adds, for teacher ``i``:

    kv{i}_input_ids       (B, L_t)       the teacher's tokens (padded with its pad id, or 0)
    kv{i}_attention_mask  (B, L_t)
    kv{i}_overlap         (B, L_s, L_t)  characters shared by student token s and teacher token t
    kv_tag                (B,)           index of the item's tag in ``tag_names`` (-1 none), when ``tags`` given

With a ``store`` (``training.kv.store.TeacherKVStore``: K/V stored offline) it also adds each teacher's
stored arrays as ``kv{i}_k.<layer>``, ``kv{i}_v.<layer>`` (``(B, L_t, H, d)``, float16), ``kv{i}_q.<layer>``
and ``kv{i}_nll`` where stored, after checking that the stored tokens are the ones rendered now.

An example's conversation comes from its ``messages`` column, or from ``conversations[example["id"]]``
(the MCQ items, as ``training.mcq_data.mcq_conversation`` renders them). The student side is rendered
with the student's chat template and must give exactly the example's ``input_ids``: otherwise the
dataset was tokenized another way and the character offsets would not belong to its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from training.kv.align import overlap_matrix
from training.kv.teachers import TokenView, token_view


def teacher_keys(i: int) -> tuple[str, str, str]:
    return f"kv{i}_input_ids", f"kv{i}_attention_mask", f"kv{i}_overlap"


@dataclass
class KVCollator:
    base: Callable[[list[dict[str, Any]]], dict[str, Any]]
    student_tokenizer: Any
    teacher_views: Sequence[Callable[[Sequence[dict[str, str]]], TokenView]]
    conversations: Mapping[str, Sequence[dict[str, str]]] | None = None
    pad_ids: Sequence[int] = field(default_factory=list)
    store: Any = None  # training.kv.store.TeacherKVStore: every teacher's K/V read from it
    tags: Mapping[str, str] | None = None  # item id -> tag (its domain or task), for domain routing and pictures
    key: str = "id"
    drop: tuple[str, ...] = ("messages",)
    forward_key: bool = False  # pass the id on to ``base`` (a collator that looks items up too, e.g. TopKCollator)

    @property
    def tag_names(self) -> list[str]:
        return sorted(set(self.tags.values())) if self.tags else []

    def conversation(self, example: dict[str, Any]) -> Sequence[dict[str, str]]:
        if "messages" in example:
            return example["messages"]
        item_id = example.get(self.key)
        if self.conversations is None or item_id not in self.conversations:
            raise ValueError(
                f"example {item_id!r} has no 'messages' column and no conversation was given for it: KV teachers read "
                "the text, not the student's tokens (build the dataset with training.mcq_data.build_dataset and pass "
                "the items)"
            )
        return self.conversations[item_id]

    def student_view(self, example: dict[str, Any], conversation: Sequence[dict[str, str]]) -> TokenView:
        view = token_view(self.student_tokenizer, conversation, chat=True)
        if list(view.input_ids) != list(example["input_ids"]):
            raise ValueError(
                f"example {example.get(self.key)!r}: rendering its conversation with the student's chat template gives "
                f"{len(view.input_ids)} tokens that differ from its {len(example['input_ids'])} input_ids; the dataset "
                "was tokenized another way (tokenize it with training.mcq_data.tokenize_item)"
            )
        return view

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        conversations = [self.conversation(ex) for ex in examples]
        students = [self.student_view(ex, conv) for ex, conv in zip(examples, conversations)]
        dropped = self.drop if self.forward_key else (self.key, *self.drop)
        batch = self.base([{k: v for k, v in ex.items() if k not in dropped} for ex in examples])
        length = batch["input_ids"].shape[1]
        for b, view in enumerate(students):
            if not torch.equal(batch["input_ids"][b, : len(view.input_ids)], torch.as_tensor(view.input_ids)):
                raise ValueError("the base collator must pad on the right (alignments are built on unpadded positions)")
        for i, view_of in enumerate(self.teacher_views):
            views = [view_of(conv) for conv in conversations]
            width = max(len(v.input_ids) for v in views)
            pad = self.pad_ids[i] if i < len(self.pad_ids) else 0
            ids = torch.full((len(examples), width), pad, dtype=torch.long)
            mask = torch.zeros(len(examples), width, dtype=torch.long)
            overlap = torch.zeros(len(examples), length, width)
            for b, (student, teacher) in enumerate(zip(students, views)):
                n = len(teacher.input_ids)
                ids[b, :n] = torch.as_tensor(teacher.input_ids)
                mask[b, :n] = 1
                overlap[b, : len(student.input_ids), :n] = torch.from_numpy(
                    np.ascontiguousarray(overlap_matrix(student.spans, teacher.spans))
                )
            k_ids, k_mask, k_overlap = teacher_keys(i)
            batch[k_ids], batch[k_mask], batch[k_overlap] = ids, mask, overlap
            if self.store is not None:
                batch.update(self._stored(i, examples, views, width))
        if self.tags:
            names = {t: n for n, t in enumerate(self.tag_names)}
            batch["kv_tag"] = torch.tensor([names.get(self.tags.get(ex.get(self.key)), -1) for ex in examples])
        return batch

    def _stored(self, i: int, examples: list[dict[str, Any]], views: list[TokenView], width: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for b, (ex, view) in enumerate(zip(examples, views)):
            rows = self.store.rows(i, ex[self.key])
            stored_ids = rows.pop("ids")
            if stored_ids.tolist() != list(view.input_ids):
                raise ValueError(
                    f"item {ex[self.key]!r}: teacher {i}'s stored tokens ({len(stored_ids)}) differ from the "
                    f"{len(view.input_ids)} it reads now; the K/V in {self.store.path} were stored from other text "
                    "(item, chat template or tokenizer changed): store them again"
                )
            for name, value in rows.items():
                key = f"kv{i}_{name}"
                if key not in out:
                    out[key] = torch.zeros((len(examples), width, *value.shape[1:]), dtype=value.dtype)
                out[key][b, : len(value)] = value
        return out
