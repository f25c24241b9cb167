"""Errors of the encoder-distillation set-up; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class EmbeddingSetupError(ValueError):
    """A teacher, student shape, stage list or option that cannot work as asked; the message says what to change."""


class EmbeddingDataError(ValueError):
    """Bad input data; the message starts with ``file:line:``."""
