"""Loading sentence-transformers encoders from specs: ``minilm`` (the embedded all-MiniLM-L6-v2),
``st:<folder>`` or a plain folder. Students saved by this package load the same way (importing
``training.embedding.student`` registers their model class with transformers' Auto classes)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from training.embedding.errors import EmbeddingSetupError

logger = logging.getLogger(__name__)


def encoder_path(spec: str) -> Path:
    """The sentence-transformers folder of a spec or folder."""
    from engines.smollm2 import ModelNotFoundError
    from engines.spec import SpecError, parse_spec

    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / "modules.json").is_file():
            raise EmbeddingSetupError(f"{folder} is not a sentence-transformers folder (no modules.json)")
        return folder
    try:
        parsed = parse_spec(spec)
        if parsed.kind not in ("minilm", "st"):
            raise EmbeddingSetupError(f"{spec!r} is not a sentence encoder; give minilm, st:<folder> or a sentence-transformers folder")
        return Path(parsed.local_path())
    except (SpecError, ModelNotFoundError) as e:
        raise EmbeddingSetupError(str(e)) from None


def load_encoder(spec: str, device: str = "auto", max_seq_length: int | None = None) -> Any:
    """A SentenceTransformer in eval mode (``device`` auto: cuda when present)."""
    from sentence_transformers import SentenceTransformer

    import training.embedding.student  # noqa: F401  (registers the student's model class)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(str(encoder_path(spec)), device=device)
    if max_seq_length is not None and (model.max_seq_length is None or max_seq_length < model.max_seq_length):
        model.max_seq_length = max_seq_length
    return model.eval()
