"""The compressed student encoder: a BERT whose word embeddings may go through a low-dimensional
bottleneck and whose k kept layers may be applied r times (parameter recurrence).

``RecurrentBertModel`` is a plain ``transformers`` model with a config of its own (model_type
``atkd_recurrent_bert``), registered with ``AutoConfig``/``AutoModel`` when this module is imported. A
student therefore saves and loads as an ordinary sentence-transformers folder (its ``modules.json`` names
only sentence-transformers' own Transformer, Pooling and Normalize), with no ``trust_remote_code``: the
class comes from our package, not from the folder. Load one after ``import training.embedding``.

Recurrence saves parameters, not compute: k layers applied r times cost k·r layer applications.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bert.modeling_bert import BertEncoder

from training.embedding.errors import EmbeddingSetupError

logger = logging.getLogger(__name__)


class RecurrentBertConfig(BertConfig):
    """BertConfig plus ``embedding_size`` (the bottleneck E; None: a full vocabulary × hidden table) and
    ``repeat`` (how many times the ``num_hidden_layers`` unique layers are applied)."""

    model_type = "atkd_recurrent_bert"

    def __init__(self, embedding_size: int | None = None, repeat: int = 1, teacher_layers: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_size = embedding_size
        self.repeat = repeat
        self.teacher_layers = list(teacher_layers) if teacher_layers is not None else None


class BottleneckEmbedding(nn.Module):
    """vocabulary × E lookup, then an E → hidden linear map (no bias), in place of a vocabulary × hidden table."""

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.lookup = nn.Embedding(vocab_size, embedding_size, padding_idx=padding_idx)
        self.project = nn.Linear(embedding_size, hidden_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.lookup(input_ids))  # (B, T, E) -> (B, T, H)

    @torch.no_grad()
    def init_from(self, table: torch.Tensor) -> float:
        """Truncated SVD of a (V, H) table: lookup = U_E·S_E, project = V_E, so lookup @ projectᵀ is the best
        rank-E approximation. Returns the fraction of the table's squared norm that is kept."""
        e = self.lookup.embedding_dim
        u, s, vh = torch.linalg.svd(table.double(), full_matrices=False)
        self.lookup.weight.copy_((u[:, :e] * s[:e]).to(self.lookup.weight.dtype))
        self.project.weight.copy_(vh[:e].T.to(self.project.weight.dtype))  # (H, E)
        return float((s[:e] ** 2).sum() / (s**2).sum())


