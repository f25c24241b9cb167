"""Domain oracles: a writer of perfect items, for experiments that must separate "does aiming the data
at weak skills help?" from "is the teacher good enough to write that data?".

An oracle is a plain function ``write(node, n, seed, exclude) -> list[MCQItem]``: up to ``n`` items of
the ability-tree node ``node`` (a root-first path, "arithmetic/multiplication/two-digit by two-digit"),
each with a right key and its worked ``solution``, none of whose questions is in ``exclude``, drawn
deterministically from ``seed``. It may return fewer where the node has fewer distinct questions left.
Only a domain whose truth can be computed has one: ``oracle: data.arithmetic.oracle:write_items`` in its
``domain.yaml``. The loop's ``--generator oracle`` asks it instead of the teacher (``synth.oracle``).
"""

from __future__ import annotations

from typing import Callable

from data.records import MCQItem
from data.verification import load_function

Oracle = Callable[..., list[MCQItem]]  # (node: str, n: int, seed: int, exclude: frozenset[str]) -> items


def load_oracle(spec: str, where: str) -> Oracle:
    """The oracle named by ``spec`` (``module:function`` or ``file.py:function``); DataError naming
    ``where`` when it cannot be loaded or does not take ``(node, n, seed, exclude)``."""
    return load_function(spec, where, "data.arithmetic.oracle:write_items", "(node, n, seed, exclude)", 4)


__all__ = ["Oracle", "load_oracle"]
