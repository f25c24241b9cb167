"""The one MCQ format shared by evaluation, the blind solver, training data and teacher logits.

The student is trained on exactly the text it is evaluated with, so this lives in one place.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from prompts import render

# The assistant turn starts with this prefix; the next token is the answer letter. Scoring reads the
# letter's log-prob right here, and training completions start with it.
ANSWER_PREFIX = "The answer is"


def mcq_user_text(question: str, options: Mapping[str, str]) -> str:
    return render("answer_mcq", question=question, options=dict(options))


def mcq_messages(
    question: str,
    options: Mapping[str, str],
    shots: Sequence[tuple[str, Mapping[str, str], str]] = (),
    with_prefix: bool = True,
) -> list[dict[str, str]]:
    """Chat messages that ask one MCQ; ``shots`` are solved examples (question, options, letter).

    With ``with_prefix`` the last message is an assistant prefix (``The answer is``) that engines
    continue, so the next token is the answer letter.
    """
    messages: list[dict[str, str]] = []
    for q, opts, letter in shots:
        messages.append({"role": "user", "content": mcq_user_text(q, opts)})
        messages.append({"role": "assistant", "content": answer_text(letter)})
    messages.append({"role": "user", "content": mcq_user_text(question, options)})
    if with_prefix:
        messages.append({"role": "assistant", "content": ANSWER_PREFIX})
    return messages


def answer_text(letter: str, explanation: str = "") -> str:
    """The assistant's full answer: ``The answer is C.`` plus an optional explanation."""
    text = f"{ANSWER_PREFIX} {letter}."
    explanation = explanation.strip()
    return f"{text} {explanation}" if explanation else text