class RecurrentBertEncoder(BertEncoder):
    """BertEncoder that applies its layers ``config.repeat`` times, in order each time (l0..lk-1, l0..lk-1, ...)."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None, use_cache=None, **kwargs: Any) -> BaseModelOutputWithPastAndCrossAttentions:
        for _ in range(self.config.repeat):
            for layer_module in self.layer:
                hidden_states = layer_module(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, **kwargs)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None)


class RecurrentBertModel(BertModel):
    """BertModel with an optional bottleneck embedding and recurrent layers; no pooler (mean pooling sits in the
    sentence-transformers Pooling module)."""

    config_class = RecurrentBertConfig

    def __init__(self, config: RecurrentBertConfig, add_pooling_layer: bool = False) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.encoder = RecurrentBertEncoder(config)
        if config.embedding_size:
            self.embeddings.word_embeddings = BottleneckEmbedding(config.vocab_size, config.embedding_size, config.hidden_size, config.pad_token_id)
        self.post_init()


AutoConfig.register(RecurrentBertConfig.model_type, RecurrentBertConfig, exist_ok=True)
AutoModel.register(RecurrentBertConfig, RecurrentBertModel, exist_ok=True)


@dataclass(frozen=True)
class StudentShape:
    """What to keep of the teacher: the bottleneck E (None: none), the kept teacher layers, the repeat count."""

    bottleneck: int | None
    layers: tuple[int, ...]
    repeat: int = 1

    def describe(self) -> str:
        e = f"E={self.bottleneck}" if self.bottleneck else "full embeddings"
        return f"{e}, layers {list(self.layers)} x{self.repeat}"


def evenly_spaced(n_teacher: int, keep: int) -> tuple[int, ...]:
    """``keep`` layer indices spread over ``n_teacher`` (first and last included where keep ≥ 2)."""
    if not 0 <= keep <= n_teacher:
        raise EmbeddingSetupError(f"--keep must be between 0 and the teacher's {n_teacher} layers, got {keep}")
    if keep == 0:
        return ()
    if keep == 1:
        return (n_teacher - 1,)
    return tuple(round(i * (n_teacher - 1) / (keep - 1)) for i in range(keep))


def bert_of(model: Any) -> BertModel:
    """The BertModel inside a sentence-transformers model (its first module), or a clear error."""
    first = model[0]
    auto = getattr(first, "auto_model", None)
    if not isinstance(auto, BertModel):
        raise EmbeddingSetupError(f"the teacher's first module must hold a BERT-family model, got {type(auto).__name__}")
    return auto


def build_student(teacher: Any, shape: StudentShape) -> Any:
    """A student sentence-transformers model built from ``teacher`` (left unchanged): the kept layers copied,
    embeddings copied (positions, token types, LayerNorm) and the word table SVD-initialised when there is a
    bottleneck, and the teacher's other modules (Pooling, Normalize, ...) copied after it."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer

    bert = bert_of(teacher)
    tconf = bert.config
    n = tconf.num_hidden_layers
    if any(not 0 <= i < n for i in shape.layers):
        raise EmbeddingSetupError(f"kept layers {list(shape.layers)} are not all among the teacher's {n} layers")
    if shape.repeat < 1:
        raise EmbeddingSetupError(f"--repeat must be at least 1, got {shape.repeat}")
    if shape.bottleneck is not None and not 0 < shape.bottleneck < tconf.hidden_size:
        raise EmbeddingSetupError(f"--bottleneck must be between 1 and the hidden size {tconf.hidden_size - 1} (0: none), got {shape.bottleneck}")
    fields = {k: v for k, v in tconf.to_dict().items() if k not in ("model_type", "architectures", "transformers_version", "auto_map")}
    fields["num_hidden_layers"] = len(shape.layers)
    config = RecurrentBertConfig(embedding_size=shape.bottleneck, repeat=shape.repeat, teacher_layers=list(shape.layers), **fields)
    config.architectures = [RecurrentBertModel.__name__]
    student = RecurrentBertModel(config).to(dtype=bert.dtype)
    emb_s, emb_t = student.embeddings, bert.embeddings
    with torch.no_grad():
        for name in ("position_embeddings", "token_type_embeddings", "LayerNorm"):
            getattr(emb_s, name).load_state_dict(getattr(emb_t, name).state_dict())
        if shape.bottleneck:
            kept = emb_s.word_embeddings.init_from(emb_t.word_embeddings.weight)
            logger.info("bottleneck E=%d keeps %.1f%% of the word table's energy", shape.bottleneck, 100 * kept)
        else:
            emb_s.word_embeddings.load_state_dict(emb_t.word_embeddings.state_dict())
        for j, i in enumerate(shape.layers):
            student.encoder.layer[j].load_state_dict(bert.encoder.layer[i].state_dict())
    with tempfile.TemporaryDirectory(prefix="atkd-student-") as tmp:
        student.save_pretrained(tmp)
        teacher[0].processor.save_pretrained(tmp)
        module = Transformer(tmp, max_seq_length=teacher[0].max_seq_length)
    rest = [copy.deepcopy(teacher[i]) for i in range(1, len(teacher))]
    return SentenceTransformer(modules=[module, *rest], device=str(teacher.device))


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (shared ones once), as a user would count the model's size."""
    return sum(p.numel() for p in model.parameters())


def layer_applications(model: Any) -> int:
    """Transformer layer applications per forward pass: the compute that recurrence does not save."""
    bert = bert_of(model)
    return bert.config.num_hidden_layers * getattr(bert.config, "repeat", 1)
