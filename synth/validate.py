"""Validation of teacher-written MCQs: cheap quality gates, then two agents (blind solver and critic).

Gates run in this fixed order; an item stops at the first it fails, and the rejection records that
gate as ``stage`` with a one-line ``reason``:

1. ``schema``: a valid MCQItem/GeneratedItem, ``min_options``..``max_options`` options (default 4-5),
   non-empty question and option texts, distinct option texts (after normalisation), unique id.
2. ``duplicate``: the same normalised question and option set as a seed-pool item or an earlier
   surviving item of this batch (synth.dedup.exact_key).
3. ``near_duplicate``: ROUGE-L F1 (or word n-gram Jaccard, ``near_dup_metric``) >= ``near_dup_threshold``
   (default 0.7), or with ``near_dup_metric: embedding`` the encoder's cosine >= ``near_dup_embedding_threshold``,
   with a seed-pool item or an earlier surviving item of this batch.
4. ``contamination``: shares a word 13-gram with any evaluation item (question + options text).
5. ``verifier``: where the domain can compute the truth (``data.verification``), the key is judged by
   the domain before any agent sees it (synth.verify: a wrong key is re-keyed where the right value is
   among the options, else rejected with the verifier's reason; an item it cannot judge goes on).
6. ``solver`` / ``critic``: the agents, run only on the survivors, each model in ONE batched engine call.
   The solver answers blind (no key, no explanation) through prompts.mcq (the evaluation format), by
   the option letters' log-probs, with the options shuffled: small models favour positions. Each
   solver model sees every item ``solver_samples`` times, in rotations of one shuffle (with as many
   samples as options, every option is shown once at every position), and every presentation is a
   vote; an item passes the solver when at least ``solver_min_votes`` votes (default: all of them) pick
   the key, or a share ``solver_min_share`` of them and more than pick any other answer (a majority vote).
   With ``solver_temperature`` > 0 each vote is a sample (self-consistency): a sampled worked reply in
   generate mode, a letter drawn from the tempered letter distribution in logprob mode. Several solver
   models (``solver=[...]``, e.g. of different families) pool their votes. Every raw reply and the
   answer read from it are kept in the decisions, so the answer reader's false matches can be audited.
   The critic sees the key (and the generator's explanation only with ``critic_sees_explanation``: it
   argues for the key it was written with) and replies with JSON {"verdict", "reason"}
   (prompts/critique_mcq.j2).
   ``acceptance`` decides which agents must agree: ``both`` (default), ``solver`` or ``critic``; only
   the agents a rule needs are run. When both are required and both object, the stage is ``solver``.
   So the rules of the design are: both agree with the key (``both``); solver only; critic only;
   k-of-n solver samples (``solver``, ``solver_samples=n``, ``solver_min_votes=k``); several solvers of
   different families (``solver=[a, b]``, ``solver_min_votes`` of their pooled votes).

An unparseable critic reply is a defined outcome: ``critic_unparseable="reject"`` (default) rejects
with reason "critic output unparseable: ..."; ``"accept"`` lets the solver decide alone.

Accepted items then have their answer positions evened out (synth.positions, ``rebalance``): the report
gives the key-letter counts and a χ² test against uniform before and after.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from pydantic import ValidationError
from tqdm.auto import tqdm

from data.records import GeneratedItem, MCQItem, first_error
from data.run_layout import REJECTION_STAGES
from data.text import normalize_text
from data.verification import Verifier
from engines.base import Engine, SamplingParams
from prompts import render
from prompts.extract import extract_answer
from prompts.mcq import mcq_messages
from prompts.parse import CriticVerdict, critic_json_schema, parse_completion
from synth.dedup import METRICS, ContaminationIndex, DuplicateIndex, Embed, memoized
from synth.positions import answer_balance, is_position_bound, rebalance_answers
from synth.verify import ON_UNKNOWN, ON_WRONG, GateCounts, gate

logger = logging.getLogger(__name__)

STAGES = REJECTION_STAGES[1:]  # the gates, in order (parse failures happen before validation)

# Acceptance rules: (solver agrees, critic accepts) -> keep. None means that agent was not run.
ACCEPTANCE_RULES: dict[str, Callable[[bool | None, bool | None], bool]] = {
    "both": lambda solver, critic: bool(solver) and bool(critic),
    "solver": lambda solver, critic: bool(solver),
    "critic": lambda solver, critic: bool(critic),
    # Only the gates (schema, duplicates, contamination, verifier): for items correct by construction
    # (synth.oracle), which agents could only wrongly reject.
    "none": lambda solver, critic: True,
}
_NEEDS = {"both": (True, True), "solver": (True, False), "critic": (False, True), "none": (False, False)}


def agents_needed(acceptance: str) -> tuple[bool, bool]:
    """``(solver, critic)``: which agents the acceptance rule runs."""
    return _NEEDS[acceptance]


@dataclass
class ValidationConfig:
    """Gates, thresholds and agent settings of the validate stage."""

    acceptance: str = field(default="both", metadata={"help": "Which agents must accept: both, solver or critic."})
    min_options: int = field(default=4, metadata={"help": "Fewest options an item may have."})
    max_options: int = field(default=5, metadata={"help": "Most options an item may have."})
    near_dup_metric: str = field(default="rouge_l", metadata={"help": "Near-duplicate similarity: rouge_l (ROUGE-L F1 of the words), jaccard (word n-gram Jaccard) or embedding (cosine of the encoder's sentence embeddings)."})
    near_dup_ngram: int = field(default=3, metadata={"help": "Word n-gram size of the jaccard metric."})
    near_dup_threshold: float = field(default=0.7, metadata={"help": "Similarity at or above which two items are near duplicates (rouge_l, jaccard)."})
    near_dup_embedding_threshold: float = field(default=0.9, metadata={"help": "Cosine at or above which two items are near duplicates (embedding metric). With minilm it catches all 13 real SmolLM2 exemplar copies ROUGE-L catches (their lowest cosine: 0.964) and flags 18 of 204,480 distinct seed pairs (ROUGE-L: 17): benchmarks/bench_near_dup.py."})
    encoder: str = field(default="minilm", metadata={"help": "Sentence encoder of the embedding metric: minilm, st:<folder> or a folder (the loop passes the run's distilled encoder when it has one)."})
    contamination_ngram: int = field(default=13, metadata={"help": "Shared word n-gram length that marks an item contaminated."})
    solver_samples: int = field(default=1, metadata={"help": "Presentations of each item per solver model, each with the options in another order; each is a vote."})
    solver_min_votes: int = field(default=0, metadata={"help": "Votes for the key an item needs to pass the solver (0 = all votes of all solver models, unless solver_min_share is set)."})
    solver_min_share: float = field(default=0.0, metadata={"help": "Share of the votes the key needs, in (0, 1] (used when solver_min_votes is 0; 0 = not used). The key must also be the strict plurality answer."})
    solver_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the solver's votes (0 = greedy; > 0 with several samples: self-consistency voting)."})
    solver_mode: str = field(default="logprob", metadata={"help": "How the solver answers: logprob (the letters' log-probs) or generate (a greedy free reply read by prompts.extract; the domain's answer_mode)."})
    solver_max_tokens: int = field(default=32, metadata={"help": "Token budget of one generate-mode solver reply (the domain's answer_max_tokens)."})
    rebalance: bool = field(default=True, metadata={"help": "Even out the answer letters of accepted items (items whose options refer to other options stay as they are)."})
    seed: int = field(default=0, metadata={"help": "Seed of the solver's option shuffles, the critic's sampling and the rebalancing."})
    critic_unparseable: str = field(default="reject", metadata={"help": "What an unparseable critic reply means: reject or accept."})
    critic_max_new_tokens: int = field(default=96, metadata={"help": "Token budget of one critic reply."})
    critic_temperature: float = field(default=0.0, metadata={"help": "Critic sampling temperature (0 = greedy)."})
    critic_prefill: bool = field(default=True, metadata={"help": "Start the critic's reply with '{\"verdict\": \"' on engines that do not enforce the JSON schema."})
    critic_sees_explanation: bool = field(default=False, metadata={"help": "Show the critic the generator's explanation (it argues for the key it was written with, right or wrong)."})
    verifier_on_wrong: str = field(default="rekey", metadata={"help": "What a key the domain's verifier finds wrong means: rekey (to the option that states the right answer, where one does; else reject) or reject."})
    verifier_unknown: str = field(default="keep", metadata={"help": "What an item the verifier cannot judge means: keep (the agents decide) or reject."})
    domain: str = field(default="", metadata={"help": "Domain name shown to the critic."})

    def __post_init__(self) -> None:
        if self.acceptance not in ACCEPTANCE_RULES:
            raise ValueError(f"acceptance must be one of {', '.join(ACCEPTANCE_RULES)}, got {self.acceptance!r}")
        if not 2 <= self.min_options <= self.max_options <= 26:
            raise ValueError(f"need 2 <= min_options <= max_options <= 26, got {self.min_options}, {self.max_options}")
        if self.near_dup_metric not in METRICS:
            raise ValueError(f"near_dup_metric must be one of {', '.join(METRICS)}, got {self.near_dup_metric!r}")
        if not 1 <= self.solver_samples <= 26:
            raise ValueError(f"solver_samples must be in [1, 26], got {self.solver_samples}")
        if self.solver_mode not in ("logprob", "generate"):
            raise ValueError(f"solver_mode must be logprob or generate, got {self.solver_mode!r}")
        if self.solver_max_tokens < 1:
            raise ValueError(f"solver_max_tokens must be >= 1, got {self.solver_max_tokens}")
        if self.solver_min_votes < 0:
            raise ValueError(f"solver_min_votes must be >= 0, got {self.solver_min_votes}")
        if not 0.0 <= self.solver_min_share <= 1.0:
            raise ValueError(f"solver_min_share must be in [0, 1], got {self.solver_min_share}")
        if self.solver_temperature < 0:
            raise ValueError(f"solver_temperature must be >= 0, got {self.solver_temperature}")
        if self.verifier_on_wrong not in ON_WRONG:
            raise ValueError(f"verifier_on_wrong must be one of {', '.join(ON_WRONG)}, got {self.verifier_on_wrong!r}")
        if self.verifier_unknown not in ON_UNKNOWN:
            raise ValueError(f"verifier_unknown must be one of {', '.join(ON_UNKNOWN)}, got {self.verifier_unknown!r}")
        if self.near_dup_ngram < 1 or self.contamination_ngram < 1:
            raise ValueError("n-gram sizes must be >= 1")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if not 0.0 < self.near_dup_embedding_threshold <= 1.0:
            raise ValueError(f"near_dup_embedding_threshold must be in (0, 1], got {self.near_dup_embedding_threshold}")
        if self.critic_unparseable not in ("reject", "accept"):
            raise ValueError(f"critic_unparseable must be reject or accept, got {self.critic_unparseable!r}")
        if self.critic_max_new_tokens < 8:
            raise ValueError(f"critic_max_new_tokens must be >= 8, got {self.critic_max_new_tokens}")
        if self.critic_temperature < 0:
            raise ValueError(f"critic_temperature must be >= 0, got {self.critic_temperature}")

    @property
    def critic_prefill_text(self) -> str:
        return '{"verdict": "' if self.critic_prefill else ""


@dataclass
class SolverVote:
    """One blind answer: which model, what it picked, and in what order it saw the options."""

    solver: str  # the solver engine's name
    pick: str  # the answer, in the item's original letters
    prob_key: float  # the solver's probability of the key, normalised over the item's letters
    shown_order: list[str]  # original letters in the order the solver saw them
    raw: str = ""  # the reply as written (generate mode) or the shown letters' log-probs (logprob mode)

    def as_dict(self) -> dict[str, Any]:
        return {"solver": self.solver, "pick": self.pick, "prob_key": round(self.prob_key, 4), "order": "".join(self.shown_order),
                "raw": self.raw}


@dataclass
class CriticOutcome:
    accept: bool
    reason: str
    parsed: bool
    raw: str


@dataclass
class ValidationResult:
    accepted: list[GeneratedItem]
    rejected: list[dict[str, Any]]  # item fields + stage + reason (+ details)
    report: dict[str, Any]
    decisions: list[dict[str, Any]] = field(default_factory=list)  # per item that reached the agents


# -------------------------------------------------------------------------------------- the solver


def shuffle_options(options: Mapping[str, str], key: str, rotation: int = 0) -> tuple[dict[str, str], list[str]]:
    """Shuffle options deterministically for ``key`` (item id and seed), then rotate by ``rotation``.

    Returns the shown options (letters A.. in order) and ``order``: ``order[i]`` is the original letter
    shown at position i, so a pick ``shown`` maps back to ``order[ord(shown) - ord("A")]``.
    """
    order = list(options)
    random.Random(key).shuffle(order)  # str seeds hash with SHA-512: stable across runs and machines
    r = rotation % len(order)
    order = order[r:] + order[:r]
    shown = {chr(ord("A") + i): options[orig] for i, orig in enumerate(order)}
    return shown, order


def presentations(item: MCQItem, seed: int, samples: int) -> list[tuple[dict[str, str], list[str]]]:
    """The ``samples`` orders the solver sees an item in: rotations of one shuffle, then a new shuffle
    after every ``len(options)`` samples (so up to that many, each option is shown at distinct positions)."""
    n = len(item.options)
    return [shuffle_options(item.options, f"{seed}:{s // n}:{item.id}", s % n) for s in range(samples)]


def solve_blind(engine: Engine, items: Sequence[MCQItem], seed: int = 0, samples: int = 1, mode: str = "logprob",
                max_new_tokens: int = 32, temperature: float = 0.0) -> list[list[SolverVote]]:
    """Answer every item ``samples`` times without its key, in ONE ``choice_logprobs`` call (logprob
    mode) or ONE ``generate`` call whose replies ``prompts.extract`` reads (generate mode); greedy, or
    sampled at ``temperature`` (seeded: the same call gives the same votes).

    Returns one list of votes per item, in presentation order.
    """
    if not items:
        return []
    shown_all = [presentations(it, seed, samples) for it in items]
    if mode == "generate":
        return _solve_by_generation(engine, items, shown_all, max_new_tokens, temperature, seed)
    prompts = [mcq_messages(it.question, shown) for it, pres in zip(items, shown_all) for shown, _ in pres]
    letters = [chr(ord("A") + i) for i in range(max(len(it.options) for it in items))]
    scores = iter(engine.choice_logprobs(prompts, letters))
    votes: list[list[SolverVote]] = []
    for item, pres in zip(items, shown_all):
        own_votes = []
        for s, (shown, order) in enumerate(pres):
            row = next(scores)
            own = list(shown)  # this item's letters; wider letters of the batch are ignored
            logps = [row[letter] for letter in own]
            top = max(logps)
            probs = [math.exp(lp - top) for lp in logps]
            if temperature > 0:  # a letter drawn from the tempered distribution: one sampled vote
                weights = [math.exp((lp - top) / temperature) for lp in logps]
                best = random.Random(f"{seed}:{s}:{item.id}").choices(own, weights)[0]
            else:
                best = own[logps.index(top)]
            prob_key = probs[order.index(item.answer_idx)] / sum(probs)
            raw = " ".join(f"{letter}:{lp:.3f}" for letter, lp in zip(own, logps))
            own_votes.append(SolverVote(engine.name, order[ord(best) - ord("A")], prob_key, order, raw))
        votes.append(own_votes)
    return votes


def _solve_by_generation(engine: Engine, items: Sequence[MCQItem], shown_all: list[list[tuple[dict[str, str], list[str]]]],
                         max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[list[SolverVote]]:
    """Generate-mode votes: the letter the reply commits to (no letter: a vote for nothing), the
    probability of the key 1 or 0."""
    prompts = [mcq_messages(it.question, shown, with_prefix=False) for it, pres in zip(items, shown_all) for shown, _ in pres]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed if temperature > 0 else None)
    texts = iter(c.text for c in engine.generate(prompts, params))
    votes: list[list[SolverVote]] = []
    for item, pres in zip(items, shown_all):
        own_votes = []
        for shown, order in pres:
            text = next(texts)
            letter = extract_answer(text, shown)
            pick = order[ord(letter) - ord("A")] if letter else ""
            own_votes.append(SolverVote(engine.name, pick, float(pick == item.answer_idx), order, text))
        votes.append(own_votes)
    return votes


def votes_needed(n_votes: int, min_votes: int, min_share: float = 0.0) -> int:
    """Votes for the key an item needs: ``min_votes``, else ``ceil(min_share * n)``, else all of them."""
    if min_votes:
        return min_votes
    return max(1, math.ceil(min_share * n_votes - 1e-9)) if min_share else n_votes


def solver_verdict(votes: Sequence[SolverVote], key: str, min_votes: int, min_share: float = 0.0) -> tuple[bool, int, int]:
    """``(passes, votes for the key, votes)``. ``min_votes`` k > 0: k votes for the key (k of n, as
    asked: 1 of 2 pooled models is "either agrees"); else the share ``min_share`` of the votes and more
    than any other answer (self-consistency: a tie with another answer fails, the majority is not the
    key); else every vote."""
    counts = Counter(v.pick for v in votes if v.pick)
    for_key = counts.pop(key, 0)
    plurality = min_votes > 0 or for_key > max(counts.values(), default=0)
    return for_key >= votes_needed(len(votes), min_votes, min_share) and plurality, for_key, len(votes)


# -------------------------------------------------------------------------------------- the critic


def encoder_embed(spec: str) -> Embed:
    """The embed function of a sentence encoder spec (loaded once, on the CPU unless a GPU is present)."""
    from training.embedding.encoders import load_encoder

    model = load_encoder(spec)

    def embed(texts: Sequence[str]) -> Any:
        return model.encode(list(texts), batch_size=32, convert_to_numpy=True, show_progress_bar=False)

    return embed


def critic_messages(item: MCQItem, config: ValidationConfig, prefill: bool | None = None) -> list[dict[str, str]]:
    """The critic's chat messages; ``prefill`` (default ``config.critic_prefill``) starts its reply."""
    user = render(
        "critique_mcq",
        question=item.question,
        options=item.options,
        answer_idx=item.answer_idx,
        explanation=getattr(item, "explanation", "") if config.critic_sees_explanation else "",
        domain=config.domain,
    )
    messages = [{"role": "user", "content": user}]
    if config.critic_prefill if prefill is None else prefill:
        messages.append({"role": "assistant", "content": config.critic_prefill_text})
    return messages


