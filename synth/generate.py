"""Teacher generation: new MCQs for the weak nodes of the ability tree.

One request asks for one item (small teachers cannot keep several straight). Every round sends all
open requests of the whole allocation to the engine in ONE ``engine.generate`` call; the requests whose
output did not parse are asked again in the next round with the next seed, up to ``SynthConfig.rounds``.
Parse failures never raise: each failed attempt becomes a rejected record (stage ``parse``, the reason
and the raw text), which is how the loop learns how often its teacher fails.

The prompt (prompts/generate_mcq.j2) shows one seed exemplar of the node as a filled-in JSON example
and the node's diagnoses (what the student gets wrong there). By default the assistant reply is
started with ``{"question": "`` (``prefill``) on engines that do not enforce the JSON schema: measured on
SmolLM2-135M-Instruct this is what makes it write the JSON at all. Engines that enforce
``SamplingParams.json_schema`` (vLLM; transformers with xgrammar, engines.grammar) get no prefill and
write the whole object; the parser accepts it either way (prompts.parse.parse_completion).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from data.records import GeneratedItem, MCQItem, first_error
from engines.base import Engine, SamplingParams
from prompts import render
from prompts.parse import MCQDraft, mcq_json_schema, parse_completion

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class NodeBrief:
    """What the teacher is told about one node of the ability tree."""

    node_id: str
    name: str
    description: str = ""
    diagnoses: tuple[str, ...] = ()  # short texts from the error analysis
    path: tuple[str, ...] = ()  # ability path given to the generated items (root first)


@dataclass
class SynthConfig:
    """Sampling and request settings of the generate stage."""

    # SmolLM2-135M on 8 requests: 1/8 parsed at 0.7, 4/8 at 0.3, 6/8 greedy (greedy copies the exemplar most).
    temperature: float = field(default=0.3, metadata={"help": "Sampling temperature (0 = greedy: one round only, a retry would repeat itself)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=320, metadata={"help": "Token budget of one generated item."})
    seed: int = field(default=0, metadata={"help": "Sampling seed of round 1; round r uses seed + r - 1."})
    rounds: int = field(default=2, metadata={"help": "Generation rounds; later rounds re-ask only the requests that failed to parse."})
    num_options: int = field(default=4, metadata={"help": "Options per generated item (4 or 5)."})
    exemplars_per_item: int = field(default=1, metadata={"help": "Seed exemplars shown (as JSON) in one request."})
    max_exemplar_chars: int = field(default=400, metadata={"help": "Prefer exemplars whose question is at most this long (short prompts for small teachers)."})
    # Off by default: measured on SmolLM2-135M-Instruct (16 requests, tests/fixtures/smollm2_outputs),
    # asking for an explanation cut valid items from 5/16 to 3/16, the model rambling in it until
    # max_new_tokens. Turn it on for stronger teachers; the parser accepts the field either way.
    explanation: bool = field(default=False, metadata={"help": "Ask for an 'explanation' field in the teacher's JSON."})
    explanation_first: bool = field(default=False, metadata={"help": "Ask for the explanation before the options (implies --explanation): a worked solution the options are then read from (the loop sets it for a generate-mode domain)."})
    prefill: bool = field(default=True, metadata={"help": "Start the reply with '{\"question\": \"' on engines that do not enforce the JSON schema."})
    domain: str = field(default="", metadata={"help": "Domain name shown in the prompt, e.g. 'clinical medicine'."})

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 16:
            raise ValueError(f"max_new_tokens must be >= 16, got {self.max_new_tokens}")
        if not 1 <= self.rounds <= 10:
            raise ValueError(f"rounds must be in [1, 10], got {self.rounds}")
        if self.num_options not in (4, 5):
            raise ValueError(f"num_options must be 4 or 5, got {self.num_options}")
        if self.exemplars_per_item < 1:
            raise ValueError(f"exemplars_per_item must be >= 1, got {self.exemplars_per_item}")
        if self.explanation_first:
            self.explanation = True
        if self.max_exemplar_chars < 1:
            raise ValueError(f"max_exemplar_chars must be >= 1, got {self.max_exemplar_chars}")

    @property
    def letters(self) -> str:
        return LETTERS[: self.num_options]

    @property
    def prefill_text(self) -> str:
        return '{\n  "question": "' if self.prefill else ""


@dataclass
class Request:
    """One item to write: its final id, node, slot and the exemplars its prompt shows."""

    id: str
    node: NodeBrief
    slot: int  # 0-based position among the node's requests
    total: int  # requests for this node
    exemplars: list[MCQItem]


@dataclass
class GenerationResult:
    items: list[GeneratedItem]
    rejected: list[dict[str, Any]]  # one per failed attempt: request fields + stage, reason, raw
    report: dict[str, Any]


def node_hash(node_id: str) -> str:
    """A short stable tag of a node id (ids may hold spaces and slashes)."""
    return hashlib.sha1(node_id.encode("utf-8")).hexdigest()[:8]


def item_id(iteration: int, node_id: str, slot: int) -> str:
    return f"gen-{iteration}-{node_hash(node_id)}-{slot}"


def example_json(item: MCQItem, letters: str, with_explanation: bool = True, first: bool = False) -> str:
    """A seed item written in the output format, options cut or kept to ``letters``.

    Seed items carry no explanation; the example's explanation names the keyed option so the teacher
    sees a filled-in field. An exemplar whose key falls outside ``letters`` keeps its first options and
    the key (the key replaces the last kept option). ``first``: the explanation right after the question.
    """
    keys = list(item.options)[: len(letters)]
    if item.answer_idx not in keys:
        keys[-1] = item.answer_idx
    texts = [item.options[k] for k in keys]
    answer = letters[keys.index(item.answer_idx)]
    obj: dict[str, Any] = {"question": item.question, "options": dict(zip(letters, texts)), "answer_idx": answer}
    if with_explanation or first:
        why = getattr(item, "solution", None) or getattr(item, "explanation", "") or f"{item.options[item.answer_idx]} is correct."
        obj = {"question": item.question, "explanation": why, **obj} if first else {**obj, "explanation": why}
    return json.dumps(obj, ensure_ascii=False, indent=2)


def _usable_exemplars(items: Sequence[MCQItem], config: SynthConfig) -> list[MCQItem]:
    """Exemplars with enough options, short ones first choice; original order kept within each tier."""
    enough = [it for it in items if len(it.options) >= config.num_options]
    short = [it for it in enough if len(it.question) <= config.max_exemplar_chars]
    return short or enough


def plan_requests(
    allocation: Mapping[str, int],
    nodes: Mapping[str, NodeBrief],
    exemplars: Mapping[str, Sequence[MCQItem]],
    config: SynthConfig,
    iteration: int,
) -> list[Request]:
    """One request per allocated item. Exemplars rotate over a node's slots so prompts differ.

    A node without a usable exemplar borrows from the pooled exemplars of the other nodes (the
    example then only shows the format). Raises ValueError for an allocated node with no brief, a
    negative count, or when no exemplar with enough options exists at all.
    """
    pool: list[MCQItem] = []
    for node_id in allocation:
        pool.extend(_usable_exemplars(exemplars.get(node_id, ()), config))
    requests: list[Request] = []
    for node_id, count in allocation.items():
        if count < 0:
            raise ValueError(f"allocation for node {node_id!r} is negative ({count})")
        if count == 0:
            continue
        if node_id not in nodes:
            raise ValueError(f"allocation names node {node_id!r}, which has no NodeBrief")
        own = _usable_exemplars(exemplars.get(node_id, ()), config) or pool
        if not own:
            raise ValueError(
                f"no seed exemplar with >= {config.num_options} options for node {node_id!r} or any other allocated node"
            )
        k = min(config.exemplars_per_item, len(own))
        for slot in range(count):
            chosen = [own[(slot * k + j) % len(own)] for j in range(k)]
            requests.append(Request(item_id(iteration, node_id, slot), nodes[node_id], slot, count, chosen))
    return requests


def generation_messages(request: Request, config: SynthConfig) -> list[dict[str, str]]:
    """Chat messages of one request; with ``prefill`` the last one is the assistant's JSON opening."""
    node = request.node
    # Rotate the diagnoses over slots too, so a node's requests test different weak points.
    diagnoses = list(node.diagnoses)
    if len(diagnoses) > 1:
        start = request.slot % len(diagnoses)
        diagnoses = diagnoses[start:] + diagnoses[:start]
    user = render(
        "generate_mcq",
        topic=node.name,
        description=node.description,
        domain=config.domain,
        diagnoses=diagnoses[:2],
        examples=[example_json(e, config.letters, config.explanation, config.explanation_first) for e in request.exemplars],
        explanation=config.explanation,
        explanation_first=config.explanation_first,
        letters=config.letters,
        number=request.slot + 1,
        total=request.total,
    )
    messages = [{"role": "user", "content": user}]
    if config.prefill:
        messages.append({"role": "assistant", "content": config.prefill_text})
    return messages


