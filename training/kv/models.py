"""Where a model keeps its attention, and how to read its keys, values and attention at chosen layers.

Works on decoders of the Llama family (``model.layers[i].self_attn.{q,k,v}_proj``, rotary positions:
Llama, Qwen, Mistral, SmolLM2) and BERT-style encoders (``encoder.layer[i].attention.self.{query,key,
value}``, absolute positions: all-MiniLM-L6-v2). Keys are read at the projection outputs, i.e. before
rotary embedding; ``KVCapture`` stores them per layer as ``(B, L, H_kv, d)``. ``attention_probs``
recomputes a layer's head-averaged attention from the captured queries and keys (with the model's own
rotary embedding for decoders), so neither side needs the slow eager attention of the whole model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from training.kv.align import apply_rotary


@dataclass(frozen=True)
class AttentionLayout:
    kind: str  # decoder | encoder
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def backbone(model: nn.Module) -> nn.Module:
    """The transformer under any task head or PEFT wrapper (LlamaModel, BertModel, ...)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen = []
    while core is not None and all(core is not m for m in seen):
        if isinstance(getattr(core, "layers", None), nn.ModuleList):
            return core
        encoder = getattr(core, "encoder", None)
        if isinstance(getattr(encoder, "layer", None), nn.ModuleList):
            return core
        seen.append(core)
        core = getattr(core, "base_model", None) or getattr(core, "model", None)
    raise ValueError(
        f"cannot find the attention layers of {type(model).__name__}: KV distillation reads Llama-style decoders "
        "(model.layers[i].self_attn) and BERT-style encoders (encoder.layer[i].attention.self)"
    )


def layer_modules(model: nn.Module) -> list[nn.Module]:
    core = backbone(model)
    if hasattr(core, "layers"):
        return list(core.layers)
    return list(core.encoder.layer)


def attention_layout(model: nn.Module) -> AttentionLayout:
    config = _text_config(model)
    core = backbone(model)
    heads = config.num_attention_heads
    kind = "decoder" if hasattr(core, "layers") else "encoder"
    return AttentionLayout(
        kind=kind,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        hidden_size=config.hidden_size,
    )


def projections(model: nn.Module, layer: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The query, key and value projections of one layer."""
    block = layer_modules(model)[layer]
    if hasattr(block, "self_attn"):
        attn = block.self_attn
        return attn.q_proj, attn.k_proj, attn.v_proj
    attn = block.attention.self
    return attn.query, attn.key, attn.value


class KVCapture:
    """Forward hooks that keep the K (pre-RoPE), V and, if asked, Q projections of some layers.

    ``with capture.recording(): model(...)`` fills ``capture.keys[layer]``, ``values[layer]``,
    ``queries[layer]`` as ``(B, L, H, d)``; gradients flow through them when the forward has grad.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], queries: bool = False) -> None:
        self.layout = attention_layout(model)
        self.layers = sorted(set(layers))
        bad = [layer for layer in self.layers if not 0 <= layer < self.layout.num_layers]
        if bad:
            raise ValueError(f"layers {bad} are outside 0..{self.layout.num_layers - 1} of {type(model).__name__}")
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.queries: dict[int, torch.Tensor] = {}
        self._active = False
        self._handles = []
        for layer in self.layers:
            q, k, v = projections(model, layer)
            self._handles.append(k.register_forward_hook(self._hook(self.keys, layer, self.layout.num_kv_heads)))
            self._handles.append(v.register_forward_hook(self._hook(self.values, layer, self.layout.num_kv_heads)))
            if queries:
                self._handles.append(q.register_forward_hook(self._hook(self.queries, layer, self.layout.num_heads)))

    def _hook(self, store: dict[int, torch.Tensor], layer: int, heads: int):
        def hook(_module, _inputs, output):
            if self._active:
                store[layer] = output.unflatten(-1, (heads, self.layout.head_dim))  # (B, L, H, d)

        return hook

    @contextmanager
    def recording(self) -> Iterator[KVCapture]:
        self.keys.clear(), self.values.clear(), self.queries.clear()
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def rope_theta(model_or_config: Any) -> float | None:
    """The default-RoPE base of a decoder, or None (no rotary positions, or a scaled RoPE type)."""
    config = getattr(model_or_config, "config", model_or_config)
    params = getattr(config, "rope_parameters", None) or {}
    if params:
        return float(params["rope_theta"]) if params.get("rope_type", "default") == "default" else None
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


def rotary_cos_sin_of(model: nn.Module, like: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The model's own rotary cos/sin ``(B, L, d)`` at positions 0..L-1, or None without rotary positions."""
    core = backbone(model)
    rotary = getattr(core, "rotary_emb", None)
    if rotary is None:
        return None
    positions = torch.arange(length, device=like.device)[None].expand(like.shape[0], -1)
    return rotary(like, positions)


def run_captured(model: nn.Module, kind: str, capture: KVCapture, ids: torch.Tensor, mask: torch.Tensor,
                 need_nll: bool) -> torch.Tensor | None:
    """One forward of a frozen model with ``capture`` recording; the token NLL ``(B, L)`` when asked.

    ``need_nll`` runs the causal LM with its head (``nll[:, 0]`` is 0: the first token has no context);
    otherwise only the backbone runs, since the keys and values are all that is read.
    """
    runner = model if need_nll else backbone(model)
    kwargs = {"use_cache": False} if kind == "decoder" else {}
    with capture.recording():
        out = runner(input_ids=ids, attention_mask=mask, **kwargs)
    if not need_nll:
        return None
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    return torch.cat([torch.zeros_like(logp[:, :1, 0]), -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)], dim=1)


def attention_probs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    causal: bool,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Head-averaged attention ``(B, L, L)`` from pre-RoPE queries ``(B, L, H, d)`` and keys ``(B, L, H_kv, d)``.

    Rotary embedding is applied first when given (the model's cos/sin ``(B, L, d)``); K/V heads are
    repeated to the query heads (grouped-query attention); padded keys are masked, and future ones
    when ``causal``. Softmax in float32.
    """
    q, k = queries.transpose(1, 2).float(), keys.transpose(1, 2).float()  # (B, H, L, d)
    if rotary is not None:
        cos, sin = (t[:, None].float() for t in rotary)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, L, L)
    allowed = attention_mask.bool()[:, None, None, :]
    if causal:
        n = scores.shape[-1]
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1).mean(1)
