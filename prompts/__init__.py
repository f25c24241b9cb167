"""Prompt templates (one ``.j2`` file per prompt in this folder) and the one function that renders them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

PROMPT_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    # StrictUndefined: a template variable the caller forgot is an error, not an empty string.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PROMPT_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(name: str, **variables: Any) -> str:
    """Render ``prompts/<name>.j2`` with ``variables``; surrounding whitespace is stripped."""
    try:
        template = _env().get_template(f"{name}.j2")
    except jinja2.TemplateNotFound:
        available = sorted(p.stem for p in PROMPT_DIR.glob("*.j2"))
        raise ValueError(f"no prompt named {name!r} in {PROMPT_DIR}; available: {available}") from None
    return template.render(**variables).strip()


__all__ = ["render", "PROMPT_DIR"]
