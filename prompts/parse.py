"""Strict parsing of model output into one JSON object with a fixed schema (never ``eval``).

Models, small ones above all, wrap JSON in chatter and code fences, stop half-way, or write something
else entirely. ``parse_json_object`` turns any such text into a ``ParseResult`` (ok, value, reason, raw)
instead of raising, so one bad completion never sinks a batch and the raw text is kept for analysis.

What is repaired, and nothing else (each repair applied is listed in ``ParseResult.repairs``):

* ``fences``: Markdown code fences (```` ```json ```` … ```` ``` ````) are removed.
* ``surrounding_text``: text before the JSON object and after its closing brace is dropped.
* ``trailing_commas``: a comma directly before ``}`` or ``]`` (outside strings) is removed, and only
  when the text does not parse without this repair.

Never repaired: single quotes, unquoted keys, comments, a missing closing brace (truncated output),
``NaN``/``Infinity``, duplicate keys, wrong types or missing fields: those are rejected with a reason.
The first complete, valid JSON object in the text is the one taken; a bracketed span that is not one
(``{answer}`` or ``[A-D]`` in chatter, an array) is skipped as a whole, so an object nested inside it
is never taken: an output that holds only an array is a rejection (picking an element would be a guess).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"^[ \t]*```[A-Za-z0-9_-]*[ \t]*$", re.MULTILINE)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_OPEN = re.compile(r"[{\[]")


@dataclass(frozen=True)
class ParseResult(Generic[M]):
    """The outcome of parsing one completion: ``value`` when ``ok``, else a one-line ``reason``."""

    ok: bool
    value: M | None
    reason: str
    raw: str
    repairs: tuple[str, ...] = field(default=())
    # Failure class for counting: no_json, truncated, mismatched, invalid_json, array, schema ("" when ok).
    code: str = ""


class _DuplicateKeyError(ValueError):
    """A JSON object repeats a key (json.loads would silently keep the last value)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise _DuplicateKeyError(f"duplicate key(s) {', '.join(repr(k) for k in dupes)}")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _strict_loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)


def _matching_close(text: str, start: int) -> tuple[int, str]:
    """Where the bracket at ``start`` closes (string-aware): ``(index, "closed")``, else
    ``(index of the offending bracket, "mismatched")`` or ``(len(text), "unclosed")``."""
    stack: list[str] = []
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack.pop() != ch:
                return i, "mismatched"
            if not stack:
                return i, "closed"
    return len(text), "unclosed"


