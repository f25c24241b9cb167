"""The one protocol every inference backend implements.

Every call takes a whole batch: callers never loop over items, so each backend can batch (transformers
pads a batch, vLLM schedules it, the HTTP client runs requests concurrently).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, Union, runtime_checkable

import numpy as np

Message = dict[str, str]
# A prompt is raw text (sent as is) or chat messages (rendered with the model's chat template and a
# generation prompt). If the last message is from the assistant, its content is a prefix the model
# continues (``continue_final_message``), which is how MCQ scoring asks for the answer letter.
Prompt = Union[str, Sequence[Message]]


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "prompt"):
    """A tqdm bar on stderr for one engine call (a no-op when disabled): long CPU calls take minutes."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or total == 0, leave=False, mininterval=2.0, dynamic_ncols=True)


class EngineCapabilityError(RuntimeError):
    """The engine cannot do what was asked (e.g. top-k log-probs over a public HTTP API)."""


@dataclass
class SamplingParams:
    """Decoding settings shared by all engines (a subset every backend supports)."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    # Base seed. Prompt i of a call samples with seed + i (vLLM, HTTP) or from a generator seeded once per
    # batch (transformers), so a prompt repeated within one call gives different samples.
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # JSON schema for structured decoding; engines that cannot constrain decoding ignore it and the
    # caller parses strictly (see prompts.parse).
    json_schema: dict[str, Any] | None = None
    # Generate exactly max_new_tokens (EOS does not end a row; stop strings still cut the text): for
    # benchmarks at a fixed length. vLLM and the HTTP client pass vLLM's own ``ignore_eos``.
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    num_tokens: int


@runtime_checkable
class Engine(Protocol):
    """What the loop needs from a model server."""

    name: str  # the spec string it was loaded from

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order."""
        ...

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[dict[str, float]]:
        """log P(first token of each choice | prompt) for every prompt.

        ``choices`` are short strings such as ``["A", "B", "C", "D"]``; each is scored as the next
        token after the prompt (with and without a leading space, whichever the tokenizer makes one
        token; the higher of the two counts). Used for option-logprob MCQ scoring.
        """
        ...

    def topk_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k next-token log-probs at every position of each token sequence.

        Returns per sequence ``(ids, logprobs)``, both of shape (L - 1, k): row t is the distribution of
        token t + 1 given tokens 0..t; ids int32, logprobs float32, sorted by logprob descending. Only
        engines that share the caller's tokenizer can do this (transformers, vLLM).
        """
        ...

    def close(self) -> None:
        """Free the model (GPU memory, worker processes)."""
        ...
