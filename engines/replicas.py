"""Which replica of a model server gets the next request: round-robin over those that answer.

A replica that fails to answer (connection refused or reset, a timeout, a cut-off reply) leaves the
rotation for a cool-down that doubles with each failure in a row (``cooldown_s``, 2×, 4×, … up to
``max_cooldown_s``), and comes back on its first answer after it. Requests never wait for a replica that
is out while another one is in; when all are out, ``pick`` returns None and ``wait_s`` says how long
until the first comes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Replica:
    url: str
    failures: int = 0  # failures in a row
    out_until: float = 0.0
    reason: str = ""


@dataclass
class ReplicaPool:
    urls: list[str]
    cooldown_s: float = 2.0
    max_cooldown_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _replicas: list[_Replica] = field(init=False)
    _next: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("a replica pool needs at least one URL")
        self._replicas = [_Replica(u) for u in self.urls]

    def pick(self) -> str | None:
        """The next replica in rotation, or None when every one is out."""
        with self._lock:
            now = self.clock()
            for _ in range(len(self._replicas)):
                replica = self._replicas[self._next]
                self._next = (self._next + 1) % len(self._replicas)
                if replica.out_until <= now:
                    return replica.url
            return None

    def wait_s(self) -> float:
        """Seconds until the first replica that is out comes back (0 if one is in)."""
        with self._lock:
            return max(0.0, min(r.out_until for r in self._replicas) - self.clock())

    def failed(self, url: str, reason: str) -> float:
        """``url`` did not answer: out of rotation; returns the cool-down. Requests that were in flight
        to it when it went out fail too, and do not lengthen the cool-down again."""
        with self._lock:
            replica = next(r for r in self._replicas if r.url == url)
            now = self.clock()
            replica.reason = reason
            if replica.out_until > now:
                return replica.out_until - now
            replica.failures += 1
            cooldown = min(self.cooldown_s * 2 ** (replica.failures - 1), self.max_cooldown_s)
            replica.out_until = now + cooldown
            return cooldown

    def answered(self, url: str) -> None:
        with self._lock:
            replica = next(r for r in self._replicas if r.url == url)
            replica.failures, replica.out_until, replica.reason = 0, 0.0, ""

    def describe(self) -> str:
        """Each replica that is out, with why (for the error when none is left)."""
        with self._lock:
            return "; ".join(f"{r.url}: {r.reason or 'no answer'}" for r in self._replicas if r.failures)
