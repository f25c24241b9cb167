"""The one error type of a KV set-up that cannot work (the CLI turns it into a one-line message, exit 2)."""

from __future__ import annotations


class KVSetupError(ValueError):
    """KV teachers, layer maps, adapters or phases that cannot be used as asked; the message says what to change."""