def critique(engine: Engine, items: Sequence[MCQItem], config: ValidationConfig) -> list[CriticOutcome]:
    """The critic's verdict on every item, in ONE ``generate`` call, parsed strictly."""
    if not items:
        return []
    params = SamplingParams(
        max_new_tokens=config.critic_max_new_tokens,
        temperature=config.critic_temperature,
        seed=config.seed,
        json_schema=critic_json_schema(),
    )
    # An engine that enforces the schema writes the whole object; a prefill would be written twice.
    prefill = config.critic_prefill and not getattr(engine, "enforces_json_schema", False)
    completions = engine.generate([critic_messages(it, config, prefill) for it in items], params)
    outcomes = []
    for completion in completions:
        result = parse_completion(completion.text, CriticVerdict, config.critic_prefill_text if prefill else "")
        if result.ok:
            outcomes.append(CriticOutcome(result.value.verdict == "accept", result.value.reason.strip(), True, result.raw))
        else:
            accept = config.critic_unparseable == "accept"
            outcomes.append(CriticOutcome(accept, f"critic output unparseable: {result.reason}", False, result.raw))
    return outcomes


# ------------------------------------------------------------------------------------------- gates


def check_schema(raw: GeneratedItem | Mapping[str, Any], config: ValidationConfig) -> tuple[GeneratedItem | None, str]:
    """Gate 1: the item, or None and the reason it is malformed."""
    try:
        item = raw if isinstance(raw, GeneratedItem) else GeneratedItem.model_validate(dict(raw))
    except ValidationError as e:
        where, msg = first_error(e, "item")
        return None, f"{where}: {msg}"
    n = len(item.options)
    if not config.min_options <= n <= config.max_options:
        return None, f"has {n} options, needs {config.min_options}-{config.max_options}"
    if not item.question.strip():
        return None, "question is empty"
    texts = [normalize_text(t) for t in item.options.values()]
    if any(not t for t in texts):
        return None, "an option text is empty"
    if len(set(texts)) < n:
        dupes = sorted({letter for letter, t in zip(item.options, texts) if texts.count(t) > 1})
        return None, f"options {', '.join(dupes)} have the same text"
    return item, ""


