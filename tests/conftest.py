from __future__ import annotations

from pathlib import Path

import pytest

from tests.testing_utils import make_tiny_encoder, make_tiny_llama

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clinical"


@pytest.fixture(scope="session", autouse=True)
def own_score_cache(tmp_path_factory):
    """The suite's scores (eval.score_cache) in a folder of its own, for this process and its children:
    never the user's cache, and nothing a later test session could reuse."""
    import os

    from eval.score_cache import SCORE_CACHE_ENV

    old = os.environ.get(SCORE_CACHE_ENV)
    os.environ[SCORE_CACHE_ENV] = str(tmp_path_factory.mktemp("scores"))
    yield
    if old is None:
        os.environ.pop(SCORE_CACHE_ENV, None)
    else:
        os.environ[SCORE_CACHE_ENV] = old


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct as a safetensors folder (converted from the GGUF once per cache)."""
    from engines.smollm2 import converted_path

    return converted_path()


@pytest.fixture(scope="session")
def tiny_model_path(smollm2_path: Path, tmp_path_factory) -> Path:
    """A tiny random Llama with the SmolLM2 tokenizer (the student in fast tests)."""
    return make_tiny_llama(smollm2_path, tmp_path_factory.mktemp("tiny_student"), hidden=32, layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_teacher_path(smollm2_path: Path, tmp_path_factory) -> Path:
    """A second, wider tiny random Llama with the same tokenizer (the teacher in fast tests)."""
    return make_tiny_llama(smollm2_path, tmp_path_factory.mktemp("tiny_teacher"), hidden=64, layers=2, seed=1)


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory) -> Path:
    """A tiny random BERT sentence encoder (4 layers, hidden 32) with the MiniLM tokenizer: the encoder tests' teacher."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared development data at {SHARED_DATA}")
    return SHARED_DATA


# The training tests' data: 4 small clinical items, tokenized by the tiny student's (SmolLM2's) tokenizer.


@pytest.fixture(scope="session")
def items(shared_data_dir):
    from tests.test_training_teacher_logits import small_items

    return small_items(shared_data_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="session")
def dataset(items, tokenizer):
    from training.mcq_data import build_dataset

    return build_dataset(items, tokenizer)
