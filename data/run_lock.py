"""One process per run directory: an OS lock on ``<run-dir>/.lock`` that names its holder.

The lock is ``fcntl.flock`` on the file, so the kernel drops it when the holder dies, however it dies
(SIGKILL included): no clean-up is ever needed. The file's text (pid, host, start time) is only for
the message a second process prints, and for the warning when a dead holder's record is taken over.
The file is never deleted (unlinking a locked file lets a third process lock a fresh inode beside the
second); a holder that stops cleanly empties it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLockError(RuntimeError):
    """The run directory cannot be held: another process holds it, or the filesystem cannot lock."""


class RunLockedError(RunLockError):
    """Another live process holds the run directory."""


def _describe(holder: dict) -> str:
    since = holder.get("started", "")
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" + (f" (since {since})" if since else "")


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 1 << 16):
        raw += chunk
    try:
        holder = json.loads(raw.decode()) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"pid": "?", "host": "?", "note": "unreadable lock record"}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory (which must exist) for this process.

    A second process (or a second lock in this one) raises :class:`RunLockedError` naming the holder,
    without writing anything. A record left by a holder that died is taken over with a warning.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None
        self.previous: dict = {}  # a dead holder's record that this lock took over (empty: none)

    def acquire(self) -> Self:
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockError(f"cannot lock {self.path}: {e.strerror}; this filesystem does not support flock "
                                   "(Lustre: mount with -o flock), so put the run directory on one that does") from None
            raise RunLockedError(
                f"{self.root} is in use by {_describe(holder)}; wait for it to finish or stop it, "
                f"then continue with --resume"
            ) from None
        self.previous = _read(fd)
        if self.previous:
            logger.warning("%s: taking over the lock of %s, which is no longer running", self.root, _describe(self.previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the record and drop the lock (a killed process skips this; the kernel drops the lock)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
