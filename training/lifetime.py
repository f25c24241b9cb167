"""Processes that die with their parent: a launched training must not outlive the loop that started it.

Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere these do nothing and a killed caller may leave its
launched processes running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

# The caller's pid, in the launched processes' environment: the launcher and training.distill's CLI
# then ask the kernel for SIGTERM when their parent dies (the accelerate launcher starts the workers
# in sessions of their own, so a signal to its process group would not reach them).
DIE_WITH_PARENT_ENV = "ATKD_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux; elsewhere nothing).
    ``parent``: the pid the parent must have; if it died before the request, exit now."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the launched training may outlive a killed caller
        logger.debug("prctl(PR_SET_PDEATHSIG) is not available")
    if parent is not None and os.getppid() != parent:
        os._exit(128 + int(sig))
