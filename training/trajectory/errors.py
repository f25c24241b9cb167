"""Errors of dataset distillation; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class TrajectorySetupError(ValueError):
    """An option, model spec or file set that cannot work as asked; the message says what to change."""


class TrajectoryDataError(ValueError):
    """Bad input data; the message starts with ``file:line:``."""


class DistillationStopped(RuntimeError):
    """A guard stopped the distillation (non-finite loss or gradient, divergence, learning rate at its
    bound). The synthetic set of the last good iteration is kept; the message says what to change."""