def _remove_trailing_commas(text: str) -> str:
    """Drop commas before ``}``/``]`` outside strings (string contents are left byte-for-byte)."""
    out: list[str] = []
    pos = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"', text):
        out.append(_TRAILING_COMMA.sub(r"\1", text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_TRAILING_COMMA.sub(r"\1", text[pos:]))
    return "".join(out)


def extract_json_object(text: str) -> tuple[dict[str, Any] | None, str, str, tuple[str, ...]]:
    """Find and decode the first complete JSON value in ``text``; it must be an object.

    Scans left to right for ``{`` or ``[``. A bracketed span that is not a JSON object (``[A-D]`` or
    ``{answer}`` in the chatter, or an array) is skipped as a whole, so an object nested inside it is
    never taken.
    Returns ``(obj, code, reason, repairs)``; ``obj`` is None when nothing usable was found, and
    ``code``/``reason`` then say why: no_json, truncated, mismatched (brackets), array, or
    invalid_json with the decoder's message for the first object-like span.
    """
    fence_repair: tuple[str, ...] = ()
    if _FENCE.search(text):
        text = _FENCE.sub("", text)
        fence_repair = ("fences",)
    first_problem = ("", "")
    pos = 0
    saw_array = False
    while (m := _OPEN.search(text, pos)) is not None:
        start = m.start()
        end, status = _matching_close(text, start)
        if status != "closed":
            if text[start] == "{" and status == "unclosed":
                # Truncation wins over earlier problems: it is the model's real attempt, cut short.
                first_problem = ("truncated", "truncated JSON object (no closing brace)")
            elif text[start] == "{" and not first_problem[0]:
                first_problem = ("mismatched", f"mismatched bracket {text[end]!r} in JSON object")
            if status == "unclosed":
                break  # everything after is inside the unclosed value
            pos = end + 1
            continue
        value, error, fixed = _decode(text[start : end + 1])
        if error:
            if text[start] == "{" and not first_problem[0]:
                first_problem = ("invalid_json", f"invalid JSON: {error}")
            pos = end + 1
            continue
        if not isinstance(value, dict):
            saw_array = True  # "[1]" in prose, or an array of objects: never pick an element
            pos = end + 1
            continue
        repairs = list(fence_repair)
        if text[:start].strip() or text[end + 1 :].strip():
            repairs.append("surrounding_text")
        if fixed:
            repairs.append("trailing_commas")
        return value, "", "", tuple(repairs)
    if first_problem[0]:
        return None, first_problem[0], first_problem[1], fence_repair
    if saw_array:
        return None, "array", "top-level JSON is an array, expected an object", fence_repair
    return None, "no_json", "no JSON object in the output", fence_repair


def _decode(candidate: str) -> tuple[Any, str, bool]:
    """json.loads, then once more with trailing commas removed. Returns (value, error, repaired)."""
    try:
        return _strict_loads(candidate), "", False
    except (ValueError, _DuplicateKeyError) as e:
        error = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
    repaired = _remove_trailing_commas(candidate)
    if repaired != candidate:
        try:
            return _strict_loads(repaired), "", True
        except (ValueError, _DuplicateKeyError) as e:
            error = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
    return None, error, False


def parse_json_object(text: str, schema: type[M]) -> ParseResult[M]:
    """Parse ``text`` into ``schema`` (a pydantic model); never raises for bad model output."""
    obj, code, reason, repairs = extract_json_object(text)
    if obj is None:
        return ParseResult(False, None, reason, text, repairs, code)
    try:
        value = schema.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "object"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        return ParseResult(False, None, f"schema: {where}: {err['msg']}{more}", text, repairs, "schema")
    return ParseResult(True, value, "", text, repairs)


def parse_completion(completion: str, schema: type[M], prefill: str = "") -> ParseResult[M]:
    """Parse a completion that continued an assistant ``prefill`` (such as ``{"question": "``).

    Engines without structured decoding continue the prefill, so the JSON is ``prefill + completion``.
    An engine that enforces ``json_schema`` writes a whole object of its own after the prefill; that
    completion is taken alone when the joined text does not parse. ``raw`` is the joined text.
    """
    if not prefill:
        return parse_json_object(completion, schema)
    joined = parse_json_object(prefill + completion, schema)
    if joined.ok or not completion.lstrip().startswith("{"):
        return joined
    alone = parse_json_object(completion, schema)
    if not alone.ok:
        return joined
    return ParseResult(True, alone.value, "", prefill + completion, alone.repairs)


# ------------------------------------------------------------------------------------ output schemas


class MCQDraft(BaseModel):
    """What the generate prompt asks the teacher for (the fields of an MCQ, before provenance)."""

    model_config = ConfigDict(extra="forbid")

    question: str
    options: dict[str, str]
    answer_idx: str
    explanation: str = ""  # optional: small models often omit it, and nothing downstream needs it


class CriticVerdict(BaseModel):
    """What the critique prompt asks the critic for."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["accept", "reject"]
    reason: str = Field(min_length=1)


def mcq_json_schema(letters: str, explanation: bool = True, explanation_first: bool = False) -> dict[str, Any]:
    """JSON schema of an MCQ draft with options ``letters`` (e.g. ``"ABCD"``), for structured decoding.

    ``explanation_first`` puts the explanation right after the question (constrained decoders write
    the properties in this order): a teacher that computes its answer step by step works it out there
    before it lists the options.

    The length caps stop a small model that never closes a string (it would run to the token budget);
    they sit above nearly all real items (59 of the 5,626 clinical dev questions are longer than 2,000
    characters, mostly PubMedQA abstracts; 1 option of ~22,000 is longer than 400).
    """
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 1, "maxLength": 2000},
            "options": {
                "type": "object",
                "properties": {letter: {"type": "string", "minLength": 1, "maxLength": 400} for letter in letters},
                "required": list(letters),
                "additionalProperties": False,
            },
            "answer_idx": {"type": "string", "enum": list(letters)},
            "explanation": {"type": "string", "maxLength": 1000},
        },
        "required": ["question", "options", "answer_idx", "explanation"],
        "additionalProperties": False,
    }
    if explanation_first:
        order = ["question", "explanation", "options", "answer_idx"]
        schema["properties"] = {k: schema["properties"][k] for k in order}
        schema["required"] = order
        schema["properties"]["explanation"]["minLength"] = 1
    elif not explanation:
        del schema["properties"]["explanation"]
        schema["required"].remove("explanation")
    return schema


def critic_json_schema() -> dict[str, Any]:
    """JSON schema of a critic verdict, for structured decoding."""
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["accept", "reject"]},
            "reason": {"type": "string", "minLength": 1, "maxLength": 200},  # fits critic_max_new_tokens=96
        },
        "required": ["verdict", "reason"],
        "additionalProperties": False,
    }


__all__ = [
    "ParseResult",
    "MCQDraft",
    "CriticVerdict",
    "extract_json_object",
    "parse_json_object",
    "parse_completion",
    "mcq_json_schema",
    "critic_json_schema",
]
