"""Domain verifiers: a judge of an item's key that is not the model that wrote it.

A verifier is a plain function ``verify(item, solution=None) -> Verification``: it says whether the
item's key is right, wrong or unknown (it cannot tell), with a one-line reason, and where it knows
the right option, which one (so that the validate stage may re-key the item instead of losing it).
``solution``, when given, is a worked solution to check as well (the teacher's reply that a student
is trained on): a wrong step makes the verdict wrong even where the key is right.

A domain names its verifier in ``domain.yaml`` (``verifier: data.arithmetic.verify:verify_item``) and a
user passes their own with ``--verifier module:function`` or ``--verifier path/to/file.py:function``.
Pipelines that hold up on checkable domains judge keys against something other than their writer
(MetaMath and STaR keep a solution only when its answer matches gold); a teacher judged by itself
passes its own mistakes (measured on arithmetic: 15 of 24 readable accepted keys wrong).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

from data.records import DataError, MCQItem

VERDICTS = ("right", "wrong", "unknown")
Verdict = Literal["right", "wrong", "unknown"]


@dataclass(frozen=True)
class Verification:
    """A verifier's judgement of one item (and, optionally, one worked solution)."""

    verdict: Verdict
    reason: str
    # The letter of the option that states the right answer, when the verifier knows it (a wrong key
    # with the right value among the options can be re-keyed); None when it does not.
    answer: Optional[str] = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")

    def as_dict(self) -> dict[str, str]:
        out = {"verdict": self.verdict, "reason": self.reason}
        if self.answer:
            out["answer"] = self.answer
        return out


Verifier = Callable[..., Verification]  # (item: MCQItem, solution: str | None = None) -> Verification
NO_VERIFIER = "none"  # --verifier none: run without the domain's verifier


def _import_target(module_part: str) -> object:
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser()
        if not path.is_file():
            raise ValueError(f"file {path} not found")
        name = f"_atkd_verifier_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"{path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 (the user's module: any error is theirs to fix)
            del sys.modules[name]
            raise ValueError(f"importing {path} failed: {type(e).__name__}: {e}") from None
        return module
    try:
        return importlib.import_module(module_part)
    except ImportError as e:
        raise ValueError(f"module {module_part!r} cannot be imported ({e})") from None
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"importing {module_part!r} failed: {type(e).__name__}: {e}") from None


def load_function(spec: str, where: str, example: str, call: str, arguments: int) -> Callable[..., object]:
    """The function named by ``spec`` (``module:function`` or ``file.py:function``), checked to accept
    ``arguments`` positional arguments; DataError naming ``where`` (an option or a file and field)
    otherwise. ``example`` is a spec shown in the error, ``call`` the signature it must accept."""
    module_part, sep, func_name = spec.rpartition(":")
    if not sep or not module_part or not func_name.isidentifier():
        raise DataError(f"{where}: {spec!r} is not module:function (e.g. {example} or my_checks.py:{example.rpartition(':')[2]})")
    try:
        module = _import_target(module_part)
    except ValueError as e:
        raise DataError(f"{where}: {spec!r}: {e}") from None
    func = getattr(module, func_name, None)
    if func is None:
        raise DataError(f"{where}: {spec!r}: {module_part} has no attribute {func_name!r}")
    if not callable(func):
        raise DataError(f"{where}: {spec!r}: {func_name} is not a function")
    try:
        signature = inspect.signature(func)
    except ValueError:  # a builtin without a signature: nothing to check
        return func
    try:
        signature.bind(*([None] * arguments))
    except TypeError:
        raise DataError(f"{where}: {spec!r}: {func_name} must accept {call}") from None
    return func


def load_verifier(spec: str, where: str = "--verifier") -> Verifier:
    """The verifier named by ``spec`` (``load_function``), checked to take ``(item, solution)``."""
    return load_function(spec, where, "data.arithmetic.verify:verify_item", "(item, solution=None)", 2)


def run_verifier(verifier: Verifier, item: MCQItem, solution: str | None = None) -> Verification:
    """Call a verifier and check what it returned (a user's function may return anything)."""
    result = verifier(item, solution)
    if not isinstance(result, Verification):
        name = getattr(verifier, "__qualname__", repr(verifier))
        raise TypeError(f"verifier {name} returned {type(result).__name__}, not data.verification.Verification")
    return result