def _reject(raw: GeneratedItem | Mapping[str, Any], stage: str, reason: str, **details: Any) -> dict[str, Any]:
    fields = raw.model_dump(mode="json", exclude_none=True) if isinstance(raw, GeneratedItem) else dict(raw)
    return {**fields, "stage": stage, "reason": reason, **details}


def _engines(solver: Engine | Sequence[Engine] | None) -> list[Engine]:
    if solver is None:
        return []
    return list(solver) if isinstance(solver, (list, tuple)) else [solver]


def validate_items(
    candidates: Sequence[GeneratedItem | Mapping[str, Any]],
    *,
    solver: Engine | Sequence[Engine] | None,
    critic: Engine | None,
    seed_pool: Sequence[MCQItem] = (),
    eval_items: Sequence[MCQItem] = (),
    config: ValidationConfig | None = None,
    embed: Embed | None = None,
    verifier: Verifier | None = None,
    verifier_name: str = "",
) -> ValidationResult:
    """Run every gate and the agents the acceptance rule needs; see the module docstring for the order.

    ``solver`` is one engine or several (their votes are pooled). ``embed`` (texts -> embeddings) serves
    the embedding near-duplicate metric; without it ``config.encoder`` is loaded. ``verifier`` (the
    domain's, ``data.verification``; ``verifier_name`` names it in the report) judges keys before the
    agents. Accepted items come back in candidate order, with their answer positions rebalanced when
    ``config.rebalance``.
    """
    config = config or ValidationConfig()
    solvers = _engines(solver)
    need_solver, need_critic = _NEEDS[config.acceptance]
    if need_solver and not solvers:
        raise ValueError(f"acceptance {config.acceptance!r} needs a solver engine")
    if need_critic and critic is None:
        raise ValueError(f"acceptance {config.acceptance!r} needs a critic engine")
    total_votes = config.solver_samples * len(solvers)
    if need_solver and config.solver_min_votes > total_votes:
        raise ValueError(
            f"solver_min_votes={config.solver_min_votes} exceeds the {total_votes} votes there are "
            f"({config.solver_samples} samples x {len(solvers)} solver model(s))"
        )

    if config.near_dup_metric == "embedding":
        embed = memoized(embed if embed is not None else encoder_embed(config.encoder))
    threshold = config.near_dup_embedding_threshold if config.near_dup_metric == "embedding" else config.near_dup_threshold
    seeds = DuplicateIndex(config.near_dup_ngram, threshold, config.near_dup_metric, embed)
    seeds.add_items(list(seed_pool))
    batch = DuplicateIndex(config.near_dup_ngram, threshold, config.near_dup_metric, embed)
    contamination = ContaminationIndex(list(eval_items), config.contamination_ngram)

    rejected: list[dict[str, Any]] = []
    survivors: list[GeneratedItem] = []
    seen_ids: set[str] = set()
    checks = GateCounts(verifier_name or getattr(verifier, "__qualname__", "verifier")) if verifier is not None else None
    verdicts: dict[str, dict[str, Any]] = {}
    for raw in tqdm(candidates, desc="quality gates", unit="item", disable=None, leave=False):
        item, why = check_schema(raw, config)
        if item is not None and item.id in seen_ids:
            item, why = None, f"duplicate id {item.id!r} in the batch"
        if item is None:
            rejected.append(_reject(raw, "schema", why))
            continue
        seen_ids.add(item.id)
        stage, reason, details = _overlap_check(item, seeds, batch, contamination)
        if stage:
            rejected.append(_reject(item, stage, reason, **details))
            continue
        batch.add(item.id, item.question, item.options)
        if checks is not None:
            outcome = gate(item, verifier, config.verifier_on_wrong, config.verifier_unknown)
            checks.add(outcome)
            verdicts[item.id] = outcome.record()
            if outcome.item is None:
                rejected.append(_reject(item, "verifier", outcome.verification.reason, verifier=verdicts[item.id]))
                continue
            if outcome.action == "rekeyed":
                verdicts[item.id]["rekeyed"] = f"{item.answer_idx} -> {outcome.item.answer_idx}"
            item = outcome.item
        survivors.append(item)

    logger.info("quality gates: %d of %d candidates reach the agents", len(survivors), len(candidates))
    votes: list[list[SolverVote]] = [[] for _ in survivors]
    if need_solver:
        for engine in solvers:
            for own, new in zip(votes, solve_blind(engine, survivors, config.seed, config.solver_samples,
                                                      config.solver_mode, config.solver_max_tokens, config.solver_temperature)):
                own.extend(new)
    judged = critique(critic, survivors, config) if need_critic else [None] * len(survivors)

    accepted: list[GeneratedItem] = []
    decisions: list[dict[str, Any]] = []
    keep = ACCEPTANCE_RULES[config.acceptance]
    for item, item_votes, c in zip(survivors, votes, judged):
        decision: dict[str, Any] = {"id": item.id, "target_node": item.target_node, "key": item.answer_idx}
        if item.id in verdicts:
            decision["verifier"] = verdicts[item.id]
        solver_ok = None
        if need_solver:
            solver_ok, for_key, n_votes = solver_verdict(item_votes, item.answer_idx, config.solver_min_votes, config.solver_min_share)
            decision.update(solver_passed=solver_ok, solver_key_votes=for_key, solver_votes=[v.as_dict() for v in item_votes])
        critic_ok = None if c is None else c.accept
        if c is not None:
            decision.update(critic_accept=c.accept, critic_reason=c.reason, critic_parsed=c.parsed, critic_raw=c.raw)
        decision["accepted"] = keep(solver_ok, critic_ok)
        decisions.append(decision)
        if decision["accepted"]:
            accepted.append(item)
            continue
        details = {k: v for k, v in decision.items() if k not in ("id", "target_node", "key", "accepted", "solver_passed")}
        if need_solver and not solver_ok:
            picks = ",".join(v.pick or "-" for v in item_votes)
            needed = votes_needed(n_votes, config.solver_min_votes, config.solver_min_share)
            majority = " and the most votes" if not config.solver_min_votes and config.solver_min_share else ""
            reason = f"solver votes for the key {item.answer_idx}: {for_key} of {n_votes} (needs {needed}{majority}; picks {picks})"
            if need_critic and not critic_ok:
                reason += f"; critic: {c.reason}"
            rejected.append(_reject(item, "solver", reason, **details))
        else:
            rejected.append(_reject(item, "critic", c.reason, **details))

    balance_before = answer_balance(accepted)
    moves: dict[str, tuple[str, str]] = {}
    if config.rebalance:
        accepted, moves = rebalance_answers(accepted, config.seed)
        for decision in decisions:
            if decision["id"] in moves:
                decision["answer_moved"] = "{} -> {}".format(*moves[decision["id"]])
    positions = {
        "before": balance_before,
        "after": answer_balance(accepted),
        "moved": len(moves),
        "position_bound": sum(is_position_bound(it) for it in accepted),
    }
    report = _report(candidates, accepted, rejected, decisions, config, positions)
    report["verifier"] = checks.as_dict() if checks is not None else None
    logger.info(
        "validated %d candidates: %d accepted (%.0f%%); rejected by stage %s",
        len(candidates), len(accepted), 100 * report["acceptance_rate"], report["rejected_by_stage"],
    )
    return ValidationResult(accepted, rejected, report, decisions)


