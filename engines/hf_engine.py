"""The transformers engine: the default on CPU, and the reference the other engines are checked against.

Every method takes a whole batch and runs it in padded sub-batches sorted by length (little padding,
one forward or one ``generate`` per sub-batch). CPU threads are chosen by engines.threads: with
``threads="auto"`` the engine uses the cores other processes leave free and re-decides while it runs,
because torch's spinning OpenMP threads collapse beside a busy neighbour.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from engines.base import Completion, Prompt, SamplingParams, progress_bar
from engines.grammar import grammar_available
from engines.threads import ThreadGovernor

logger = logging.getLogger(__name__)


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _governed(fn):
    """Run an engine call under the thread governor; the caller's torch thread count is restored after."""

    def wrapper(self, *args, **kwargs):
        if self.device != "cpu":
            return fn(self, *args, **kwargs)
        self.governor.start()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.governor.finish()

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def _governor_step(governor: ThreadGovernor, bar=None):
    """A logits processor run once per decoding step (scores unchanged): re-decides the thread count
    and shows the step in the progress bar."""
    from transformers import LogitsProcessor

    class GovernorStep(LogitsProcessor):
        step = 0

        def __call__(self, input_ids, scores):
            governor.step()
            self.step += 1
            if bar is not None and self.step % 8 == 0:
                bar.set_postfix_str(f"decoding step {self.step}")
            return scores

    return GovernorStep()


