"""What a domain's own teacher is trained to do, as the loop's own prompts and the replies they ask for.

Each task is a chat conversation whose user turn is rendered by the very function the loop uses
(``training.mcq_data.mcq_conversation``, ``synth.generate.generation_messages``,
``synth.validate.critic_messages``, ``tree.diagnose.diagnosis_prompt``), and whose assistant turn is
the reply a perfect teacher gives, computed from the domain's answer key:

* ``answer``: the MCQ prompt of evaluation and the blind solver, replied with the worked solution and
  the answer stated as its option's text ("47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8. 47 + 38 = 85. The answer
  is 85."). Replied with the letter alone, a model trained from random weights stays at chance: it has
  to find at once the computation and the circuit that matches a number to its option's letter, from
  one token of signal per example (measured: flat at ln 4 for 1,500 steps even on "Which option is
  85?"). Step by step, every digit follows from the few tokens before it, and nothing is matched;
  the domain is scored in generate mode, the stated text read as its option (``prompts.extract``);
* ``generate``: the generation request for a node, with one seed exemplar of that node, replied with a
  new item of the node's skill as the compact JSON the schema-constrained decoder writes, its
  "explanation" (the worked solution) before the options, and the options in a fixed order, the key
  first and the distractors by their mistakes (``draft_json``): written options-first, or with the key
  at a random letter, the teacher listed the same number in several slots (measured: 25 and 29 of 32
  generated items);
* ``critic``: the critic's review, replied accept for a correct item and reject for one whose key
  was moved to a distractor;
* ``diagnose``: the error-analysis prompt over a node's missed items, replied with one "- " line per
  mistake behind the options the student chose; asked (two or more misses, as the loop asks) whether
  they share a narrower sub-topic, a "Sub-topic: the seven times table" line where most of them do
  (``Problem.topic``: times tables by table, multiplication and division by the one-digit factor), so
  the tree's growth path is exercised by a teacher that knows when a narrower skill is behind the misses.

So the teacher is trained on exactly the text it will be asked; a change of a prompt file changes the
training data with it (rebuild the models: ``python -m scratch build --force``).
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from data.arithmetic.build import ability_path, distractors, draw_problems, tree_descriptions
from data.arithmetic.skills import SKILLS, Problem, Skill, worked_reply
from data.records import MCQItem
from synth.generate import NodeBrief, Request, SynthConfig, generation_messages
from synth.validate import ValidationConfig, critic_messages
from training.mcq_data import mcq_conversation
from tree import AbilityTree
from tree.diagnose import DiagnoseConfig, diagnosis_prompt

TASKS = ("answer", "generate", "critic", "diagnose")


@dataclass(frozen=True)
class Example:
    id: str
    task: str
    skill: str
    messages: list[dict[str, str]]  # ends with the assistant's reply


def domain_tree(root: str = "arithmetic") -> AbilityTree:
    """The domain's tree with every node described, as the loop builds it from the preset."""
    tree = AbilityTree(root)
    for node, description in tree_descriptions().items():
        tree.add_ability(node, description, exist_ok=True)
    return tree


def draft_json(item: MCQItem, problem: Problem) -> str:
    """An item as the generation schema's compact JSON: the worked solution first (the loop asks a
    generate-mode domain's teacher for it there), then the options with the key first and the
    distractors in the order of their mistakes, most typical first. Every token of the options then
    follows from the question; in a shuffled order each slot is a guess among four numbers, and sampled,
    the likeliest of them, the key, fills several slots (measured: 29 of 32 items with options of the same
    text). The loop's validation evens out the key's letter afterwards (``synth.positions``)."""
    letters = list(item.options)
    values = [problem.answer, *distractors(problem)]
    options = {letter: str(v) for letter, v in zip(letters, values)}
    return json.dumps({"question": item.question, "explanation": worked_reply(problem), "options": options,
                       "answer_idx": letters[0]}, ensure_ascii=False)


def wrong_name(problem: Problem, value: int) -> str:
    """The mistake behind a wrong option (the fillers are named by how far off they are)."""
    name = problem.mistake_of(value)
    if name:
        return name
    off = abs(value - problem.answer)
    return {1: "is off by one", 10: "is off by ten in the tens digit", 100: "is off by one hundred"}.get(off, f"is off by {off}")


def shared_topic(problems: Sequence[Problem]) -> str:
    """The sub-topic more than half of ``problems`` belong to ("" when none does): the reply's "Sub-topic:"."""
    counts = Counter(p.topic for p in problems if p.topic)
    topic, count = counts.most_common(1)[0] if counts else ("", 0)
    return topic if 2 * count > len(problems) else ""