def unparsed_requests(failed_attempts: Sequence[Mapping[str, Any]], candidates: Sequence[MCQItem]) -> list[dict[str, Any]]:
    """Requests whose every generation attempt failed to parse, as rejected items (the last attempt kept).

    ``failed_attempts`` are synth.generate's parse rejections (one per attempt); a request that parsed
    in a later round is among ``candidates`` and is not listed.
    """
    parsed = {c.id for c in candidates}
    last = {r["id"]: dict(r) for r in failed_attempts if r["id"] not in parsed}
    return list(last.values())


def _overlap_check(
    item: GeneratedItem, seeds: DuplicateIndex, batch: DuplicateIndex, contamination: ContaminationIndex
) -> tuple[str, str, dict[str, Any]]:
    """Stages 2-4 for one schema-valid item: ``(stage, reason, details)`` or ``("", "", {})``."""
    for index, where in ((seeds, "seed pool"), (batch, "batch")):
        match = index.exact(item.question, item.options)
        if match:
            return "duplicate", f"exact duplicate of {match.id} ({where})", {"duplicate_of": match.id}
    for index, where in ((seeds, "seed pool"), (batch, "batch")):
        match = index.nearest(item.question, item.options)
        if match:
            reason = f"near duplicate of {match.id} ({where}): {index.describe()} {match.score:.2f} >= {index.threshold}"
            return "near_duplicate", reason, {"duplicate_of": match.id, "similarity": round(match.score, 4)}
    hit = contamination.match(item.question, item.options)
    if hit:
        eval_id, text = hit
        return "contamination", f"shares the {contamination.n}-gram {text!r} with eval item {eval_id}", {"eval_id": eval_id}
    return "", "", {}