def _stop_in_output(tokenizer, stops: Sequence[str], prompt_width: int):
    """Stop a row once a stop string appears in its *generated* text.

    transformers' own ``stop_strings`` also match across the prompt boundary (a prompt ending in "\n"
    plus a generated "\n" stops at "\n\n" after one token); vLLM and OpenAI servers look at the output
    only, and so do we. Only the last few tokens are decoded each step.
    """
    import torch
    from transformers import StoppingCriteria

    window = max(len(s) for s in stops) + 4  # tokens: every token decodes to at least one character

    class StopInOutput(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tokenizer.batch_decode(input_ids[:, prompt_width:][:, -window:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in tails], dtype=torch.bool, device=input_ids.device)

    return StopInOutput()


class TransformersEngine:
    """A local transformers model (safetensors folder) behind the Engine protocol."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "",
        batch_size: int = 16,
        threads: int | str = "auto",
        dtype: str = "auto",
        max_batch_tokens: int = 4096,
        trust_remote_code: bool = False,
        progress: bool = True,
        structured: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be >= 1")
        self.name = name or str(path)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.progress = progress
        # JSON-schema constrained decoding (engines.grammar) when xgrammar is installed.
        self.enforces_json_schema = structured and grammar_available()
        self._grammars = None
        self.governor = ThreadGovernor(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype != "auto" and dtype not in dtypes:
            raise ValueError(f"dtype must be auto or one of {sorted(dtypes)}, got {dtype!r}")
        torch_dtype = dtypes.get(dtype, torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
            .to(self.device)
            .eval()
        )
        if self.device == "cpu" and self.model.config._attn_implementation == "sdpa":
            self._use_gqa_attention()
        eos = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            eos.add(im_end)
        gen_eos = self.model.generation_config.eos_token_id
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self._eos = sorted(e for e in eos if e is not None)

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any, *, name: str = "", batch_size: int = 16, threads: int | str = "auto",
             max_batch_tokens: int = 4096, progress: bool = False) -> "TransformersEngine":
        """An engine over a model already in memory (e.g. the one a trainer is training), so that it can
        be scored between epochs without saving and reloading it. ``tokenizer`` is copied (left padding
        here must not change the trainer's); the model's attention implementation is left as it is."""
        import copy

        engine = cls.__new__(cls)
        engine.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory model"
        engine.batch_size, engine.max_batch_tokens, engine.progress = batch_size, max_batch_tokens, progress
        engine.enforces_json_schema, engine._grammars = False, None
        engine.governor = ThreadGovernor(threads)
        engine.model = model
        engine.device = str(next(model.parameters()).device)
        engine.tokenizer = copy.deepcopy(tokenizer)
        engine.tokenizer.padding_side = "left"
        if engine.tokenizer.pad_token is None:
            engine.tokenizer.pad_token = engine.tokenizer.eos_token
        eos = {engine.tokenizer.eos_token_id}
        im_end = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != engine.tokenizer.unk_token_id:
            eos.add(im_end)
        gen = getattr(model, "generation_config", None)
        gen_eos = getattr(gen, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        engine._eos = sorted(e for e in eos if e is not None)
        return engine

    # ------------------------------------------------------------------------------------ helpers

    def _use_gqa_attention(self) -> None:
        """On CPU, SDPA with GQA and a padding mask instead of copying the KV cache (engines.attention)."""
        from engines.attention import register

        try:
            self.model.set_attn_implementation(register())
        except (ValueError, NotImplementedError) as e:  # a model that does not go through AttentionInterface
            logger.debug("%s keeps sdpa attention: %s", self.name, e)

    def _schema_grammars(self):
        if self._grammars is None:
            from engines.grammar import SchemaGrammars

            self._grammars = SchemaGrammars(self.tokenizer, self.model.config.vocab_size, self._eos)
        return self._grammars

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

    def _token_batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Length-sorted batches of at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens:
        full-sequence logits are (B, T, V) floats, 200 MB per 1,000 tokens at a 49k vocabulary."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) == self.batch_size or (len(batch) + 1) * lengths[i] > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    # --------------------------------------------------------------------------------- protocol

    @_governed
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        encoded = self._encode([self.render(p) for p in prompts])
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[Completion | None] = [None] * len(encoded)
        bar = progress_bar(self.progress, len(encoded), "generate")
        for b, idx in enumerate(_batches(order, self.batch_size)):
            ids, mask = self._pad_left([encoded[i] for i in idx])
            kwargs = dict(
                max_new_tokens=params.max_new_tokens,
                eos_token_id=self._eos,
                pad_token_id=self.tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([_governor_step(self.governor, bar)]),
            )
            if params.temperature > 0:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
                if params.seed is not None:
                    torch.manual_seed(params.seed + b)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if params.ignore_eos:
                kwargs["min_new_tokens"] = params.max_new_tokens
            if params.json_schema is not None and self.enforces_json_schema:
                kwargs["logits_processor"].append(self._schema_grammars().processor(params.json_schema))
            if params.stop:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_stop_in_output(self.tokenizer, params.stop, ids.shape[1])])
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row, i in enumerate(idx):
                out[i] = self._completion(gen[row, ids.shape[1] :].tolist(), params)
            bar.update(len(idx))
        bar.close()
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
        for s in params.stop:  # cutting at each stop in turn leaves the text before the earliest one
            cut = text.find(s)
            if cut >= 0:
                text, hit_stop = text[:cut], True
        reason = "stop" if hit_eos or hit_stop or len(new) < params.max_new_tokens else "length"
        return Completion(text=text, finish_reason=reason, num_tokens=len(new))

    def choice_token_ids(self, choice: str) -> list[int]:
        """The single-token encodings of ``choice`` and `` choice`` (at least one must exist)."""
        ids = []
        for variant in (choice, " " + choice):
            toks = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                ids.append(toks[0])
        if not ids:
            raise ValueError(f"choice {choice!r} is not a single token for {self.name}")
        return ids

    @_governed
    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[dict[str, float]]:
        import torch

        choice_ids = {c: self.choice_token_ids(c) for c in choices}
        encoded = self._encode([self.render(p) for p in prompts])
        out: list[dict[str, float]] = [{} for _ in encoded]
        bar = progress_bar(self.progress, len(encoded), "score choices")
        for idx in _batches(sorted(range(len(encoded)), key=lambda i: len(encoded[i])), self.batch_size):
            self.governor.step()
            ids, mask = self._pad_left([encoded[i] for i in idx])
            with torch.inference_mode():
                logits = self._forward(ids, mask, logits_to_keep=1)[:, -1, :]  # (B, V): left padding puts every last token at -1
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, i in enumerate(idx):
                out[i] = {c: float(logprobs[row, tids].max()) for c, tids in choice_ids.items()}
            bar.update(len(idx))
        bar.close()
        return out

    @_governed
    def topk_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if any(len(s) < 2 for s in sequences):
            raise ValueError("every sequence needs at least 2 tokens (row t predicts token t + 1)")
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(sequences)
        bar = progress_bar(self.progress, len(sequences), "top-k log-probs", unit="seq")
        for idx in self._token_batches([len(s) for s in sequences]):
            self.governor.step()
            ids, mask = self._pad_left([list(sequences[i]) for i in idx])
            with torch.inference_mode():
                logits = self._forward(ids, mask)  # (B, T, V)
                width = ids.shape[1]
                for row, i in enumerate(idx):
                    n = len(sequences[i])
                    rows = logits[row, width - n : width - 1].float()  # (n-1, V): position t predicts token t+1
                    lp, top = torch.log_softmax(rows, dim=-1).topk(k, dim=-1)  # (n-1, k), sorted descending
                    out[i] = (top.to(torch.int32).cpu().numpy(), lp.cpu().numpy().astype(np.float32))
            bar.update(len(idx))
        bar.close()
        return [o for o in out if o is not None]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
