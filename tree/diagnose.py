"""Teacher diagnoses: a short statement of what the student gets wrong at each weak node.

All nodes go to the teacher in one batched ``engine.generate`` call. The reply is parsed strictly:
only short sentence-like lines survive, so a rambling, empty or garbled reply gives no diagnosis for
that node (and leaves its earlier diagnoses in place) instead of polluting the prompts that the
generate stage builds from them.

The tree can grow from the same reply: nodes with at least ``min_misses_for_child`` misses are asked
whether the misses share a narrower sub-topic ("Sub-topic: <name>" as the last line). A name that passes
the same checks as ``python -m tree init`` names (shape, no repeat of the node or its ancestors, no near
duplicate of an existing child) becomes a child ability, described by the node's first diagnosis.
Bounded: at most ``max_new_children`` per call over the whole tree (nodes with the most misses first),
one per node, never deeper than ``max_child_depth``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from data.records import MCQItem
from engines.base import Engine, SamplingParams
from prompts import render
from prompts.echo import EchoCheck
from tree.ability_tree import SEP, AbilityTree
from tree.propose import ProposeConfig, clean_name, name_problem

logger = logging.getLogger(__name__)

# A missed question: the item and the letter the student chose (None when its answer was unparseable).
MissedItem = tuple[MCQItem, str | None]

_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\d{1,2}[.)]|\(\d{1,2}\))\s+")
_MARKUP = re.compile(r"(\*\*|__|`|^#+\s*)")
_LABEL = re.compile(r"^(?:diagnosis|issue|error|problem|gap)\s*\d*\s*:\s*", re.IGNORECASE)


@dataclass
class DiagnoseConfig:
    """Bounds on what a diagnosis may look like, and how long the teacher may write."""

    max_diagnoses: int = 3
    max_words: int = 30
    max_chars: int = 240
    min_words: int = 3
    max_new_tokens: int = 128  # room for max_diagnoses lines of max_words words
    max_question_chars: int = 400  # longer stems are cut in the prompt: short prompts keep a batch fast
    max_new_children: int = 4  # child abilities the diagnoses may add per call, whole tree (0: never)
    min_misses_for_child: int = 2  # a node needs this many misses before it is asked for a sub-topic
    max_child_depth: int = 4  # no new child deeper than this (root = 0)
    max_subtopic_words: int = 4

    def __post_init__(self) -> None:
        if self.max_diagnoses < 1:
            raise ValueError(f"max_diagnoses must be >= 1, got {self.max_diagnoses}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if self.max_chars < 20:
            raise ValueError(f"max_chars must be >= 20, got {self.max_chars}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_question_chars < 20:
            raise ValueError(f"max_question_chars must be >= 20, got {self.max_question_chars}")
        if self.max_new_children < 0 or self.min_misses_for_child < 1 or self.max_child_depth < 1 or self.max_subtopic_words < 1:
            raise ValueError("max_new_children must be >= 0; min_misses_for_child, max_child_depth and max_subtopic_words >= 1")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _clean_line(line: str) -> str:
    line = _BULLET.sub("", line.strip())
    line = _MARKUP.sub("", line)
    line = _LABEL.sub("", line.strip())
    return " ".join(line.strip().strip("\"'").split())


def _is_diagnosis(line: str, config: DiagnoseConfig) -> bool:
    """A plausible diagnosis: a short sentence made mostly of letters, not a header or a fragment."""
    words = line.split()
    if not config.min_words <= len(words) <= config.max_words or len(line) > config.max_chars:
        return False
    if line.endswith(":") or any(not ch.isprintable() for ch in line):
        return False
    visible = [ch for ch in line if not ch.isspace()]
    if sum(ch.isalpha() for ch in visible) < 0.6 * len(visible):
        return False
    # Degenerate repetition ("the the the the") is a decoding failure, not a statement.
    return len({w.casefold() for w in words}) >= 0.5 * len(words)


_SUBTOPIC = re.compile(r"^\W*sub-?\s?topic\W*:\s*(.*)$", re.IGNORECASE)


def parse_subtopic(text: Any) -> str | None:
    """The name on the reply's "Sub-topic:" line (the last one if several), cleaned; None without one."""
    if not isinstance(text, str):
        return None
    found = [m.group(1) for line in text.splitlines() if (m := _SUBTOPIC.match(line.strip()))]
    name = clean_name(found[-1]) if found else ""
    return name or None


@functools.lru_cache(maxsize=8)
def prompt_frames(max_diagnoses: int, max_words: int, max_subtopic_words: int) -> str:
    """The diagnosis prompt's own words (no area, no questions): what a reply must not copy back."""
    return render("diagnose_errors", domain="", area="", description="", missed=[], max_diagnoses=max_diagnoses, max_words=max_words,
                  ask_subtopic=True, max_subtopic_words=max_subtopic_words)


