"""Read the chosen letter out of a free-text MCQ answer, strictly: ambiguous text gives None.

Rules, first match wins:
1. an explicit statement: "Answer: C", "The answer is (C)", "the correct option is C", "**Answer:** C";
   if explicit statements name different letters the answer is ambiguous (None);
   an explicit statement of an option's text counts the same: "The answer is 85." where 85 is option C
   (a worked solution before it may mention other options' numbers: the statement decides);
2. the reply starts with a bare letter: "C", "C.", "(C)", "C) Insulinoma", "C: ...", unless it copies
   the lettered option list back (lines "A. ...", "B. ...": it commits to nothing);
3. the text of exactly one option appears in the reply (an option whose text is contained in another
   matched option's text does not count, so "Insulin" does not compete with "Insulinoma").
Only letters that are options of the item count. A letter from rule 1 or 2 followed by the text of a
different option ("B. Cryptococcus" where Cryptococcus is option C: small models do this often) commits
to no single answer and gives None; text that matches no option (truncated, paraphrased) keeps the letter.
Texts are compared as ``prompts.echo`` compares them (the same rules find echoes in diagnoses).
"""

from __future__ import annotations

import logging
import re
from typing import Mapping

from prompts.echo import norm, option_key

logger = logging.getLogger(__name__)

_EXPLICIT = re.compile(
    r"\b(?:answer|correct (?:option|choice|letter))\s*(?:is|:|=|-)?\s*:?\s*(?:option\s+|choice\s+|letter\s+)?"
    r"[(\[]?([A-Z])[)\]]?(?![A-Za-z])",
    re.IGNORECASE,
)
# "The answer is 85." / "Answer: Insulinoma": the statement runs to the end of its sentence or line.
_EXPLICIT_TEXT = re.compile(r"\b(?:answer|correct (?:option|choice))\s*(?:is|:|=)\s*(.+?)\s*(?:\.(?=\s|$)|\n|$)", re.IGNORECASE)
_LIST_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s+\S", re.MULTILINE)
_LEADING = re.compile(r"^\s*[(\[]?([A-Z])(?:\s*$|[)\].:,]|\s*[)\]])")


def _mentions(reply: str, option: str) -> bool:
    """Whole-word occurrence, so the option "no" is not found inside "not" or "know"."""
    return len(option) >= 2 and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", reply) is not None


def _names_other_option(letter: str, rest: str, options: Mapping[str, str]) -> bool:
    """Whether the text after a letter (to the end of its line) is another option's text, not its own."""
    said = option_key(rest.split("\n", 1)[0].lstrip(" .):,-"))
    if not said:
        return False
    own = option_key(options[letter])
    others = [o for o in (option_key(t) for k, t in options.items() if k != letter) if o]
    if said == own:
        return False
    if said in others:  # exactly another option ("A. Insulin" where Insulin is C, even if A is Insulinoma)
        return True
    if said.startswith(own + " ") or own.startswith(said):  # its own text, continued or cut short
        return False
    return any(said.startswith(o + " ") for o in others)


def extract_answer(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text reply commits to, or None when it does not commit to exactly one."""
    if not isinstance(text, str) or not text.strip():
        return None
    letters = set(options)
    plain = re.sub(r"[*_`]", "", text)
    # "answer is C" where C is an option; a lowercase word ("answer is a beta blocker") is not a letter.
    explicit = [m for m in _EXPLICIT.finditer(plain) if m.group(1).isupper() and m.group(1) in letters]
    if explicit:
        if len({m.group(1) for m in explicit}) > 1 or any(_names_other_option(m.group(1), plain[m.end():], options) for m in explicit):
            return None
        return explicit[0].group(1)
    keys = {option_key(t): letter for letter, t in options.items()}
    stated = {keys[k] for k in (option_key(m.group(1)) for m in _EXPLICIT_TEXT.finditer(plain)) if k in keys}
    if stated:
        return stated.pop() if len(stated) == 1 else None
    if len({m.group(1) for m in _LIST_LINE.finditer(plain)}) > 1:
        return None  # the option list copied back
    lead = _LEADING.match(plain)
    if lead and lead.group(1) in letters:
        return None if _names_other_option(lead.group(1), plain[lead.end():], options) else lead.group(1)
    reply = norm(text)
    matched = {letter: norm(t) for letter, t in options.items() if _mentions(reply, norm(t))}
    matched = {
        letter: t for letter, t in matched.items() if not any(t != other and t in other for other in matched.values())
    }
    return next(iter(matched)) if len(matched) == 1 else None
