"""Place items that have no ability path into the existing tree, with the teacher, level by level.

Why level by level: the teacher picks among a node's children (a short lettered list) instead of among
every node of the tree, and the answer is read from the letters' log-probs (``Engine.choice_logprobs``),
so it is always one of the listed nodes: nothing to parse, nothing off the list. A small model prefers
some letters whatever the question; the letter scores are calibrated by subtracting each letter's mean
over the items choosing among the same topics (``ClassifyConfig.calibrate``). One batched engine call
per tree level covers all items still descending. The last letter is "none of these": the item stays at
the current node (it is more general than any child).

Engines that cannot score letters (an HTTP endpoint without logprobs) answer the same prompt by greedy
generation instead, and the reply is read strictly with ``prompts.extract.extract_answer`` (a letter,
"Answer: X", or the text of exactly one topic). Deterministic fallback, recorded with a reason: when a
reply names no listed topic, or a node has more children than letters, the item stays at the deepest
node reached, or, if that is the root, goes where ``AbilityTree.node_of`` puts it (its own path or its
source benchmark's node).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from data.records import MCQItem
from engines.base import Engine, EngineCapabilityError, SamplingParams
from prompts import render
from prompts.extract import extract_answer
from prompts.mcq import ANSWER_PREFIX
from tree.ability_tree import AbilityTree

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NONE_OF_THESE = "none of these (a more general question)"


@dataclass
class ClassifyConfig:
    max_question_chars: int = field(default=600, metadata={"help": "Question text shown to the teacher is clipped to this many characters."})
    max_depth: int = field(default=8, metadata={"help": "Levels to descend at most."})
    calibrate: bool = field(default=True, metadata={"help": "Subtract each letter's mean log-prob over the items choosing among the same topics (contextual calibration against a small model's letter bias); needs >= calibrate_min items."})
    calibrate_min: int = field(default=8, metadata={"help": "Items at one node needed before calibrating their letter scores."})
    mode: str = field(default="auto", metadata={"help": "auto (letter log-probs, generation where the engine has none), logprob, or generate."})
    max_new_tokens: int = field(default=24, metadata={"help": "Reply length in generate mode."})

    def __post_init__(self) -> None:
        if self.max_question_chars < 20 or self.max_depth < 1:
            raise ValueError("max_question_chars must be >= 20 and max_depth >= 1")
        if self.mode not in ("auto", "logprob", "generate"):
            raise ValueError(f"mode must be auto, logprob or generate, got {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.calibrate_min < 2:
            raise ValueError(f"calibrate_min must be >= 2, got {self.calibrate_min}")


@dataclass
class ClassifyResult:
    nodes: dict[str, str]  # item id -> node id
    fallbacks: dict[str, str]  # item id -> why the deterministic fallback was used
    calls: int  # engine calls made (one per level)


def _option_text(tree: AbilityTree, node: str) -> str:
    info = tree.info(node)
    return f"{info['name']}: {info['description']}" if info.get("description") else info["name"]


def _sorted_children(tree: AbilityTree, node: str) -> list[str]:
    return sorted(tree.children(node), key=lambda c: tree.info(c)["name"])


def classification_prompt(tree: AbilityTree, item: MCQItem, node: str, config: ClassifyConfig, *, prefill: bool = True) -> list[dict[str, str]]:
    """The lettered list of ``node``'s children (+ none of these); ``prefill`` ends it with "The answer is"
    for letter scoring, generate mode lets the model write its own reply."""
    question = item.question if len(item.question) <= config.max_question_chars else item.question[: config.max_question_chars] + " …"
    user = render("classify_item", question=question, options=[*(_option_text(tree, c) for c in _sorted_children(tree, node)), NONE_OF_THESE],
                  parent=tree.info(node)["name"])
    messages = [{"role": "user", "content": user}]
    return messages + [{"role": "assistant", "content": ANSWER_PREFIX}] if prefill else messages


def generation_params(config: ClassifyConfig) -> SamplingParams:
    return SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0)


def read_topic(text: str, tree: AbilityTree, node: str) -> str | None:
    """The letter a generated reply commits to among ``node``'s listed topics (names as option texts);
    None when it names none or several, or copies the list back (strict: see prompts.extract)."""
    children = _sorted_children(tree, node)
    options = {LETTERS[i]: tree.info(c)["name"] for i, c in enumerate(children)}
    options[LETTERS[len(children)]] = NONE_OF_THESE
    return extract_answer(text, options)


def _calibrated(rows: dict[str, dict[str, float]], at: dict[str, str], min_items: int) -> dict[str, dict[str, float]]:
    """Scores minus each letter's mean over the items at the same node (enough of them): a model that
    prefers one letter whatever the question no longer sends every item there (Zhao et al., 2021,
    "Calibrate before use", in its batch-mean form)."""
    groups: dict[str, list[str]] = {}
    for i in rows:
        groups.setdefault(at[i], []).append(i)
    out = dict(rows)
    for members in groups.values():
        if len(members) < min_items:
            continue
        mean = {c: sum(rows[i][c] for i in members) / len(members) for c in rows[members[0]]}
        for i in members:
            out[i] = {c: v - mean[c] for c, v in rows[i].items()}
    return out


def classify_items(engine: Engine, tree: AbilityTree, items: Sequence[MCQItem], config: ClassifyConfig | None = None) -> ClassifyResult:
    """The node of every item; items are not changed (callers set ``ability_path`` if they want)."""
    config = config or ClassifyConfig()
    at = {item.id: tree.root for item in items}
    by_id = {item.id: item for item in items}
    fallbacks: dict[str, str] = {}
    done: set[str] = set()
    calls = 0
    mode = config.mode
    for _ in range(config.max_depth):
        open_ids = [i for i in at if i not in done and tree.children(at[i])]
        too_wide = [i for i in open_ids if len(tree.children(at[i])) + 1 > len(LETTERS)]
        for i in too_wide:
            fallbacks[i] = f"{at[i]!r} has more than {len(LETTERS) - 1} children"
            done.add(i)
        open_ids = [i for i in open_ids if i not in fallbacks]
        if not open_ids:
            break
        width = max(len(tree.children(at[i])) + 1 for i in open_ids)
        letters_of = {i: LETTERS[: len(tree.children(at[i])) + 1] for i in open_ids}  # this item's own options
        choice: dict[str, str | None] = {}
        if mode != "generate":
            try:
                scores = engine.choice_logprobs([classification_prompt(tree, by_id[i], at[i], config) for i in open_ids],
                                                list(LETTERS[:width]))
                rows = dict(zip(open_ids, scores))
                if config.calibrate:
                    rows = _calibrated(rows, at, config.calibrate_min)
                choice = {i: max(letters_of[i], key=lambda c: rows[i][c]) for i in open_ids}
            except EngineCapabilityError as e:
                if mode == "logprob":
                    raise
                logger.info("engine %s cannot score letters (%s): classifying by generation", engine.name, e)
                mode = "generate"
        if mode == "generate":
            replies = engine.generate([classification_prompt(tree, by_id[i], at[i], config, prefill=False) for i in open_ids],
                                      generation_params(config))
            if len(replies) != len(open_ids):
                raise RuntimeError(f"engine {engine.name!r} returned {len(replies)} completions for {len(open_ids)} prompts")
            choice = {i: read_topic(r.text, tree, at[i]) for i, r in zip(open_ids, replies)}
        calls += 1
        for i in open_ids:
            best = choice[i]
            if best is None:
                fallbacks[i] = f"reply names no listed topic of {at[i]!r}"
                done.add(i)
            elif best == letters_of[i][-1]:
                done.add(i)  # none of the children: the item stays here
            else:
                at[i] = _sorted_children(tree, at[i])[letters_of[i].index(best)]
    for i in fallbacks:  # the deepest node reached, or where the item's own path/source puts it
        if at[i] == tree.root:
            at[i] = tree.node_of(by_id[i])
    logger.info("classified %d items into the tree in %d engine call(s); %d fell back", len(items), calls, len(fallbacks))
    return ClassifyResult(nodes=at, fallbacks=fallbacks, calls=calls)
