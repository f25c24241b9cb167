"""Word-level text normalisation shared by the ability tree (name checks) and the synthesis (dedup).

Unicode NFKC, lower case, and every run of characters that are not letters or digits becomes one
space, so punctuation, case and spacing never make two texts look different.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^\w]+|_+")


def normalize_text(text: str) -> str:
    """NFKC, lower case, non-alphanumeric runs to one space, stripped."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def word_tokens(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return normalize_text(text).split()


__all__ = ["normalize_text", "word_tokens"]
