"""The transformers engine: the default on CPU, and the reference the other engines are checked against.

Every method takes a whole batch and runs it in padded sub-batches sorted by length (little padding,
one forward or one ``generate`` per sub-batch).

Threads: on this kind of machine 2 OpenMP threads give ~114 tok/s idle but collapse to 7–12 tok/s
when another process is busy (the threads spin-wait for a core that is taken), where 1 thread keeps
~60. With ``threads=0`` the engine measures how busy the CPUs are (``/proc/stat`` over 50 ms) before
each call and uses only the cores that are free.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from engines.base import Completion, Prompt, SamplingParams

logger = logging.getLogger(__name__)


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields)


def free_cores(window_s: float = 0.05) -> int:
    """Cores not used by other processes right now (>= 1); this process is idle while measuring."""
    total_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    a = _cpu_times()
    time.sleep(window_s)
    b = _cpu_times()
    if a is None or b is None or b[1] == a[1]:
        return total_cores
    busy_fraction = 1.0 - (b[0] - a[0]) / (b[1] - a[1])
    busy_cores = busy_fraction * total_cores
    return max(1, total_cores - int(busy_cores + 0.5))


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield order[i : i + size]


class TransformersEngine:
    """A local transformers model (safetensors folder) behind the Engine protocol."""

    def __init__(self, path: str | Path, *, name: str = "", batch_size: int = 16, threads: int = 0, dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name or str(path)
        self.batch_size = batch_size
        self.threads = threads
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = {"auto": torch.bfloat16 if self.device == "cuda" else torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        eos = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            eos.add(im_end)
        gen_eos = self.model.generation_config.eos_token_id
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self._eos = sorted(e for e in eos if e is not None)

    # ------------------------------------------------------------------------------------ helpers

    def _set_threads(self) -> None:
        if self.device != "cpu":
            return
        import torch

        n = self.threads or free_cores()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def render(self, prompt: Prompt) -> str:
        """Raw text as is; chat messages through the chat template (a trailing assistant turn is continued)."""
        if isinstance(prompt, str):
            return prompt
        messages = list(prompt)
        cont = bool(messages) and messages[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
        )

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        # Chat templates already contain the special tokens; raw text gets none added either.
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def _pad_left(self, seqs: Sequence[Sequence[int]]):
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, ids, mask, **kwargs):
        """A forward pass on a left-padded batch; positions count from each row's first real token."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits

    # --------------------------------------------------------------------------------- protocol

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        import torch

        self._set_threads()
        encoded = self._encode([self.render(p) for p in prompts])
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[Completion | None] = [None] * len(encoded)
        for b, idx in enumerate(_batches(order, self.batch_size)):
            ids, mask = self._pad_left([encoded[i] for i in idx])
            kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=self._eos, pad_token_id=self.tokenizer.pad_token_id)
            if params.temperature > 0:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
                if params.seed is not None:
                    torch.manual_seed(params.seed + b)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if params.stop:
                kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row, i in enumerate(idx):
                new = gen[row, ids.shape[1] :].tolist()
                out[i] = self._completion(new, params)
        return [c for c in out if c is not None]

    def _completion(self, new: list[int], params: SamplingParams) -> Completion:
        pad = self.tokenizer.pad_token_id
        while new and new[-1] == pad and pad not in self._eos:
            new.pop()
        hit_eos = False
        for j, tok in enumerate(new):
            if tok in self._eos:
                new, hit_eos = new[:j], True
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        hit_stop = False
        for s in params.stop:
            cut = text.find(s)
            if cut >= 0:
                text, hit_stop = text[:cut], True
        reason = "stop" if hit_eos or hit_stop or len(new) < params.max_new_tokens else "length"
        return Completion(text=text, finish_reason=reason, num_tokens=len(new))

    def _choice_token_ids(self, choice: str) -> list[int]:
        ids = []
        for variant in (choice, " " + choice):
            toks = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                ids.append(toks[0])
        if not ids:
            raise ValueError(f"choice {choice!r} is not a single token for {self.name}")
        return ids

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[dict[str, float]]:
        import torch

        self._set_threads()
        choice_ids = {c: self._choice_token_ids(c) for c in choices}
        encoded = self._encode([self.render(p) for p in prompts])
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[dict[str, float]] = [{} for _ in encoded]
        for idx in _batches(order, self.batch_size):
            ids, mask = self._pad_left([encoded[i] for i in idx])
            with torch.inference_mode():
                logits = self._forward(ids, mask, logits_to_keep=1)[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, V)
            for row, i in enumerate(idx):
                out[i] = {c: float(logprobs[row, tids].max()) for c, tids in choice_ids.items()}
        return out

    def topk_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        self._set_threads()
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(sequences)
        for idx in _batches(order, self.batch_size):
            ids, mask = self._pad_left([list(sequences[i]) for i in idx])
            with torch.inference_mode():
                logits = self._forward(ids, mask)  # (B, T, V)
            width = ids.shape[1]
            for row, i in enumerate(idx):
                n = len(sequences[i])
                rows = logits[row, width - n : width - 1].float()  # positions 0..n-2 predict tokens 1..n-1
                lp, top = torch.log_softmax(rows, dim=-1).topk(k, dim=-1)  # (n-1, k), sorted descending
                out[i] = (top.to(torch.int32).cpu().numpy(), lp.cpu().numpy().astype(np.float32))
        return [o for o in out if o is not None]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
