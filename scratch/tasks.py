"""What a domain's own teacher is trained to do, as the loop's own prompts and the replies they ask for.

Each task is a chat conversation whose user turn is rendered by the very function the loop uses
(``training.mcq_data.mcq_conversation``, ``synth.generate.generation_messages``,
``synth.validate.critic_messages``, ``tree.diagnose.diagnosis_prompt``), and whose assistant turn is
the reply a perfect teacher gives, computed from the domain's answer key:

* ``answer``: the MCQ prompt of evaluation and the blind solver, replied "The answer is C.";
* ``generate``: the generation request for a node, with one seed exemplar of that node, replied with a
  new item of the node's skill as the compact JSON the schema-constrained decoder writes;
* ``critic``: the critic's review, replied accept for a correct item and reject for one whose key
  was moved to a distractor;
* ``diagnose``: the error-analysis prompt over a node's missed items, replied with one "- " line per
  mistake behind the options the student chose.

So the teacher is trained on exactly the text it will be asked; a change of a prompt file changes the
training data with it (rebuild the models: ``python -m scratch build --force``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from data.arithmetic.build import ability_path, draw_problems, tree_descriptions
from data.arithmetic.skills import SKILLS, Problem, Skill
from data.records import MCQItem
from synth.generate import NodeBrief, Request, SynthConfig, generation_messages
from synth.validate import ValidationConfig, critic_messages
from training.mcq_data import mcq_conversation
from tree import AbilityTree
from tree.diagnose import DiagnoseConfig, diagnosis_prompt

TASKS = ("answer", "generate", "critic", "diagnose")
# Auxiliary tasks that make the answer learnable from scratch (see TaskBuilder.examples).
AUX_TASKS = ("lookup", "letters", "compute")


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


def draft_json(item: MCQItem) -> str:
    """An item as the generation schema's compact JSON (question, options, answer_idx)."""
    return json.dumps({"question": item.question, "options": item.options, "answer_idx": item.answer_idx}, ensure_ascii=False)


def wrong_name(problem: Problem, value: int) -> str:
    """The mistake behind a wrong option (the fillers are named by how far off they are)."""
    name = problem.mistake_of(value)
    if name:
        return name
    off = abs(value - problem.answer)
    return {1: "is off by one", 10: "is off by ten in the tens digit", 100: "is off by one hundred"}.get(off, f"is off by {off}")


class TaskBuilder:
    """Renders examples of every task for the skills it is given, from draws of the domain's builder."""

    def __init__(self, skills: Sequence[Skill] = SKILLS, seed: int = 0, exclude: set[str] = frozenset(),
                 root: str = "arithmetic") -> None:
        self.skills = list(skills)
        self.seed = seed
        self.exclude = set(exclude)
        self.root = root
        self.tree = domain_tree(root)
        self.synth = replace(SynthConfig(domain=root), prefill=False)  # the engines enforce the schema: no prefill
        self.validation = ValidationConfig(domain=root)
        self.diagnose = DiagnoseConfig()

    def _problems(self, s: Skill, pool: str, n: int) -> list[tuple[MCQItem, Problem]]:
        return draw_problems(s, pool, n, self.seed, self.exclude, unique=False)  # small skills repeat their questions

    def examples(self, counts: dict[str, int]) -> list[Example]:
        """``counts[task]`` examples of each task per skill.

        Besides the loop's tasks, two auxiliary ones: ``lookup`` (the MCQ prompt asking "Which option is
        85?", replied with that option's letter), ``letters`` (the same prompt asking for the letters of
        all four numbers in a shuffled order, replied "B, D, A, C": four lookups per example) and
        ``compute`` (the question alone, replied with the number). A model trained from random weights on ``answer`` alone stays at chance: it has to find,
        at once, the computation and the circuit that matches a number to its option's letter, and the
        one letter token per example gives little signal. ``lookup`` teaches the matching with nothing
        to compute, ``compute`` the arithmetic with nothing to match."""
        out: list[Example] = []
        for s in self.skills:
            node = "/".join(ability_path(s))
            rng = random.Random(f"{self.seed}:tasks:{s.key}")
            if n := counts.get("answer", 0):
                for item, _ in self._problems(s, "task-answer", n):
                    out.append(Example(item.id, "answer", s.key, mcq_conversation(item)))
            if n := counts.get("lookup", 0):
                for item, _ in self._problems(s, "task-lookup", n):
                    asked = item.model_copy(update={"question": f"Which option is {item.options[item.answer_idx]}?"})
                    out.append(Example(f"lookup-{item.id}", "lookup", s.key, mcq_conversation(asked)))
            if n := counts.get("letters", 0):
                for item, _ in self._problems(s, "task-letters", n):
                    order = list(item.options)
                    rng.shuffle(order)
                    numbers = [item.options[letter] for letter in order]
                    asked = f"Which letters do {', '.join(numbers[:-1])} and {numbers[-1]} have?"
                    user = mcq_conversation(item.model_copy(update={"question": asked}))[0]
                    out.append(Example(f"letters-{item.id}", "letters", s.key, [user, {"role": "assistant", "content": ", ".join(order)}]))
            if n := counts.get("compute", 0):
                for item, problem in self._problems(s, "task-compute", n):
                    messages = [{"role": "user", "content": item.question}, {"role": "assistant", "content": str(problem.answer)}]
                    out.append(Example(f"compute-{item.id}", "compute", s.key, messages))
            if n := counts.get("generate", 0):
                targets = self._problems(s, "task-generate", n)
                shown = self._problems(s, "task-exemplar", n)
                names = sorted({name for _, p in targets for _, name in p.mistakes})
                for k, ((item, _), (exemplar, _)) in enumerate(zip(targets, shown)):
                    total = rng.randint(1, 12)
                    diagnoses = tuple(rng.sample(names, min(len(names), rng.choice((0, 0, 1, 2)))))
                    brief = NodeBrief(node, s.path[-1], self.tree.info(node)["description"], diagnoses, tuple(ability_path(s)))
                    request = Request(f"task-{item.id}", brief, rng.randrange(total), total, [exemplar])
                    messages = [*generation_messages(request, self.synth), {"role": "assistant", "content": draft_json(item)}]
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
                pool = self._problems(s, "task-diagnose", 3 * n)
                for k in range(n):
                    chunk = pool[3 * k : 3 * k + rng.randint(1, 3)]
                    missed, mistakes = [], Counter()
                    for item, problem in chunk:
                        letter = rng.choice([x for x in item.options if x != item.answer_idx])
                        missed.append((item, letter))
                        mistakes[wrong_name(problem, int(item.options[letter]))] += 1
                    lines = [f"- The student {name}." for name, _ in mistakes.most_common(self.diagnose.max_diagnoses)]
                    prompt = diagnosis_prompt(self.tree, node, missed, self.diagnose)
                    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "\n".join(lines)}]
                    out.append(Example(f"diagnose-{s.key}-{k}", "diagnose", s.key, messages))
        return out
