"""The teacher proposes an ability tree for a domain: ``python -m tree init``.

Level by level: every node of the current level asks the teacher for its sub-areas in one batched
``engine.generate`` call per level, or two when ``samples`` > 1 (the first reply per node greedy, the
rest sampled, so that a small teacher's one bad reply does not decide a whole branch). Replies are parsed strictly,
line by line (``parse_subareas``): a line becomes a sub-area only if it is a short name made of words;
everything else is dropped with a reason. Names are then merged when they are near duplicates
(``name_key`` / ``similar_names``): equal keys after normalisation (case, punctuation, plural "s",
articles, word order), or the same words up to spelling variants of long words, whose character
similarity is >= ``merge_threshold`` (0.85 by default: "haematology" and "hematology" merge,
"pharmacotherapy" and "pharmacotherapeutics" (0.80) do not, nor do "type 1" and "type 2 diabetes").
A name that repeats the node itself or one of its ancestors, or that copies the prompt's worked
example, is rejected. Each node keeps at most ``max_children`` names, those proposed by the most
samples first; the whole tree stops growing at ``max_nodes``.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from data.text import word_tokens
from engines.base import Engine, SamplingParams
from prompts import render
from tree.ability_tree import SEP, AbilityTree

logger = logging.getLogger(__name__)

_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022+]\s*)?(?:\(?\d{1,2}[.)]\s*)*")  # "- 2. 2. Anatomy" too
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)\s*$")
PREFILL = "- "  # the assistant turn starts the list (part of the prompt format, not a setting)
_STOPWORDS = frozenset({"the", "a", "an", "of", "and", "in", "for", "to", "on", "with"})


@dataclass
class ProposeConfig:
    """Limits and sampling for a teacher-built tree (every field has a range check)."""

    max_depth: int = field(default=2, metadata={"help": "Levels below the root (1 = the root's children only)."})
    max_children: int = field(default=8, metadata={"help": "Sub-areas kept per node at most."})
    max_nodes: int = field(default=64, metadata={"help": "Nodes in the whole tree at most (root included)."})
    samples: int = field(default=5, metadata={"help": "Replies per node: the first greedy, the others sampled; names are ranked by how many replies give them."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of replies after the first."})
    max_new_tokens: int = field(default=160, metadata={"help": "Tokens per reply."})
    max_name_words: int = field(default=6, metadata={"help": "A sub-area name has at most this many words."})
    max_name_chars: int = field(default=60, metadata={"help": "A sub-area name has at most this many characters."})
    merge_threshold: float = field(default=0.85, metadata={"help": "Names whose normalised keys are at least this similar (difflib ratio) are one ability."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled replies."})
    example_area: str = field(default="law", metadata={"help": "Field of the worked example in the prompt (its names are never accepted)."})
    example: tuple[tuple[str, str], ...] = field(
        default=(
            ("criminal law", "crimes, defences and sentencing"),
            ("contract law", "formation, terms and breach of contracts"),
            ("constitutional law", "powers of the state and rights of citizens"),
            ("tort law", "civil wrongs such as negligence and defamation"),
        ),
        metadata={"help": "Worked example (name, description) pairs shown to the teacher."},
    )

    def __post_init__(self) -> None:
        checks = [
            (self.max_depth >= 1, f"max_depth must be >= 1, got {self.max_depth}"),
            (self.max_children >= 1, f"max_children must be >= 1, got {self.max_children}"),
            (self.max_nodes >= 2, f"max_nodes must be >= 2, got {self.max_nodes}"),
            (self.samples >= 1, f"samples must be >= 1, got {self.samples}"),
            (self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}"),
            (self.max_new_tokens >= 8, f"max_new_tokens must be >= 8, got {self.max_new_tokens}"),
            (self.max_name_words >= 1 and self.max_name_chars >= 8, "max_name_words must be >= 1 and max_name_chars >= 8"),
            (0.5 <= self.merge_threshold <= 1.0, f"merge_threshold must be in [0.5, 1], got {self.merge_threshold}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.example = tuple((str(n), str(d)) for n, d in self.example)


@dataclass(frozen=True)
class SubArea:
    name: str
    description: str


@dataclass(frozen=True)
class RejectedLine:
    node: str  # the node whose reply held the line
    line: str
    reason: str


@dataclass
class ProposeResult:
    tree: AbilityTree
    rejected: list[RejectedLine]
    calls: int  # engine calls (one per level)
    replies: int  # replies read


def name_key(name: str) -> str:
    """A name reduced to what makes it that topic: lower case, words only, no articles, singular, sorted."""
    words = []
    for w in word_tokens(name):
        if w in _STOPWORDS:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        words.append(w)
    return " ".join(sorted(words))


def similar_names(a: str, b: str, threshold: float) -> bool:
    """Same topic: equal keys, or the same number of words where each word of one has a partner in the
    other that is equal or, for words of 5+ letters, a spelling variant (difflib ratio >= threshold:
    "haematology"/"hematology", "cardiologies"/"cardiology"). Short words and numbers must be equal, so
    "type 1 diabetes" and "type 2 diabetes" stay two topics."""
    ka, kb = name_key(a).split(), name_key(b).split()
    if not ka or not kb or len(ka) != len(kb):
        return False
    unused = list(kb)
    for word in ka:
        partner = next((w for w in unused if w == word or (min(len(w), len(word)) >= 5 and not (w + word).isdigit()
                        and difflib.SequenceMatcher(None, w, word, autojunk=False).ratio() >= threshold)), None)
        if partner is None:
            return False
        unused.remove(partner)
    return True


def _clean_description(text: str, config: ProposeConfig) -> str:
    text = " ".join(text.strip().strip("\"'").split()).rstrip(",;")
    words = word_tokens(text)
    if not 2 <= len(words) <= 30 or len(set(words)) < 0.6 * len(words):
        return ""
    return text


def clean_name(text: str) -> str:
    """A candidate name without markdown, a trailing parenthetical, quotes and end punctuation."""
    text = _PARENTHETICAL.sub("", text.replace("**", "").replace("`", ""))
    return " ".join(text.strip().strip("\"'.,;").strip().split())


def name_problem(
    name: str, config: ProposeConfig, *, avoid: Sequence[str] = (), siblings: Sequence[str] = (), prompt_words: str = ""
) -> str | None:
    """Why ``name`` cannot be a new ability (None when it can): shape, copies of the worked example or of
    the prompt (``prompt_words``: normalised words, space-padded), a repeat of ``avoid`` (the node and its
    ancestors) or a near duplicate of ``siblings``."""
    words = name.split()
    if not words:
        return "no name"
    if len(words) > config.max_name_words or len(name) > config.max_name_chars:
        return "too long for a name"
    if SEP in name:
        return f"contains the path separator {SEP!r}"
    if sum(ch.isalpha() for ch in name) < max(3, 0.7 * len(name.replace(" ", ""))):
        return "not a name (too few letters)"
    if len({w.casefold() for w in words}) < len(words):
        return "repeated words"
    if any(similar_names(name, e, config.merge_threshold) for e in [config.example_area, *(n for n, _ in config.example)]):
        return "copies the worked example"
    if prompt_words.strip() and f" {' '.join(word_tokens(name))} " in prompt_words:
        return "copies a phrase of the prompt"
    if any(similar_names(name, a, config.merge_threshold) for a in avoid):
        return "repeats the node or an ancestor"
    if any(similar_names(name, k, config.merge_threshold) for k in siblings):
        return "duplicate in the reply"
    return None


def parse_subareas(
    text: str, config: ProposeConfig, *, avoid: Sequence[str] = (), prompt_text: str = ""
) -> tuple[list[SubArea], list[tuple[str, str]]]:
    """Sub-areas in one reply, in order, and the rejected lines with reasons; never raises.

    A line is ``- name[: description]`` or ``1. name[: description]`` (the reply includes the prefilled
    "- "). ``avoid`` holds names the reply must not repeat (the node and its ancestors); names of the
    prompt's worked example, and names that are a phrase copied from ``prompt_text`` (the domain
    description), are refused.
    """
    kept: list[SubArea] = []
    rejected: list[tuple[str, str]] = []
    if not isinstance(text, str):
        return kept, [(repr(text), "reply is not text")]
    prompt_words = f" {' '.join(word_tokens(prompt_text))} "
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        body = _LIST_MARK.sub("", line, count=1).strip()
        name, _, rest = body.partition(":")
        name = clean_name(name)
        if not name:
            reason = "no name"
        elif not rest.strip() and body.rstrip().endswith(":"):
            reason = "a header, not a name"
        elif not raw.lstrip()[:1] in "-*\u2022+" and not re.match(r"\s*\(?\d", raw) and (len(name.split()) > 4 or rest):
            reason = name_problem(name, config) or "not a list line"  # prose, unless its shape already fails
        else:
            reason = name_problem(name, config, avoid=avoid, siblings=[k.name for k in kept], prompt_words=prompt_words)
        if reason:
            rejected.append((line, reason))
            continue
        kept.append(SubArea(name, _clean_description(rest, config)))
    return kept, rejected


def proposal_prompt(node_path: Sequence[str], description: str, config: ProposeConfig) -> list[dict[str, str]]:
    user = render("propose_subareas", node=node_path[-1], path=list(node_path[:-1]), description=description,
                  max_children=config.max_children, example_area=config.example_area, example=config.example)
    # The prefilled "- " starts the list: without it a small model writes an essay instead.
    return [{"role": "user", "content": user}, {"role": "assistant", "content": PREFILL}]


def _rank(replies: Sequence[list[SubArea]], config: ProposeConfig) -> list[SubArea]:
    """Merge near-duplicate names across replies; rank by votes (replies naming it), then first seen."""
    groups: list[list[SubArea]] = []
    votes: Counter[int] = Counter()
    for reply in replies:
        seen_here: set[int] = set()
        for area in reply:
            idx = next((i for i, g in enumerate(groups) if similar_names(area.name, g[0].name, config.merge_threshold)), None)
            if idx is None:
                groups.append([area])
                idx = len(groups) - 1
            else:
                groups[idx].append(area)
            if idx not in seen_here:
                votes[idx] += 1
                seen_here.add(idx)
    order = sorted(range(len(groups)), key=lambda i: (-votes[i], i))
    out = []
    for i in order:
        first = groups[i][0]
        description = next((a.description for a in groups[i] if a.description), "")
        out.append(SubArea(first.name, description))
    return out


def propose_tree(engine: Engine, root: str, description: str = "", config: ProposeConfig | None = None) -> ProposeResult:
    """Grow a tree from ``root`` with the teacher, one batched call per level (see the module doc)."""
    config = config or ProposeConfig()
    tree = AbilityTree(root)
    if description:
        tree.info(tree.root)["description"] = description
    rejected: list[RejectedLine] = []
    frontier = [tree.root]
    calls = replies_read = 0
    for depth in range(config.max_depth):
        if not frontier or len(tree) >= config.max_nodes:
            break
        paths = [node.split(SEP) for node in frontier]
        replies = _ask(engine, [proposal_prompt(p, description, config) for p in paths], config, depth)
        calls += 1 if config.samples == 1 else 2
        replies_read += sum(len(r) for r in replies)
        next_frontier = []
        for i, node in enumerate(frontier):
            parsed = []
            for text in replies[i]:
                areas, bad = parse_subareas(PREFILL + text, config, avoid=paths[i], prompt_text=description)
                parsed.append(areas)
                rejected.extend(RejectedLine(node, line, why) for line, why in bad)
            ranked = _rank(parsed, config)
            rejected.extend(RejectedLine(node, a.name, f"beyond max_children={config.max_children} (fewer votes)")
                            for a in ranked[config.max_children :])
            for area in ranked[: config.max_children]:
                if len(tree) >= config.max_nodes:
                    rejected.append(RejectedLine(node, area.name, f"tree is full (max_nodes={config.max_nodes})"))
                    continue
                if f"{node}{SEP}{area.name}" in tree:
                    continue
                next_frontier.append(tree.add_ability([*paths[i], area.name], area.description))
        logger.info("level %d: %d node(s) asked, %d sub-area(s) added", depth + 1, len(frontier), len(next_frontier))
        frontier = next_frontier
    return ProposeResult(tree=tree, rejected=rejected, calls=calls, replies=replies_read)


def _ask(engine: Engine, prompts: list, config: ProposeConfig, depth: int) -> list[list[str]]:
    """Per prompt, ``samples`` reply texts: one greedy call, and one sampled call holding every prompt
    ``samples - 1`` times (engines give repeated prompts of one call different samples)."""
    def call(batch: list, params: SamplingParams) -> list[str]:
        completions = engine.generate(batch, params)
        if len(completions) != len(batch):
            raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} completions for {len(batch)} prompts")
        return [c.text for c in completions]

    greedy = call(prompts, SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0))
    out = [[text] for text in greedy]
    extra = config.samples - 1
    if extra:
        sampled = call([p for p in prompts for _ in range(extra)],
                       SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                      seed=config.seed + depth))
        for i in range(len(prompts)):
            out[i].extend(sampled[i * extra : (i + 1) * extra])
    return out
