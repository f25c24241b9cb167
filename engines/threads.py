"""How many CPU threads torch should use right now, re-decided while a model runs.

Why: on a small machine, torch's OpenMP threads spin-wait at every barrier. With 2 threads on 2 cores a
batch-16 SmolLM2 generate runs at ~114 tok/s when idle, but as soon as another process takes a core
the spinning threads wait for a descheduled partner and throughput collapses to 7–12 tok/s, where 1
thread keeps ~60. ``OMP_WAIT_POLICY=passive`` would avoid the spinning, but libgomp reads it once when
torch is imported, so an engine cannot set it. What an engine can do is choose the thread count:

    threads = usable cores - cores other processes are using (at least 1)

"Other processes" is measured without sleeping: CPU time of the whole machine (``/proc/stat``) minus
the CPU time of this process (``/proc/self/stat``, all its threads) over the last interval. The decision
is re-taken every ``interval_s`` during generation (from a logits processor, i.e. once per decoding
step at most), so a busy neighbour that starts mid-call costs well under a second of collapse.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup v2 CPU quota if there is one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _machine_busy_ticks() -> int | None:
    """Busy clock ticks of all CPUs since boot (everything but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return sum(fields[:8]) - fields[3] - fields[4]


def _own_ticks() -> int | None:
    """User + system clock ticks of this process, all threads."""
    try:
        with open("/proc/self/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(rest[11]) + int(rest[12])  # fields 14 (utime) and 15 (stime)


@dataclass
class _Sample:
    wall: float
    machine: int
    own: int


@dataclass
class ThreadGovernor:
    """Sets ``torch.set_num_threads`` for a model call and keeps it right while the call runs.

    ``threads``: a fixed count, or ``"auto"`` (also 0) for "the cores other processes leave free".
    ``threshold``: the share of a core a neighbour may use before we give that core up. It is low
    because spin-waiting makes even a partly busy core expensive to share, and because a neighbour
    competing with our spinning threads shows up smaller than it is (one busy thread beside our two
    gets 2/3 of a core).
    """

    threads: int | str = "auto"
    interval_s: float = 0.5
    threshold: float = 0.3
    cores: int = field(default_factory=usable_cores)
    ticks_per_s: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))
    applied: list[int] = field(default_factory=list, init=False)  # thread counts set during the last call, in order
    _last: _Sample | None = field(default=None, init=False, repr=False)
    _saved: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.threads == 0:
            self.threads = "auto"
        if self.threads != "auto" and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be 'auto', 0 (auto) or a positive integer, got {self.threads!r}")
        if self.interval_s <= 0 or not 0 <= self.threshold < 1 or self.cores < 1 or self.ticks_per_s < 1:
            raise ValueError("interval_s must be > 0, threshold in [0, 1), cores and ticks_per_s >= 1")

    @property
    def auto(self) -> bool:
        return self.threads == "auto"

    def _sample(self) -> _Sample | None:
        machine, own = _machine_busy_ticks(), _own_ticks()
        if machine is None or own is None:
            return None
        return _Sample(time.monotonic(), machine, own)

    def others_busy(self, a: _Sample, b: _Sample) -> float:
        """Cores used by other processes between two samples."""
        wall_ticks = max((b.wall - a.wall) * self.ticks_per_s, 1e-9)
        return max(0.0, ((b.machine - a.machine) - (b.own - a.own)) / wall_ticks)

    def choose(self, others: float) -> int:
        """Threads to use when other processes keep ``others`` cores busy."""
        taken = math.ceil(others - self.threshold) if others > self.threshold else 0
        return max(1, self.cores - taken)

    def _apply(self, n: int) -> None:
        import torch

        if not self.applied or self.applied[-1] != n:
            self.applied.append(n)
        if torch.get_num_threads() != n:
            logger.debug("torch threads %d -> %d", torch.get_num_threads(), n)
            torch.set_num_threads(n)

    def start(self, probe_s: float = 0.05) -> int:
        """Set the thread count before a call (a short probe of the machine when auto); returns it."""
        import torch

        self._saved = torch.get_num_threads()
        self.applied = []
        if not self.auto:
            self._apply(int(self.threads))
            return int(self.threads)
        a = self._sample()
        if a is None:  # no /proc: keep torch's own choice
            return self._saved
        time.sleep(probe_s)  # this process is idle here, so everything measured is someone else
        b = self._sample()
        n = self.choose(self.others_busy(a, b)) if b is not None else self._saved
        self._apply(n)
        self._last = b
        return n

    def step(self) -> None:
        """Cheap; call often (every decoding step). Re-decides at most every ``interval_s``."""
        if not self.auto or self._last is None or time.monotonic() - self._last.wall < self.interval_s:
            return
        now = self._sample()
        if now is None:
            return
        self._apply(self.choose(self.others_busy(self._last, now)))
        self._last = now

    def finish(self) -> None:
        """Restore the caller's thread count (training in the same process keeps its own setting)."""
        if self._saved is not None:
            import torch

            torch.set_num_threads(self._saved)
            self._saved = None
        self._last = None
