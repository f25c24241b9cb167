"""Model specs and inference engines behind one protocol (engines/base.py).

    from engines import load_engine, EngineConfig
    engine = load_engine("smollm2?layers=10", EngineConfig(engine="transformers"))

Heavy libraries (torch, transformers, vllm) are imported only when an engine is loaded.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace
from typing import Any

from engines.base import Completion, Engine, Message, Prompt, SamplingParams
from engines.spec import GRAMMAR, ModelSpec, SpecError, parse_spec

logger = logging.getLogger(__name__)

ENGINE_CHOICES = ("auto", "transformers", "vllm", "openai")


class EngineCapabilityError(RuntimeError):
    """The engine cannot do what was asked (e.g. top-k log-probs over a public HTTP API)."""


@dataclass
class EngineConfig:
    """How to serve a model; the spec says which model."""

    engine: str = "auto"  # auto: vLLM where CUDA and vllm are present, else transformers
    batch_size: int = 16  # transformers: prompts per padded batch
    threads: int = 0  # transformers on CPU: 0 = the cores that are free at each call
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    max_model_len: int = 4096  # vLLM
    enforce_eager: bool = True  # vLLM: skip compilation (start-up ~22 s instead of 105–180 s on CPU)
    gpu_memory_utilization: float = 0.85  # vLLM on CUDA
    concurrency: int = 8  # OpenAI-compatible HTTP: requests in flight
    timeout_s: float = 120.0  # OpenAI-compatible HTTP: per request
    max_retries: int = 4  # OpenAI-compatible HTTP: on 429/5xx/connection errors
    api_key_env: str = "OPENAI_API_KEY"  # OpenAI-compatible HTTP: environment variable with the key

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_CHOICES:
            raise ValueError(f"engine must be one of {ENGINE_CHOICES}, got {self.engine!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0, timeout_s > 0")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_engine(spec: ModelSpec, requested: str) -> str:
    """Which backend serves ``spec``: the spec's own kind wins, then the request, then auto."""
    if spec.kind == "openai":
        return "openai"
    if spec.kind == "vllm":
        return "vllm"
    if requested == "openai":
        raise SpecError(f"engine openai needs an openai:<base_url>#<model> spec, got {spec.raw!r}")
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is not None and _cuda_available():
        return "vllm"
    return "transformers"


def load_engine(spec: str | ModelSpec, config: EngineConfig | None = None, **overrides: Any) -> Engine:
    """Load the engine serving ``spec`` (``overrides`` replace fields of ``config``)."""
    config = replace(config or EngineConfig(), **overrides)
    parsed = parse_spec(spec)
    backend = resolve_engine(parsed, config.engine)
    logger.info("loading %s on the %s engine", parsed.raw, backend)
    if backend == "openai":
        from engines.openai_engine import OpenAIEngine

        return OpenAIEngine(parsed, config)
    path = parsed.local_path() if parsed.kind != "vllm" else ModelSpec("hf", path=parsed.path, raw=parsed.raw).local_path()
    if backend == "vllm":
        from engines.vllm_engine import VLLMEngine

        return VLLMEngine(path, config, name=parsed.raw)
    from engines.hf_engine import TransformersEngine

    return TransformersEngine(path, name=parsed.raw, batch_size=config.batch_size, threads=config.threads, dtype=config.dtype)


__all__ = [
    "Completion",
    "Engine",
    "EngineCapabilityError",
    "EngineConfig",
    "GRAMMAR",
    "Message",
    "ModelSpec",
    "Prompt",
    "SamplingParams",
    "SpecError",
    "load_engine",
    "parse_spec",
    "resolve_engine",
]
