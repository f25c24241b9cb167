"""Domain presets: a folder under data/ with a ``domain.yaml`` naming its seed pool and eval files.

``--domain clinical`` loads ``data/clinical/domain.yaml``; ``--domain path/to/domain.yaml`` loads a
user's own preset, whose file names are relative to that yaml.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from data.records import DataError, MCQItem, read_items, read_yaml

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Domain:
    name: str
    root: str  # the ability tree's root node
    description: str
    seed_files: tuple[Path, ...]
    eval_files: tuple[Path, ...]
    # node id ("root/child/...") -> description, shown to the teacher when it writes items for the node
    descriptions: dict[str, str] = field(default_factory=dict)
    # How the domain's questions are answered, by the student, the blind solver and the teacher whose
    # replies are distilled: "logprob" (the option letters' log-probs after "The answer is") or
    # "generate" (a free reply of at most answer_max_tokens tokens, read by prompts.extract; the teacher's
    # replies that reach the key become the items' worked solutions, what the student is trained on).
    answer_mode: str = "logprob"
    answer_max_tokens: int = 32
    # The domain's verifier (data.verification), as module:function or file.py:function ("": none): it
    # judges generated keys in the validate stage and the teacher's worked solutions in the label stage.
    verifier: str = ""
    # The domain's oracle (data.oracle): a writer of perfect items per node, for --generator oracle
    # (the allocation benchmark's control arm); module:function or file.py:function, "": none.
    oracle: str = ""
    # The dev split: items for model selection only (the loop's acceptance gate, the train stage's choice
    # of epoch), disjoint from the seed pool (probe, replay, exemplars) and the eval set. Empty: none.
    dev_files: tuple[Path, ...] = ()
    # Loop options this domain runs best with (agents.config: what --domain sets unless the user does),
    # e.g. the training schedule chosen by benchmarks/bench_update.py.
    loop_defaults: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None  # the domain.yaml it was read from

    def seed_items(self) -> list[MCQItem]:
        return read_items(self.seed_files, allow_empty=False)  # an empty file listed is a mistake, not a choice

    def eval_items(self) -> list[MCQItem]:
        return read_items(self.eval_files, allow_empty=False)

    def dev_items(self) -> list[MCQItem]:
        """The dev split; a DataError names the dev file of an item that repeats a seed or eval item
        (by id or by question): a dev score must not be earned on items the loop trains or reports on."""
        if not self.dev_files:
            return []
        items = read_items(self.dev_files, allow_empty=False)
        seed, evals = self.seed_items(), self.eval_items()
        others = {it.id: "seed" for it in seed} | {it.id: "eval" for it in evals}
        questions = {it.question.strip().lower() for it in (*seed, *evals)}
        for item in items:
            where = others.get(item.id) or ("seed/eval" if item.question.strip().lower() in questions else "")
            if where:
                files = ", ".join(str(f) for f in self.dev_files)
                raise DataError(f"{files}: dev item {item.id!r} repeats a {where} item; the dev split must be disjoint from them")
        return items


def available_domains() -> list[str]:
    return sorted(p.parent.name for p in DATA_DIR.glob("*/domain.yaml"))


def _function_field(raw: dict[str, Any], key: str, path: Path, load: Callable[[str, str], object]) -> str:
    """A ``module:function`` or ``file.py:function`` field (a file relative to the yaml, like the data
    files), checked by ``load``; DataError naming the file and field."""
    spec = raw.get(key) or ""
    if not isinstance(spec, str):
        raise DataError(f"{path}: field {key!r} must be module:function or file.py:function, not {spec!r}")
    if spec:
        module, sep, func = spec.rpartition(":")
        if sep and module.endswith(".py") and not Path(module).is_absolute():
            spec = f"{(path.parent / module).resolve()}:{func}"
        load(spec, f"{path}: field {key!r}")
    return spec


def get_domain(name_or_path: str) -> Domain:
    """Load a preset by name (a folder of data/) or by the path of a ``domain.yaml``.

    Raises DataError with a message that names what to fix (unknown name, missing file, bad field).
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
        if not path.is_file():
            raise DataError(f"{path}: domain file not found")
    else:
        path = DATA_DIR / name_or_path / "domain.yaml"
        if "/" in name_or_path or not path.is_file():
            raise DataError(
                f"unknown domain {name_or_path!r}; available: {', '.join(available_domains()) or 'none'} "
                "(or pass the path of a domain.yaml)"
            )
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping with name, root, seed_files, eval_files")
    for key in ("name", "root", "seed_files", "eval_files"):
        if key not in raw:
            raise DataError(f"{path}: missing field {key!r}")
    unknown = set(raw) - {"name", "root", "description", "seed_files", "eval_files", "node_descriptions", "answer_mode", "answer_max_tokens", "verifier",
                         "oracle", "dev_files", "loop_defaults"}
    if unknown:
        raise DataError(f"{path}: unknown field(s) {sorted(unknown)}")

    def files(key: str) -> tuple[Path, ...]:
        value = raw.get(key)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise DataError(f"{path}: field {key!r} must be a non-empty list of file names")
        out = tuple((path.parent / str(v)).resolve() for v in value)
        for f in out:
            if not f.is_file():
                raise DataError(f"{path}: field {key!r}: data file {f} not found")
        return out

    described = raw.get("node_descriptions") or {}
    if not isinstance(described, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in described.items()):
        raise DataError(f"{path}: field 'node_descriptions' must map node paths (root/child/...) to descriptions")
    answer_mode = raw.get("answer_mode", "logprob")
    if answer_mode not in ("logprob", "generate"):
        raise DataError(f"{path}: field 'answer_mode' must be 'logprob' or 'generate', not {answer_mode!r}")
    answer_max_tokens = raw.get("answer_max_tokens", 32)
    if not isinstance(answer_max_tokens, int) or isinstance(answer_max_tokens, bool) or answer_max_tokens < 1:
        raise DataError(f"{path}: field 'answer_max_tokens' must be a whole number >= 1, not {answer_max_tokens!r}")
    from data.oracle import load_oracle
    from data.verification import load_verifier

    verifier = _function_field(raw, "verifier", path, load_verifier)
    oracle = _function_field(raw, "oracle", path, load_oracle)
    loop_defaults = raw.get("loop_defaults") or {}
    if not isinstance(loop_defaults, dict) or not all(isinstance(k, str) for k in loop_defaults):
        raise DataError(f"{path}: field 'loop_defaults' must map loop option names to values")
    return Domain(
        name=str(raw["name"]),
        root=str(raw["root"]),
        description=str(raw.get("description", "")).strip(),
        seed_files=files("seed_files"),
        eval_files=files("eval_files"),
        descriptions={k: v.strip() for k, v in described.items()},
        answer_mode=answer_mode,
        answer_max_tokens=answer_max_tokens,
        verifier=verifier,
        oracle=oracle,
        dev_files=files("dev_files") if "dev_files" in raw else (),
        loop_defaults=dict(loop_defaults),
        file=path.resolve(),
    )
