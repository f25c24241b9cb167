"""MCQ items as training sequences: the exact tokens both teacher-logit extraction and training use.

The user turn is the evaluation prompt (``prompts.mcq.mcq_messages`` without the answer prefix) and the
assistant turn the full answer (``prompts.mcq.answer_text``: ``The answer is C.`` plus the teacher's
explanation when the item has one), rendered with the tokenizer's chat template. The loss covers the
assistant answer and its closing end-of-turn token (``<|im_end|>``), so the student learns to stop.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from data.records import GeneratedItem, MCQItem, read_items
from prompts.mcq import answer_text, mcq_messages

logger = logging.getLogger(__name__)


def mcq_conversation(item: MCQItem) -> list[dict[str, str]]:
    """User turn (question and options) and assistant turn: the item's worked solution if it has one,
    else the answer ("The answer is C.") plus an explanation if any."""
    messages = mcq_messages(item.question, item.options, with_prefix=False)
    answer = (item.solution or "").strip() or answer_text(item.answer_idx, getattr(item, "explanation", ""))
    return [*messages, {"role": "assistant", "content": answer}]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def render_conversation(conversation: Sequence[dict[str, str]], tokenizer: Any, item_id: str = "") -> tuple[str, str]:
    """``(prompt_text, completion_text)`` of a conversation whose last turn is the assistant's, rendered with
    the tokenizer's chat template; the completion ends at the end-of-turn token."""
    prompt_text = tokenizer.apply_chat_template(list(conversation[:-1]), tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(list(conversation), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(
            f"item {item_id}: the chat template of {tokenizer.name_or_path} renders the prompt differently with and "
            "without the answer, so the completion cannot be located"
        )
    completion = full_text[len(prompt_text) :]
    # End at the end-of-turn token; what the template adds after it (a newline) belongs to no turn.
    eos = tokenizer.eos_token
    if eos and eos in completion:
        completion = completion[: completion.index(eos) + len(eos)]
    return prompt_text, completion


def tokenize_conversation(item_id: str, conversation: Sequence[dict[str, str]], tokenizer: Any) -> dict[str, Any]:
    """``{"id", "input_ids", "labels"}`` of a conversation ending with the assistant turn, rendered with the
    tokenizer's chat template; labels -100 everywhere but the assistant answer (and its end-of-turn token)."""
    prompt_text, completion = render_conversation(conversation, tokenizer, item_id)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    input_ids = tokenizer(prompt_text + completion, add_special_tokens=False)["input_ids"]
    # Tokens can merge across the boundary; the completion starts where the two tokenizations diverge.
    start = _common_prefix(prompt_ids, input_ids)
    if start == len(input_ids):
        raise ValueError(f"item {item_id}: the answer adds no tokens")
    return {"id": item_id, "input_ids": input_ids, "labels": [-100] * start + input_ids[start:]}


def tokenize_item(item: MCQItem, tokenizer: Any) -> dict[str, Any]:
    """``{"id", "input_ids", "labels"}`` with labels -100 everywhere but the assistant answer."""
    return tokenize_conversation(item.id, mcq_conversation(item), tokenizer)


def tokenize_items(items: Sequence[MCQItem], tokenizer: Any) -> list[dict[str, Any]]:
    """Tokenize every item; ids must be unique (stored teacher logits are looked up by id)."""
    seen: set[str] = set()
    rows = []
    for item in items:
        if item.id in seen:
            raise ValueError(f"duplicate item id {item.id!r}")
        seen.add(item.id)
        rows.append(tokenize_item(item, tokenizer))
    return rows


def build_dataset(items: Sequence[MCQItem], tokenizer: Any):
    """A pre-tokenized ``datasets.Dataset`` (columns id, input_ids, labels) that SFTTrainer uses as is."""
    from datasets import Dataset

    return Dataset.from_list(tokenize_items(items, tokenizer))


def read_training_items(paths: Sequence[str | os.PathLike]) -> list[MCQItem]:
    """Read MCQ JSONL files where each line is an MCQItem or a GeneratedItem (it has ``target_node``).

    Bad lines raise DataError naming ``file:line``; ids must be unique across the files; a file
    without items is a DataError too (every caller needs items to work on).
    """
    return read_items(paths, lambda row: GeneratedItem if "target_node" in row else MCQItem, allow_empty=False)
