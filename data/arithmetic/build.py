"""Build the arithmetic domain's item pools: ``python -m data.arithmetic.build [--out data/arithmetic]``.

Each pool is a pure function of (skill, pool name, seed): items are drawn skill by skill from a
``random.Random`` seeded with that triple, so rebuilding gives byte-identical files and adding a skill
does not change the others' items. A question is never repeated within or across pools (the eval pool
is held out: a seed or training item equal to an eval question is dropped and drawn again), and the
key's letter is balanced within each skill's items (each letter in turn, the order shuffled).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.arithmetic.skills import OPERATIONS, SKILLS, Problem, Skill
from data.records import MCQItem, atomic_write_text, check_writable, write_jsonl

logger = logging.getLogger(__name__)

ROOT_NAME = "arithmetic"
LETTERS = "ABCD"
DESCRIPTION = (
    "Whole-number arithmetic posed in words: addition and subtraction with and without carries and borrows, "
    "multiplication facts and long multiplication, division with and without remainder, place value and rounding."
)


@dataclass
class PoolConfig:
    """How many items each pool holds per skill, and the seed they are drawn from."""

    seed_per_skill: int = field(default=24, metadata={"help": "Seed-pool items per skill (probe, replay, exemplars)."})
    eval_per_skill: int = field(default=12, metadata={"help": "Held-out eval items per skill."})
    dev_per_skill: int = field(default=8, metadata={"help": "Dev-split items per skill (model selection: the loop's acceptance gate)."})
    seed: int = field(default=0, metadata={"help": "Seed of every draw."})


def distractors(problem: Problem) -> list[int]:
    """The three wrong options, most typical first: the first usable mistakes (distinct, non-negative,
    not the answer), then off-by-one / off-by-ten fillers. ``problem.mistake_of`` names each."""
    wrong: list[int] = []
    fillers = (1, 10, 2, 100, 3, 20)
    for m in (*(v for v, _ in problem.mistakes), *(problem.answer + d for d in fillers), *(problem.answer - d for d in fillers)):
        if m >= 0 and m != problem.answer and m not in wrong:
            wrong.append(m)
        if len(wrong) == 3:
            break
    return wrong


def options_for(problem: Problem, rng: random.Random, key_letter: str) -> dict[str, str]:
    """Four distinct non-negative numbers: the answer at ``key_letter``, the ``distractors`` elsewhere
    in a shuffled order."""
    wrong = distractors(problem)
    rng.shuffle(wrong)
    values = iter(wrong)
    return {letter: str(problem.answer if letter == key_letter else next(values)) for letter in LETTERS}


def ability_path(s: Skill) -> list[str]:
    return [ROOT_NAME, *s.path]


def draw_items(s: Skill, pool: str, n: int, seed: int, exclude: set[str] = frozenset()) -> list[MCQItem]:
    """``n`` items of skill ``s`` for ``pool``, none of whose questions is in ``exclude`` or repeated."""
    return [item for item, _ in draw_problems(s, pool, n, seed, exclude)]


def draw_problems(s: Skill, pool: str, n: int, seed: int, exclude: set[str] = frozenset(),
                  unique: bool = True, keep: Callable[[Problem], bool] | None = None,
                  at_most: bool = False) -> list[tuple[MCQItem, Problem]]:
    """``draw_items`` with the problem behind each item (its mistakes named). ``unique=False`` lets a
    question repeat within the draw (training sets larger than a small skill's question space); a
    question in ``exclude`` never appears; ``keep`` passes only the problems it accepts. When too few
    distinct questions are left: a ValueError, or with ``at_most`` the ones found."""
    rng = random.Random(f"{seed}:{pool}:{s.key}")
    letters = [LETTERS[i % len(LETTERS)] for i in range(n)]
    rng.shuffle(letters)
    items, seen = [], set(exclude)
    tries = 0
    while len(items) < n:
        tries += 1
        if tries > 200 * n:
            if at_most:
                break
            raise ValueError(f"skill {s.key!r} has fewer than {n} distinct questions left for pool {pool!r}; ask for fewer per skill")
        problem = s.draw(rng)
        if problem.question in seen or (keep is not None and not keep(problem)):
            continue
        if unique:
            seen.add(problem.question)
        key = letters[len(items)]
        slug = s.key.replace("/", "-").replace(",", "").replace(" ", "-")
        items.append((MCQItem(
            id=f"arith-{pool}-{slug}-{len(items):03d}",
            question=problem.question,
            options=options_for(problem, rng, key),
            answer_idx=key,
            meta_info=f"{s.operation}:{s.path[-1]}",
            ability_path=ability_path(s),
        ), problem))
    return items


def build_pools(config: PoolConfig | None = None, skills: Sequence[Skill] = SKILLS) -> dict[str, list[MCQItem]]:
    """{"eval": [...], "seed": [...], "dev": [...]}: eval drawn first, then seed items that repeat no eval
    question, then dev items that repeat neither (drawn last, so the seed and eval pools do not depend on it)."""
    config = config or PoolConfig()
    eval_items = [it for s in skills for it in draw_items(s, "eval", config.eval_per_skill, config.seed)]
    held_out = {it.question for it in eval_items}
    seed_items = [it for s in skills for it in draw_items(s, "seed", config.seed_per_skill, config.seed, held_out)]
    held_out |= {it.question for it in seed_items}
    dev_items = [it for s in skills for it in draw_items(s, "dev", config.dev_per_skill, config.seed, held_out)]
    return {"eval": eval_items, "seed": seed_items, "dev": dev_items}


def training_problems(n_per_skill: int, seed: int, exclude: Iterable[str], skills: Sequence[Skill] = SKILLS,
                      pool: str = "train") -> list[tuple[MCQItem, Problem]]:
    """Items (with their problems) for training the domain's models: the same draws under another pool
    name, none equal to a question in ``exclude`` (the shipped pools)."""
    held = set(exclude)
    return [pair for s in skills for pair in draw_problems(s, pool, n_per_skill, seed, held)]


def training_items(n_per_skill: int, seed: int, exclude: Iterable[str], skills: Sequence[Skill] = SKILLS,
                   pool: str = "train") -> list[MCQItem]:
    """``training_problems`` without the problems."""
    return [item for item, _ in training_problems(n_per_skill, seed, exclude, skills, pool)]


def tree_descriptions() -> dict[str, str]:
    """Node path ("arithmetic/addition/...") -> description, for every node of the domain's tree."""
    out = {ROOT_NAME: "Whole-number arithmetic: the four operations, place value and rounding."}
    for op, text in OPERATIONS.items():
        out[f"{ROOT_NAME}/{op}"] = text
    for s in SKILLS:
        out["/".join(ability_path(s))] = s.description
    return out


# The longest worked solution (two-digit by two-digit multiplication) is about 140 tokens of the scratch
# tokenizer; the rest of the budget is slack for a model that rambles before it stops.
ANSWER_MAX_TOKENS = 192
VERIFIER = "data.arithmetic.verify:verify_item"  # the domain's verifier (data.verification)
ORACLE = "data.arithmetic.oracle:write_items"  # perfect items per node: the --generator oracle control
# The loop options this domain runs with unless the user sets them (domain.yaml loop_defaults): the
# training schedule chosen by the sweep of benchmarks/bench_update.py (docs/update.md, results/update.csv).
LOOP_DEFAULTS: dict[str, object] = {"learning_rate": 5e-5, "warmup_ratio": 0.1, "lr_scheduler_type": "cosine",
                                    "replay": 16, "rehearsal": 16}


def domain_yaml() -> str:
    """The preset's domain.yaml: names, files and every node's description."""
    body = {"name": ROOT_NAME, "root": ROOT_NAME, "description": DESCRIPTION, "seed_files": ["seed.jsonl"],
            "eval_files": ["eval.jsonl"], "dev_files": ["dev.jsonl"], "answer_mode": "generate", "answer_max_tokens": ANSWER_MAX_TOKENS,
            "verifier": VERIFIER, "oracle": ORACLE, **({"loop_defaults": LOOP_DEFAULTS} if LOOP_DEFAULTS else {}),
            "node_descriptions": tree_descriptions()}
    header = ("# A domain preset: what `--domain arithmetic` loads. Written, with seed.jsonl and eval.jsonl, by\n"
              "# `python -m data.arithmetic.build` (deterministic; README.md beside this file). Answered in\n"
              "# generate mode: a worked solution, column by column, then the answer (scratch.tasks says why).\n"
              "# Keys and worked solutions are checked by computing them (verifier: data/arithmetic/verify.py);\n"
              "# the oracle (data/arithmetic/oracle.py) writes right items per node for --generator oracle.\n")
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder for seed.jsonl, eval.jsonl and domain.yaml (default: this package)")
    parser.add_argument("--seed-per-skill", type=int, default=PoolConfig.seed_per_skill)
    parser.add_argument("--eval-per-skill", type=int, default=PoolConfig.eval_per_skill)
    parser.add_argument("--dev-per-skill", type=int, default=PoolConfig.dev_per_skill)
    parser.add_argument("--seed", type=int, default=PoolConfig.seed)
    args = parser.parse_args(argv)
    if min(args.seed_per_skill, args.eval_per_skill, args.dev_per_skill) < 1:
        parser.error("--seed-per-skill, --eval-per-skill and --dev-per-skill must be >= 1")
    out = Path(args.out)
    try:
        check_writable(out, "--out")
        pools = build_pools(PoolConfig(seed_per_skill=args.seed_per_skill, eval_per_skill=args.eval_per_skill,
                                      dev_per_skill=args.dev_per_skill, seed=args.seed))
    except ValueError as e:  # DataError too; or more distinct questions asked for than a skill has
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for name, items in pools.items():
        write_jsonl(out / f"{name}.jsonl", [it.model_dump(exclude_none=True) for it in items])
        print(f"{out / f'{name}.jsonl'}: {len(items)} items over {len(SKILLS)} skills")
    atomic_write_text(out / "domain.yaml", domain_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
