"""Read the chosen letter out of a free-text MCQ answer, strictly: ambiguous text gives None.

Rules, first match wins:
1. an explicit statement: "Answer: C", "The answer is (C)", "the correct option is C", "**Answer:** C";
   if explicit statements name different letters the answer is ambiguous (None);
2. the reply starts with a bare letter: "C", "C.", "(C)", "C) Insulinoma", "C: ...", unless it copies
   the lettered option list back (lines "A. ...", "B. ...": it commits to nothing);
3. the text of exactly one option appears in the reply (an option whose text is contained in another
   matched option's text does not count, so "Insulin" does not compete with "Insulinoma").
Only letters that are options of the item count.
"""

from __future__ import annotations

import logging
import re
from typing import Mapping

logger = logging.getLogger(__name__)

_EXPLICIT = re.compile(
    r"\b(?:answer|correct (?:option|choice|letter))\s*(?:is|:|=|-)?\s*:?\s*(?:option\s+|choice\s+|letter\s+)?"
    r"[(\[]?([A-Z])[)\]]?(?![A-Za-z])",
    re.IGNORECASE,
)
_LIST_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s+\S", re.MULTILINE)
_LEADING = re.compile(r"^\s*[(\[]?([A-Z])(?:\s*$|[)\].:,]|\s*[)\]])")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[*_`\"']", " ", text).casefold().split())


def _mentions(reply: str, option: str) -> bool:
    """Whole-word occurrence, so the option "no" is not found inside "not" or "know"."""
    return len(option) >= 2 and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", reply) is not None


def extract_answer(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text reply commits to, or None when it does not commit to exactly one."""
    if not isinstance(text, str) or not text.strip():
        return None
    letters = set(options)
    plain = re.sub(r"[*_`]", "", text)
    # "answer is C" where C is an option; a lowercase word ("answer is a beta blocker") is not a letter.
    explicit = [m.group(1) for m in _EXPLICIT.finditer(plain) if m.group(1).isupper() and m.group(1) in letters]
    if explicit:
        return explicit[0] if len(set(explicit)) == 1 else None
    if len({m.group(1) for m in _LIST_LINE.finditer(plain)}) > 1:
        return None  # the option list copied back
    lead = _LEADING.match(plain)
    if lead and lead.group(1) in letters:
        return lead.group(1)
    reply = _norm(text)
    matched = {letter: _norm(t) for letter, t in options.items() if _mentions(reply, _norm(t))}
    matched = {
        letter: t for letter, t in matched.items() if not any(t != other and t in other for other in matched.values())
    }
    return next(iter(matched)) if len(matched) == 1 else None