class TaskBuilder:
    """Renders examples of every task for the skills it is given, from draws of the domain's builder."""

    def __init__(self, skills: Sequence[Skill] = SKILLS, seed: int = 0, exclude: set[str] = frozenset(),
                 root: str = "arithmetic") -> None:
        self.skills = list(skills)
        self.seed = seed
        self.exclude = set(exclude)
        self.root = root
        self.tree = domain_tree(root)
        # as the loop's generate stage asks a generate-mode domain (agents.stages.generate); the engines
        # enforce the schema: no prefill
        self.synth = replace(SynthConfig(domain=root, explanation_first=True), prefill=False)
        self.validation = ValidationConfig(domain=root)
        self.diagnose = DiagnoseConfig()

    def _problems(self, s: Skill, pool: str, n: int) -> list[tuple[MCQItem, Problem]]:
        return draw_problems(s, pool, n, self.seed, self.exclude, unique=False)  # small skills repeat their questions

    def _diagnosis_chunks(self, s: Skill, n: int, rng: random.Random) -> list[list[tuple[MCQItem, Problem]]]:
        """``n`` groups of 1 to 3 missed items; in a skill with sub-topics every other group of two or more
        is drawn from one sub-topic, so the teacher sees misses that share one as often as misses that don't."""
        pool = self._problems(s, "task-diagnose", 3 * n)
        by_topic: dict[str, list[tuple[MCQItem, Problem]]] = defaultdict(list)
        for pair in pool:
            if pair[1].topic:
                by_topic[pair[1].topic].append(pair)
        chunks = []
        for k in range(n):
            size = rng.randint(1, 3)
            topics = sorted(t for t, pairs in by_topic.items() if len(pairs) >= size) if size >= 2 and k % 2 else []
            chunks.append(rng.sample(by_topic[rng.choice(topics)], size) if topics else pool[3 * k : 3 * k + size])
        return chunks

    def examples(self, counts: dict[str, int]) -> list[Example]:
        """``counts[task]`` examples of each task per skill."""
        out: list[Example] = []
        for s in self.skills:
            node = "/".join(ability_path(s))
            rng = random.Random(f"{self.seed}:tasks:{s.key}")
            if n := counts.get("answer", 0):
                for item, problem in self._problems(s, "task-answer", n):
                    user = mcq_conversation(item)[0]
                    out.append(Example(item.id, "answer", s.key, [user, {"role": "assistant", "content": worked_reply(problem)}]))
            if n := counts.get("generate", 0):
                targets = self._problems(s, "task-generate", n)
                shown = self._problems(s, "task-exemplar", n)
                names = sorted({name for _, p in targets for _, name in p.mistakes})
                for k, ((item, problem), (exemplar, _)) in enumerate(zip(targets, shown)):
                    total = rng.randint(1, 12)
                    diagnoses = tuple(rng.sample(names, min(len(names), rng.choice((0, 0, 1, 2)))))
                    brief = NodeBrief(node, s.path[-1], self.tree.info(node)["description"], diagnoses, tuple(ability_path(s)))
                    request = Request(f"task-{item.id}", brief, rng.randrange(total), total, [exemplar])
                    messages = [*generation_messages(request, self.synth), {"role": "assistant", "content": draft_json(item, problem)}]
                    out.append(Example(f"gen-{item.id}", "generate", s.key, messages))
            if n := counts.get("critic", 0):
                for k, (item, _) in enumerate(self._problems(s, "task-critic", n)):
                    if k % 2:  # the key moved to a distractor
                        wrong = rng.choice([letter for letter in item.options if letter != item.answer_idx])
                        shown_item, reply = item.model_copy(update={"answer_idx": wrong}), {"verdict": "reject", "reason": "The key is not the correct answer."}
                    else:
                        shown_item, reply = item, {"verdict": "accept", "reason": "The key is correct and the distractors are plausible."}
                    messages = [*critic_messages(shown_item, self.validation, prefill=False), {"role": "assistant", "content": json.dumps(reply)}]
                    out.append(Example(f"critic-{item.id}", "critic", s.key, messages))
            if n := counts.get("diagnose", 0):
                for k, chunk in enumerate(self._diagnosis_chunks(s, n, rng)):
                    missed, mistakes = [], Counter()
                    for item, problem in chunk:
                        letter = rng.choice([x for x in item.options if x != item.answer_idx])
                        missed.append((item, letter))
                        mistakes[wrong_name(problem, int(item.options[letter]))] += 1
                    lines = [f"- The student {name}." for name, _ in mistakes.most_common(self.diagnose.max_diagnoses)]
                    # as in tree.diagnose: a node with enough misses is asked whether they share a sub-topic
                    ask = len(chunk) >= self.diagnose.min_misses_for_child
                    if ask and (topic := shared_topic([p for _, p in chunk])):
                        lines.append(f"Sub-topic: {topic}")
                    prompt = diagnosis_prompt(self.tree, node, missed, self.diagnose, ask_subtopic=ask)
                    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "\n".join(lines)}]
                    out.append(Example(f"diagnose-{s.key}-{k}", "diagnose", s.key, messages))
        return out
