"""Place items that have no ability path into the existing tree, with the teacher, level by level.

Why level by level: the teacher picks among a node's children (a short lettered list) instead of among
every node of the tree, and the answer is read from the letters' log-probs (``Engine.choice_logprobs``),
so it is always one of the listed nodes: nothing to parse, nothing off the list. One batched engine call
per tree level covers all items still descending. The last letter is "none of these": the item stays at
the current node (it is more general than any child).

Deterministic fallback, recorded with a reason: when the engine cannot score letters (an HTTP endpoint
without logprobs) or a node has more children than letters, the item stays at the deepest node reached,
or, if that is the root, goes where ``AbilityTree.node_of`` puts it (its source benchmark's node).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from data.records import MCQItem
from engines.base import Engine, EngineCapabilityError
from prompts import render
from prompts.mcq import ANSWER_PREFIX
from tree.ability_tree import AbilityTree

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NONE_OF_THESE = "none of these (a more general question)"


@dataclass
class ClassifyConfig:
    max_question_chars: int = field(default=600, metadata={"help": "Question text shown to the teacher is clipped to this many characters."})
    max_depth: int = field(default=8, metadata={"help": "Levels to descend at most."})

    def __post_init__(self) -> None:
        if self.max_question_chars < 20 or self.max_depth < 1:
            raise ValueError("max_question_chars must be >= 20 and max_depth >= 1")


@dataclass
class ClassifyResult:
    nodes: dict[str, str]  # item id -> node id
    fallbacks: dict[str, str]  # item id -> why the deterministic fallback was used
    calls: int  # engine calls made (one per level)


def _option_text(tree: AbilityTree, node: str) -> str:
    info = tree.info(node)
    return f"{info['name']}: {info['description']}" if info.get("description") else info["name"]


def classification_prompt(tree: AbilityTree, item: MCQItem, node: str, config: ClassifyConfig) -> list[dict[str, str]]:
    children = sorted(tree.children(node), key=lambda c: tree.info(c)["name"])
    question = item.question if len(item.question) <= config.max_question_chars else item.question[: config.max_question_chars] + " …"
    user = render("classify_item", question=question, options=[*map(lambda c: _option_text(tree, c), children), NONE_OF_THESE],
                  parent=tree.info(node)["name"])
    return [{"role": "user", "content": user}, {"role": "assistant", "content": ANSWER_PREFIX}]


def classify_items(engine: Engine, tree: AbilityTree, items: Sequence[MCQItem], config: ClassifyConfig | None = None) -> ClassifyResult:
    """The node of every item; items are not changed (callers set ``ability_path`` if they want)."""
    config = config or ClassifyConfig()
    at = {item.id: tree.root for item in items}
    by_id = {item.id: item for item in items}
    fallbacks: dict[str, str] = {}
    done: set[str] = set()
    calls = 0
    for _ in range(config.max_depth):
        open_ids = [i for i in at if i not in done and tree.children(at[i])]
        too_wide = [i for i in open_ids if len(tree.children(at[i])) + 1 > len(LETTERS)]
        for i in too_wide:
            fallbacks[i] = f"{at[i]!r} has more than {len(LETTERS) - 1} children"
            done.add(i)
        open_ids = [i for i in open_ids if i not in fallbacks]
        if not open_ids:
            break
        prompts = [classification_prompt(tree, by_id[i], at[i], config) for i in open_ids]
        width = max(len(tree.children(at[i])) + 1 for i in open_ids)
        try:
            scores = engine.choice_logprobs(prompts, list(LETTERS[:width]))
        except EngineCapabilityError as e:
            for i in open_ids:
                fallbacks[i] = f"engine cannot score letters: {e}"
            break
        calls += 1
        for i, row in zip(open_ids, scores):
            children = sorted(tree.children(at[i]), key=lambda c: tree.info(c)["name"])
            letters = LETTERS[: len(children) + 1]  # only this item's own options count
            best = max(letters, key=lambda c: row[c])
            if best == letters[-1]:
                done.add(i)  # none of the children: the item stays here
            else:
                at[i] = children[letters.index(best)]
    for i in fallbacks:  # the deepest node reached, or where the item's own path/source puts it
        if at[i] == tree.root:
            at[i] = tree.node_of(by_id[i])
    logger.info("classified %d items into the tree in %d engine call(s); %d fell back", len(items), calls, len(fallbacks))
    return ClassifyResult(nodes=at, fallbacks=fallbacks, calls=calls)