def _report(
    candidates: Sequence[Any],
    accepted: list[GeneratedItem],
    rejected: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
    config: ValidationConfig,
    positions: dict[str, Any],
) -> dict[str, Any]:
    by_stage = {stage: 0 for stage in STAGES}
    per_node: dict[str, dict[str, Any]] = {}

    def node_row(node: str) -> dict[str, Any]:
        return per_node.setdefault(node, {"candidates": 0, "accepted": 0, "rejected": {}})

    for rej in rejected:
        by_stage[rej["stage"]] += 1
        row = node_row(str(rej.get("target_node", "?")))
        row["candidates"] += 1
        row["rejected"][rej["stage"]] = row["rejected"].get(rej["stage"], 0) + 1
    for item in accepted:
        row = node_row(item.target_node)
        row["candidates"] += 1
        row["accepted"] += 1
    for row in per_node.values():
        row["acceptance_rate"] = row["accepted"] / row["candidates"]
    n = len(candidates)
    return {
        "acceptance": config.acceptance,
        "candidates": n,
        "accepted": len(accepted),
        "acceptance_rate": len(accepted) / n if n else 0.0,
        "rejected_by_stage": by_stage,
        "per_node": per_node,
        "reached_agents": len(decisions),
        "solver_samples": config.solver_samples,
        "solver_min_votes": config.solver_min_votes,
        "solver_min_share": config.solver_min_share,
        "solver_temperature": config.solver_temperature,
        "critic_sees_explanation": config.critic_sees_explanation,
        "solver_passed": sum(1 for d in decisions if d.get("solver_passed")),
        "critic_accepted": sum(1 for d in decisions if d.get("critic_accept")),
        "critic_unparseable": sum(1 for d in decisions if d.get("critic_parsed") is False),
        # Key letters of the accepted items before and after rebalancing, with a chi-square test each.
        "answer_positions": positions,
    }