def draft_to_item(draft: MCQDraft, request: Request, generator: str, seed: int) -> GeneratedItem:
    """Attach provenance; raises pydantic's ValidationError when the draft is not a valid MCQ."""
    node = request.node
    return GeneratedItem(
        id=request.id,
        question=draft.question.strip(),
        options={k.strip(): v.strip() for k, v in draft.options.items()},
        answer_idx=draft.answer_idx.strip(),
        explanation=draft.explanation.strip(),
        meta_info=f"generated:{node.name}",
        ability_path=list(node.path) or None,
        target_node=node.node_id,
        exemplar_ids=[e.id for e in request.exemplars],
        generator=generator,
        seed=seed,
    )


def generate_items(
    engine: Engine,
    allocation: Mapping[str, int],
    nodes: Mapping[str, NodeBrief],
    exemplars: Mapping[str, Sequence[MCQItem]],
    config: SynthConfig | None = None,
    iteration: int = 0,
) -> GenerationResult:
    """Ask the teacher for ``allocation[node]`` items per node; one batched call per round."""
    config = config or SynthConfig()
    if config.prefill and getattr(engine, "enforces_json_schema", False):
        config = replace(config, prefill=False)  # the engine writes the whole object; a prefill would repeat
    requests = plan_requests(allocation, nodes, exemplars, config, iteration)
    items: dict[str, GeneratedItem] = {}
    rejected: list[dict[str, Any]] = []
    open_requests = list(requests)
    rounds_run = 0
    for round_idx in range(config.rounds):
        if not open_requests or (round_idx > 0 and config.temperature == 0):
            break  # nothing left, or greedy decoding would only repeat the failures
        rounds_run += 1
        seed = config.seed + round_idx
        params = SamplingParams(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=seed,
            # Small teachers' commonest failure is writing options past the last letter until the token
            # budget runs out; stopping at the first extra option frees the batch minutes earlier.
            stop=[f'"{LETTERS[config.num_options]}":'],
            json_schema=mcq_json_schema(config.letters, config.explanation, config.explanation_first),
        )
        prompts = [generation_messages(r, config) for r in open_requests]
        logger.info("generate round %d: %d requests in one batch", round_idx + 1, len(prompts))
        completions = engine.generate(prompts, params)
        if len(completions) != len(prompts):
            raise RuntimeError(f"engine {engine.name} returned {len(completions)} completions for {len(prompts)} prompts")
        still_open: list[Request] = []
        for request, completion in zip(open_requests, completions):
            result = parse_completion(completion.text, MCQDraft, config.prefill_text)
            reason, code = result.reason, result.code
            if result.ok:
                try:
                    items[request.id] = draft_to_item(result.value, request, engine.name, seed)
                    continue
                except ValidationError as e:
                    where, msg = first_error(e, "item")
                    reason, code = f"schema: {where}: {msg}", "schema"
            if completion.finish_reason == "length":
                reason += f" (hit max_new_tokens={config.max_new_tokens})"
            rejected.append(
                {
                    "id": request.id,
                    "target_node": request.node.node_id,
                    "exemplar_ids": [e.id for e in request.exemplars],
                    "generator": engine.name,
                    "seed": seed,
                    "round": round_idx + 1,
                    "stage": "parse",
                    "reason": reason,
                    "code": code,
                    "finish_reason": completion.finish_reason,
                    "raw": result.raw,
                }
            )
            still_open.append(request)
        open_requests = still_open
    ordered = [items[r.id] for r in requests if r.id in items]
    report = _report(requests, ordered, rejected, rounds_run)
    logger.info(
        "generated %d of %d requested items (%d failed attempts over %d round(s))",
        len(ordered), len(requests), len(rejected), rounds_run,
    )
    return GenerationResult(ordered, rejected, report)


def _report(requests: list[Request], items: list[GeneratedItem], rejected: list[dict], rounds: int) -> dict[str, Any]:
    per_node: dict[str, dict[str, int]] = {}
    for r in requests:
        per_node.setdefault(r.node.node_id, {"requested": 0, "parsed": 0, "failed_attempts": 0})["requested"] += 1
    for it in items:
        per_node[it.target_node]["parsed"] += 1
    reasons: dict[str, int] = {}
    for rej in rejected:
        per_node[rej["target_node"]]["failed_attempts"] += 1
        reasons[rej["code"]] = reasons.get(rej["code"], 0) + 1
    attempts = len(items) + len(rejected)
    return {
        "requested": len(requests),
        "parsed": len(items),
        "attempts": attempts,
        "parse_rate": len(items) / attempts if attempts else 0.0,
        "rounds": rounds,
        "per_node": per_node,
        "failure_reasons": reasons,
    }