def parse_diagnoses(text: Any, config: DiagnoseConfig | None = None, *, missed: Sequence[MissedItem] = (),
                    rejected: Counter | None = None) -> list[str]:
    """Diagnoses from a teacher reply; never raises, returns [] for anything unusable.

    Bulleted lines are taken when the reply has any (the format the prompt asks for); otherwise a reply
    of at most ``max_diagnoses`` lines is read line by line. Dropped, and counted by reason in
    ``rejected``: echoes (``prompts.echo.EchoCheck``) of an option or the question of the ``missed`` items shown
    ("option", "question") or of the prompt's own sentences ("prompt"), where an answer-shaped line
    ("A. ...") is an option echo even without the items; then lines failing ``_is_diagnosis`` ("shape").
    """
    config = config or DiagnoseConfig()
    rejected = rejected if rejected is not None else Counter()
    if not isinstance(text, str) or not text.strip():
        rejected["empty"] += 1
        return []
    lines = [ln for ln in text.splitlines() if ln.strip() and not _SUBTOPIC.match(ln.strip())]
    bulleted = [ln for ln in lines if _BULLET.match(ln)]
    if bulleted:
        candidates = bulleted
    elif len(lines) <= config.max_diagnoses:
        candidates = lines
    else:
        rejected["shape"] += 1  # a long unbulleted reply: prose or a copy, not the list asked for
        return []
    echoes = EchoCheck(options=[item.options for item, _ in missed], questions=[item.question for item, _ in missed],
                       frames=[prompt_frames(config.max_diagnoses, config.max_words, config.max_subtopic_words)])
    out: dict[str, str] = {}
    for raw in candidates:
        line = _clean_line(raw)
        if reason := echoes.reason(_BULLET.sub("", raw.strip())):  # quotes kept
            rejected[reason] += 1
        elif not _is_diagnosis(line, config):
            rejected["shape"] += 1
        else:
            out.setdefault(line.casefold(), line)
    return list(out.values())[: config.max_diagnoses]


def diagnosis_prompt(tree: AbilityTree, node: str, missed: Sequence[MissedItem], config: DiagnoseConfig,
                     ask_subtopic: bool = False) -> str:
    info = tree.info(node)
    return render(
        "diagnose_errors",
        domain=tree.root,
        area=node,
        description=info["description"],
        missed=[
            {"question": _clip(item.question, config.max_question_chars), "options": item.options, "student": answer or "no answer",
             "key": item.answer_idx}
            for item, answer in missed
        ],
        max_diagnoses=config.max_diagnoses,
        max_words=config.max_words,
        ask_subtopic=ask_subtopic,
        max_subtopic_words=config.max_subtopic_words,
    )


def diagnose(
    engine: Engine,
    tree: AbilityTree,
    wrong_items_by_node: Mapping[str, Sequence[MissedItem]],
    max_per_node: int = 3,
    *,
    config: DiagnoseConfig | None = None,
    rejected: Counter | None = None,
) -> dict[str, list[str]]:
    """Ask the teacher, in one batched call, what the student gets wrong at each node with misses.

    Shows at most ``max_per_node`` missed questions per node (the first ones given: callers choose the
    order). Non-empty diagnoses replace the node's stored ones; returns every asked node's diagnoses
    (an empty list where the reply was unusable). ``rejected`` counts the dropped lines by reason.
    """
    if max_per_node < 1:
        raise ValueError(f"max_per_node must be >= 1, got {max_per_node}")
    config = config or DiagnoseConfig()
    missed_by_node: dict[str, list[MissedItem]] = {}
    for node, missed in wrong_items_by_node.items():
        if missed:
            missed_by_node.setdefault(tree.resolve(node), []).extend(missed)
    nodes = list(missed_by_node)
    n_missed = {n: len(m) for n, m in missed_by_node.items()}
    missed_by_node = {n: m[:max_per_node] for n, m in missed_by_node.items()}
    if not nodes:
        return {}
    ask = {n: config.max_new_children > 0 and n_missed[n] >= config.min_misses_for_child and tree.depth(n) < config.max_child_depth
           for n in nodes}
    prompts = [[{"role": "user", "content": diagnosis_prompt(tree, n, missed_by_node[n], config, ask[n])}] for n in nodes]
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0))
    if len(completions) != len(prompts):
        raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} completions for {len(prompts)} prompts")
    result: dict[str, list[str]] = {}
    subtopics: list[tuple[str, str]] = []
    rejected = rejected if rejected is not None else Counter()
    for node, completion in zip(nodes, completions):
        text = getattr(completion, "text", None)
        found = parse_diagnoses(text, config, missed=missed_by_node[node], rejected=rejected)
        result[node] = found
        if found:
            tree.set_diagnoses(node, found)
        else:
            logger.info("no usable diagnosis for %s (reply: %.80r)", node, text)
        if ask[node] and (name := parse_subtopic(text)):
            subtopics.append((node, name))
    added = grow_children(tree, subtopics, n_missed, config)
    logger.info("diagnosed %d of %d nodes; %d child abilit%s added; lines dropped: %s", sum(1 for d in result.values() if d), len(nodes),
                len(added), "y" if len(added) == 1 else "ies", ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none")
    return result


def grow_children(tree: AbilityTree, subtopics: Sequence[tuple[str, str]], n_missed: Mapping[str, int],
                  config: DiagnoseConfig) -> list[str]:
    """Add the acceptable ``(node, sub-topic name)`` pairs as children, most-missed nodes first, within the
    bounds of ``config``; returns the new node ids. Refused names are logged with the reason."""
    names = ProposeConfig(max_name_words=config.max_subtopic_words)
    added: list[str] = []
    for node, name in sorted(subtopics, key=lambda p: (-n_missed.get(p[0], 0), p[0])):
        if len(added) >= config.max_new_children:
            logger.info("sub-topic %r of %s not added: max_new_children=%d reached", name, node, config.max_new_children)
            continue
        avoid = [tree.info(a)["name"] for a in [*tree.ancestors(node), node]]
        siblings = [tree.info(c)["name"] for c in tree.children(node)]
        problem = name_problem(name, names, avoid=avoid, siblings=siblings)
        if problem:
            logger.info("sub-topic %r of %s not added: %s", name, node, problem)
            continue
        diagnoses = tree.info(node)["diagnoses"]
        added.append(tree.add_ability([*node.split(SEP), name], diagnoses[0] if diagnoses else ""))
    return added
