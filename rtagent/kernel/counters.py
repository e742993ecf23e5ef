"""Per-thread scheduler counters, read when they are exported.

``schedstat`` (time on CPU, time runnable but waiting — the run-queue delay —
and timeslices) and the involuntary context switches from ``status``.  These
are the evidence a scrape exports, not something to enforce, so they are
read at scrape time (cached by :mod:`rtagent.monitor.counters`), never on
every resync.  ``os.open``/``os.read`` instead of ``open()``: measured, the
``io`` wrapper costs ~25 µs a file here, more than the kernel's own work.
The involuntary switches may lag by up to ~45 s for a thread that keeps
running (see :class:`CounterReader`); run delay and CPU time never lag.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["ThreadCounters", "CounterReader"]

_NVCSW = b"nonvoluntary_ctxt_switches:"


@dataclass(frozen=True)
class ThreadCounters:
    run_time_ns: int | None  # schedstat field 1
    run_delay_ns: int | None  # schedstat field 2 (None: kernel without CONFIG_SCHED_INFO)
    nonvoluntary_ctxt_switches: int


def _read(path: str, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


# A thread that keeps running re-reads status for its involuntary switches
# at most this often (spread out per thread): status costs ~15 µs of kernel
# formatting a thread, more than everything else a scrape does for it.
NVCSW_MAX_AGE_S = 30.0


class CounterReader:
    """Reads ``schedstat`` (~7 µs) on every call and ``status`` (~15 µs) only
    when its value can have moved and is old: a thread whose time on CPU did
    not grow cannot have been preempted, so its involuntary-switch count is
    the one read last time; one that ran re-reads it once its value is
    older than about :data:`NVCSW_MAX_AGE_S` (each thread on its own phase, so
    the reads spread over scrapes).  ``assume_ran`` (benchmarks) treats every
    thread as having run."""

    def __init__(self, kernel: Kernel, *, clock=time.monotonic, assume_ran: bool = False,
                 nvcsw_max_age_s: float = NVCSW_MAX_AGE_S):
        self._kernel = kernel
        self._clock = clock
        self._assume_ran = assume_ran
        self._max_age = nvcsw_max_age_s
        self._last: dict[tuple[int, int], tuple[ThreadCounters, float]] = {}  # key -> (counters, status due)
        self.status_reads = 0

    def read(self, pid: int, tid: int) -> ThreadCounters | None:
        """The counters of task ``tid`` of ``pid``; None when it is gone."""
        base = self._kernel.proc_path(str(pid), "task", str(tid))
        key = (pid, tid)
        try:
            sched = _read(base + "/schedstat", 256).split()
        except FileNotFoundError:
            sched = []  # no CONFIG_SCHED_INFO (or gone: status says)
        except OSError:
            self._last.pop(key, None)
            return None
        run_time, run_delay = (int(sched[0]), int(sched[1])) if len(sched) >= 2 else (None, None)
        now = self._clock()
        hit = self._last.get(key)
        if hit is not None and run_time is not None:
            last, due = hit
            ran = self._assume_ran or last.run_time_ns != run_time
            if not ran or now < due:
                out = ThreadCounters(run_time, run_delay, last.nonvoluntary_ctxt_switches)
                self._last[key] = (out, due)
                return out
        try:
            status = _read(base + "/status", 8192)
        except OSError:
            self._last.pop(key, None)
            return None
        self.status_reads += 1
        i = status.rfind(_NVCSW)
        nvcsw = int(status[i + len(_NVCSW):].split(None, 1)[0]) if i >= 0 else 0
        out = ThreadCounters(run_time, run_delay, nvcsw)
        self._last[key] = (out, now + self._max_age * random.uniform(0.5, 1.5))
        return out

    def keep(self, keys: set[tuple[int, int]]) -> None:
        """Forget threads no longer asked about (they left the exports)."""
        for key in [k for k in self._last if k not in keys]:
            del self._last[key]
