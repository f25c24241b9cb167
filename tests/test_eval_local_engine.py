"""A small transformers Engine for eval/tree tests, and checks that it honours the Engine protocol.

engines/ has no transformers backend in this checkout yet; this one runs the tiny model's real forward
pass (left-padded batches, the chat template with ``continue_final_message``), so scoring tests compare
real numbers. Other test files import ``LocalHFEngine`` from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

from engines.base import Completion, Engine, Prompt, SamplingParams


class LocalHFEngine:
    """Engine protocol over a transformers causal LM (float32, CPU, whole batch per call)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"hf:{path}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.calls: list[tuple[str, int]] = []  # (method, batch size): lets tests check batching

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        messages = list(prompt)
        if messages[-1]["role"] == "assistant":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _batch(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        texts = [self.render(p) for p in prompts]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    @torch.no_grad()
    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[dict[str, float]]:
        self.calls.append(("choice_logprobs", len(prompts)))
        enc = self._batch(prompts)
        logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :]  # (B, V): next token after the prompt
        logp = torch.log_softmax(logits.float(), dim=-1)
        ids = {}
        for c in choices:
            ids[c] = [t[0] for t in (self.tokenizer.encode(v, add_special_tokens=False) for v in (c, " " + c)) if len(t) == 1]
        return [{c: max(float(row[i]) for i in ids[c]) for c in choices} for row in logp]

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        self.calls.append(("generate", len(prompts)))
        enc = self._batch(prompts)
        out = self.model.generate(**enc, max_new_tokens=params.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        completions = []
        for row in out[:, enc["input_ids"].shape[1]:]:
            ids = row.tolist()
            eos = self.tokenizer.eos_token_id
            n = ids.index(eos) if eos in ids else len(ids)
            completions.append(Completion(self.tokenizer.decode(ids[:n], skip_special_tokens=True),
                                          "stop" if n < len(ids) else "length", n))
        return completions

    def topk_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for seq in sequences:
            logits = self.model(torch.tensor([list(seq)])).logits[0, :-1]  # (L - 1, V)
            lp, ids = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)
            out.append((ids.numpy().astype(np.int32), lp.numpy().astype(np.float32)))
        return out

    def close(self) -> None:
        self.model = None


def force_tokens(engine: LocalHFEngine, texts: Sequence[str], bias: float = 50.0) -> None:
    """Give the tiny model an output bias so that these tokens win every next-token choice."""
    old = engine.model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight.data.copy_(old.weight.data)
    head.bias.data.zero_()
    for text in texts:
        (token,) = engine.tokenizer.encode(text, add_special_tokens=False)
        head.bias.data[token] = bias
    engine.model.lm_head = head


@pytest.fixture(scope="module")
def engine(tiny_model_path) -> LocalHFEngine:
    return LocalHFEngine(tiny_model_path)


def test_is_an_engine(engine):
    assert isinstance(engine, Engine)


def test_choice_logprobs_match_an_unpadded_forward(engine):
    prompts = [[{"role": "user", "content": "Which letter? " + "x " * n}, {"role": "assistant", "content": "The answer is"}]
               for n in (1, 9, 30)]
    batched = engine.choice_logprobs(prompts, ["A", "B", "C"])
    for prompt, got in zip(prompts, batched):
        ids = engine.tokenizer(engine.render(prompt), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(ids, logits_to_keep=1).logits[0, -1].float(), -1)
        for letter in "ABC":
            cands = [engine.tokenizer.encode(v, add_special_tokens=False)[0] for v in (letter, " " + letter)]
            assert got[letter] == pytest.approx(max(float(logp[i]) for i in cands), abs=1e-4)
