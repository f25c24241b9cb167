"""KV teachers: loaded once, frozen, each reading the text rendered its own way.

A teacher is a model spec (``smollm2``, ``hf:PATH``, ``minilm``, a folder) with its own fast tokenizer.
Decoders get the conversation through their own chat template; encoders (no template) get the message
contents joined by newlines with their own ``[CLS]``/``[SEP]``. The student's special tokens therefore
never reach a teacher: every teacher renders from the messages, not from the student's string.
``TokenView`` is one model's tokens of one conversation with each token's span in *content*
coordinates (``training.kv.align``), which is what the alignment matrices are built from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from training.kv.align import Span, content_marker, content_spans, render_segments
from training.kv.errors import KVSetupError
from training.kv.models import AttentionLayout, attention_layout, rope_theta

logger = logging.getLogger(__name__)


class TeacherError(KVSetupError):
    """A KV teacher that cannot be used as asked (a message that says what to change)."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary and special tokens: a stored cache is only valid for the same one."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(str(t) for t in tokenizer.all_special_tokens)
    blob = json.dumps([vocab, special, getattr(tokenizer, "chat_template", None) or ""], ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class TokenView:
    """One tokenizer's tokens of one conversation."""

    input_ids: list[int]
    spans: list[Span | None]  # per token, in content characters; None = no content (special/template tokens)
    text: str


def _contents(conversation: Sequence[dict[str, str]]) -> list[str]:
    return [str(m.get("content", "")) for m in conversation]


def render_for(tokenizer: Any, conversation: Sequence[dict[str, str]], *, chat: bool) -> tuple[str, bool]:
    """The text a model reads for ``conversation`` and whether the tokenizer should add its special tokens."""
    if chat:
        from training.mcq_data import render_conversation

        prompt, completion = render_conversation(conversation, tokenizer)
        return prompt + completion, False
    return "\n".join(_contents(conversation)), True


def token_view(
    tokenizer: Any, conversation: Sequence[dict[str, str]], *, chat: bool, max_length: int | None = None
) -> TokenView:
    """Tokenize ``conversation`` the model's way and locate every token in content coordinates."""
    text, special = render_for(tokenizer, conversation, chat=chat)
    marked_conversation = [{**m, "content": content_marker(k)} for k, m in enumerate(conversation)]
    marked, _ = render_for(tokenizer, marked_conversation, chat=chat)
    segments = render_segments(text, _contents(conversation), marked)
    enc = tokenizer(
        text,
        add_special_tokens=special,
        return_offsets_mapping=True,
        truncation=max_length is not None,
        max_length=max_length,
    )
    return TokenView(list(enc["input_ids"]), content_spans(enc["offset_mapping"], segments), text)


@dataclass
class KVTeacher:
    """A teacher: loaded and frozen (``model`` is its backbone, or its causal LM when its logits are needed),
    or an offline stand-in read from a K/V store (``model`` None, ``stored`` its index entry)."""

    spec: str
    path: str
    model: nn.Module | None
    tokenizer: Any
    layout: AttentionLayout
    max_length: int | None
    stored: dict[str, Any] | None = None
    name_override: str | None = None

    @property
    def chat(self) -> bool:
        if self.stored is not None:
            return bool(self.stored["chat"])
        return self.layout.kind == "decoder" and bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def name(self) -> str:
        return self.name_override or self.spec

    @property
    def causal_lm(self) -> bool:
        """Whether the teacher's token log-probs are at hand (a decoder with its LM head, or stored NLL)."""
        if self.stored is not None:
            return bool(self.stored["causal_lm"])
        return hasattr(self.model, "lm_head")

    @property
    def rope_theta(self) -> float | None:
        """The default-RoPE base (None for encoders and scaled RoPE types)."""
        if self.stored is not None:
            return self.stored["rope_theta"]
        if self.layout.kind != "decoder":
            return None
        return rope_theta(self.model)

    def view(self, conversation: Sequence[dict[str, str]]) -> TokenView:
        return token_view(self.tokenizer, conversation, chat=self.chat, max_length=self.max_length)

    def manifest(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "path": self.path,
            "architecture": type(self.model).__name__ if self.model is not None else "stored",
            "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer),
            "chat_template": self.chat,
            "layout": self.layout.as_dict(),
        }


def resolve_teacher_path(spec: str) -> Path:
    """A local folder as is, anything else through the engines' spec grammar (``smollm2``, ``minilm``, ``hf:``)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    from engines import parse_spec

    return Path(parse_spec(spec).local_path())


def load_kv_teacher(spec: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", lm_head: bool = False) -> KVTeacher:
    """Load a teacher once, in eval mode with no gradients; refuse one without a fast tokenizer.

    ``lm_head`` loads decoders with their LM head (needed for CE-based routing and logit distillation).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_teacher_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise TeacherError(
            f"KV teacher {spec!r} has no fast tokenizer (tokenizer.json): token alignment needs character offsets; "
            "convert its tokenizer to a fast one or choose another teacher"
        )
    config = AutoConfig.from_pretrained(path)
    causal = any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
    loader = AutoModelForCausalLM if (causal and lm_head) else AutoModel
    model = loader.from_pretrained(path, dtype=dtype)
    model.eval().requires_grad_(False).to(device)
    layout = attention_layout(model)
    limit = getattr(config, "max_position_embeddings", None)
    max_length = int(limit) if layout.kind == "encoder" and limit else None
    logger.info(
        "KV teacher %s: %s, %d layers, %d kv heads x %d, tokenizer %s", spec, type(model).__name__,
        layout.num_layers, layout.num_kv_heads, layout.head_dim, type(tokenizer).__name__,
    )
    return KVTeacher(spec=spec, path=str(path), model=model, tokenizer=tokenizer, layout=layout, max_length=max_length)


def teacher_specs(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or a list into a list of specs (empty entries dropped)."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    return [p.strip() for p in parts if p.strip()]


def teacher_names(teachers: Sequence[KVTeacher]) -> list[str]:
    """Short names for logs and pictures: the spec, or a folder's name; repeats get ``#i``."""
    names = []
    for i, teacher in enumerate(teachers):
        name = os.path.basename(teacher.spec.rstrip("/")) if os.sep in teacher.spec else teacher.spec
        name = "".join(c if c.isalnum() or c in "-_.?=" else "_" for c in name)
        names.append(f"{name}#{i}" if name in names else name)
    return names


def describe(teachers: Sequence[KVTeacher]) -> str:
    return ", ".join(f"{t.spec} ({t.layout.kind}, {t.layout.num_layers} layers)" for t in teachers)

