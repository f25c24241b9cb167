"""Model specs and inference engines behind one protocol (engines/base.py).

    from engines import load_engine, EngineConfig
    engine = load_engine("smollm2?layers=10", EngineConfig(engine="transformers"))
    engine = load_engine("smollm2", "vllm", enforce_eager=True)      # engine name + option overrides

Heavy libraries (torch, transformers, vllm) are imported only when an engine is loaded.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from engines.base import Completion, Engine, EngineCapabilityError, Message, Prompt, SamplingParams
from engines.spec import GRAMMAR, ModelSpec, SpecError, parse_spec

logger = logging.getLogger(__name__)

ENGINE_CHOICES = ("auto", "transformers", "vllm", "openai")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class EngineConfig:
    """How to serve a model; the spec says which model. Unused fields are ignored by other engines."""

    engine: str = field(default="auto", metadata={"help": "auto: vLLM where CUDA and vllm are present, else transformers."})
    batch_size: int = field(default=16, metadata={"help": "transformers: prompts per padded batch."})
    threads: int | str = field(
        default="auto",
        metadata={"help": "transformers on CPU: a count, or auto (also 0): the cores other processes leave free, re-decided while running."},
    )
    max_batch_tokens: int = field(default=4096, metadata={"help": "transformers topk_logprobs: padded tokens per forward (bounds the (B, T, V) logits)."})
    dtype: str = field(default="auto", metadata={"help": "auto: bfloat16 on CUDA, float32 on CPU."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code shipped with the weights (only if you trust it)."})
    max_model_len: int = field(default=4096, metadata={"help": "vLLM: context length to reserve KV cache for."})
    max_logprobs: int = field(default=64, metadata={"help": "vLLM: the largest k topk_logprobs may ask for."})
    enforce_eager: bool = field(default=True, metadata={"help": "vLLM: skip compilation (CPU start-up ~13-22 s instead of 105-180 s)."})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vLLM on CUDA: share of GPU memory to use."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM on CUDA: GPUs one model is split over (tensor parallelism)."})
    concurrency: int = field(default=8, metadata={"help": "OpenAI-compatible HTTP: requests in flight."})
    timeout_s: float = field(default=120.0, metadata={"help": "OpenAI-compatible HTTP: per request."})
    max_retries: int = field(default=4, metadata={"help": "OpenAI-compatible HTTP: retries of a request answered with 429/5xx, and waits for a replica when every one is out of rotation."})
    replica_cooldown_s: float = field(default=2.0, metadata={"help": "OpenAI-compatible HTTP: how long a replica that did not answer stays out of rotation (doubling with each failure in a row, up to 60 s)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "OpenAI-compatible HTTP: environment variable with the key."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (stderr) during each engine call."})

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_CHOICES:
            raise ValueError(f"engine must be one of {ENGINE_CHOICES}, got {self.engine!r}")
        if self.threads == 0:
            self.threads = "auto"
        if self.threads != "auto" and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be 'auto', 0 (auto) or a positive integer, got {self.threads!r}")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_model_len < 16 or self.max_logprobs < 1:
            raise ValueError("max_model_len must be >= 16 and max_logprobs >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0 or self.replica_cooldown_s <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0, timeout_s > 0, replica_cooldown_s > 0")
        if not self.api_key_env:
            raise ValueError("api_key_env must name an environment variable")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_engine(spec: ModelSpec, requested: str) -> str:
    """Which backend serves ``spec``: the spec's own kind wins, then the request, then auto."""
    if spec.kind == "openai":
        return "openai"
    if spec.kind == "vllm":
        return "vllm"
    if spec.kind in ("minilm", "st"):
        raise SpecError(f"{spec.raw!r} is a sentence encoder: it generates nothing; use it as a KV teacher or an embedding model")
    if requested == "openai":
        raise SpecError(f"engine openai needs an openai:<base_url>#<model> spec, got {spec.raw!r}")
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is not None and _cuda_available():
        return "vllm"
    return "transformers"


def load_engine(spec: str | ModelSpec, config: EngineConfig | str | None = None, **overrides: Any) -> Engine:
    """Load the engine serving ``spec``.

    ``config`` is an EngineConfig or just the engine name ("auto", "transformers", "vllm", "openai");
    ``overrides`` replace its fields (``load_engine("smollm2", "vllm", max_model_len=2048)``).
    """
    if isinstance(config, str):
        config = EngineConfig(engine=config)
    config = replace(config or EngineConfig(), **overrides)
    parsed = parse_spec(spec)
    backend = resolve_engine(parsed, config.engine)
    logger.info("loading %s on the %s engine", parsed.raw, backend)
    if backend == "openai":
        from engines.openai_engine import OpenAIEngine

        return OpenAIEngine(parsed, config)
    path = parsed.local_path()
    if backend == "vllm":
        from engines.vllm_engine import VLLMEngine

        return VLLMEngine(path, config, name=parsed.raw)
    from engines.hf_engine import TransformersEngine

    return TransformersEngine(
        path,
        name=parsed.raw,
        batch_size=config.batch_size,
        threads=config.threads,
        dtype=config.dtype,
        max_batch_tokens=config.max_batch_tokens,
        trust_remote_code=config.trust_remote_code,
        progress=config.progress,
    )


def load_model_and_tokenizer(spec: str | ModelSpec, dtype: str | None = None, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """The transformers model and tokenizer of a local spec, for training (train mode, on CPU).

    ``dtype``: None/"auto" loads float32 (what CPU training needs; mixed precision is the trainer's job).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in (None, *DTYPES):
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    parsed = parse_spec(spec)
    if not parsed.is_local:
        raise SpecError(f"{parsed.raw!r} is served over HTTP; training needs local weights (hf:, smollm2, vllm:)")
    path = parsed.local_path()
    torch_dtype = getattr(torch, dtype) if dtype not in (None, "auto") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    return model, tokenizer


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
    "load_model_and_tokenizer",
    "parse_spec",
    "resolve_engine",
]
