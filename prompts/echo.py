"""Is a line of a model's reply only an echo of what it was shown? Small models often copy back an
answer option, the question, or the prompt's own wording instead of answering; such a line commits
to nothing and must not be read as content.

    EchoCheck(options=[{"A": "Tetralogy of Fallot", ...}]).reason("A. Tetralogy of Fallot")      # "option"
    EchoCheck(frames=[prompt_text]).reason("The student gets wrong in this area: x")             # "prompt"

The answer reader (``prompts.extract``) applies the same idea to answers: a reply that copies the
lettered option list back commits to no letter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# "A. text", "(B) text", "C) text", "D: text": a line shaped as an answer option.
OPTION_LINE = re.compile(r"^\s*\(?([A-J])\s*[.):]\s+")
_QUOTED = re.compile(r"[\"“]([^\"”]{2,})[\"”]")
# The words a quoted option may stand among and still be an echo: '"The auditory tube" is incorrect.'
VERDICT_WORDS = frozenset({"is", "are", "was", "the", "a", "an", "thi", "that", "it", "not", "incorrect", "correct", "wrong", "right",
                           "answer", "option", "choice", "pick", "here", "true", "false"})  # stemmed as _words stems ("thi": this)
FRAME_NGRAM = 5  # a run of this many words copied from the prompt's instructions is an echo


def norm(text: str) -> str:
    """Casefolded words, markup and quotes dropped, for comparing texts."""
    return " ".join(re.sub(r"[*_`\"'“”‘’]", " ", text).casefold().split())


def option_key(text: str) -> str:
    return norm(text).rstrip(" .;:,")


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _stem(word: str) -> str:
    """Crude, applied to both sides: "gets" and "get" are the same frame word."""
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _words(text: str) -> list[str]:
    return [_stem(w) for w in re.findall(r"[\w'-]+", norm(text))]


class EchoCheck:
    """What a reply was shown (options, questions, the prompt's own instructions), prepared once, so
    that each line of the reply is judged without redoing the work."""

    def __init__(self, *, options: Iterable[Mapping[str, str]] = (), questions: Iterable[str] = (), frames: Iterable[str] = ()) -> None:
        self.option_texts = {option_key(t) for opts in options for t in opts.values()} - {""}
        self.questions = [q for q in (option_key(q) for q in questions) if q]
        self.frame_grams = set().union(*(_ngrams(_words(f), FRAME_NGRAM) for f in frames))

    def reason(self, line: str) -> str | None:
        """Why ``line`` is an echo ("option", "question", "prompt"), or None when it says something of its own.

        - option: shaped as an answer option ("A. ..."), or an option's text alone, or a quoted option
          among verdict words only ('"The auditory tube" is incorrect.');
        - question: the line is part of a question shown, or holds a whole one;
        - prompt: it copies a run of ``FRAME_NGRAM`` words from the frames (the prompt's instructions).
        """
        key = option_key(line)
        if not key:
            return None
        if OPTION_LINE.match(line) or key in self.option_texts:
            return "option"
        for quoted in _QUOTED.findall(line):
            if option_key(quoted) in self.option_texts and set(_words(line.replace(quoted, " "))) <= VERDICT_WORDS:
                return "option"
        if any((len(key.split()) >= 3 and key in q) or q in key for q in self.questions):
            return "question"
        if self.frame_grams and _ngrams(_words(line), FRAME_NGRAM) & self.frame_grams:
            return "prompt"
        return None
