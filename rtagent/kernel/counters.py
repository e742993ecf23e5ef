"""Per-thread scheduler counters, read when they are exported.

Time on CPU, time runnable but waiting (the run-queue delay) and involuntary
context switches of the realtime vCPU threads: the evidence a scrape
exports, not something to enforce, so they are read at scrape time (cached
by :mod:`rtagent.monitor.counters`), never on every resync.

On the live kernel they come from taskstats (:mod:`rtagent.kernel.taskstats`:
all three exact, one netlink answer a thread, no descriptor per thread).
Where taskstats is unavailable (no ``CAP_NET_ADMIN``, a kernel without it, a
fixture tree) they come from ``/proc``: ``schedstat`` (fields 1 and 2) and
``status`` (``nonvoluntary_ctxt_switches``).  Measured there (1,000
threads, quiet machine): ``open``+``read``+``close`` of ``schedstat`` costs
~2.8 µs a thread, ``pread`` on a descriptor kept open ~0.8 µs; ``status``
~6.7 µs by path, ~4.1 µs by ``pread``.  So each exported thread's
``schedstat`` and ``status`` descriptors are kept open, within a budget the
endpoints account for (:mod:`rtagent.monitor.fdlimit`); files beyond it are
read by path.  A kept descriptor names the thread, not the number: once the
thread exits it reads ``ESRCH``, even if the TID is reused.  ``status`` is
read only when its value can have moved (see :class:`CounterReader`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from .taskstats import Taskstats, TaskstatsUnavailable

if TYPE_CHECKING:
    from .root import Kernel

log = logging.getLogger(__name__)

__all__ = ["ThreadCounters", "CounterReader", "NVCSW_MAX_AGE_S"]

_NVCSW = b"nonvoluntary_ctxt_switches:"
_RDONLY = os.O_RDONLY | os.O_CLOEXEC
_FILES = ("schedstat", "status")


class ThreadCounters(NamedTuple):
    run_time_ns: int | None  # schedstat field 1
    run_delay_ns: int | None  # schedstat field 2 (None: kernel without CONFIG_SCHED_INFO)
    nonvoluntary_ctxt_switches: int


def _read(path: str, size: int) -> bytes:
    fd = os.open(path, _RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


# A thread whose run-queue delay keeps growing re-reads status for its
# involuntary switches at most this often (spread out per thread).
NVCSW_MAX_AGE_S = 30.0

Key = tuple[int, int]  # (pid, tid)


class CounterReader:
    """Taskstats when it works; else ``schedstat`` on every call and
    ``status`` only when the involuntary-switch count can have moved and the
    value is old:

    A preempted thread stays runnable on a run queue until it runs again, and
    the kernel adds that wait to schedstat's run-queue delay
    (``sched_info_depart`` re-queues a running ``prev``): a thread whose delay
    did not grow was not preempted, so its count is the one read last time
    (exact).  One whose delay grew (it was preempted, or woke from sleep and
    waited to run) re-reads it once its value is older than about
    :data:`NVCSW_MAX_AGE_S`, each thread on its own phase so the reads spread
    over scrapes.  ``max_fds``: descriptors kept open (``schedstat`` and
    ``status`` of each thread, first come first kept)."""

    def __init__(self, kernel: Kernel, *, clock=time.monotonic, max_fds: int = 0,
                 nvcsw_max_age_s: float = NVCSW_MAX_AGE_S, taskstats: bool = True):
        self._kernel = kernel
        # taskstats first (exact, cheapest) on the live kernel; the files are
        # the fallback and what a fixture tree has.
        self._ts: Taskstats | None = None
        self._ts_state = "untried" if taskstats and kernel.live else "off"
        self._clock = clock
        self._max_age = nvcsw_max_age_s
        self.max_fds = max(0, max_fds)
        # Kept descriptors, per file: the scrape's loop does one lookup a thread.
        self._fds: dict[str, dict[Key, int]] = {name: {} for name in _FILES}
        self._last: dict[Key, tuple[int | None, int, float]] = {}  # key -> (run delay, nvcsw, status due)
        self.status_reads = 0

    @property
    def open_fds(self) -> int:
        return sum(len(fds) for fds in self._fds.values())

    def read(self, pid: int, tid: int) -> ThreadCounters | None:
        """The counters of task ``tid`` of ``pid``; None when it is gone."""
        got = self.read_many(((pid, tid),))[(pid, tid)]
        return None if got is None else ThreadCounters(*got)

    @property
    def source(self) -> str:
        """Where the counters come from now: ``taskstats`` or ``proc``."""
        return "taskstats" if self._ts is not None else "proc"

    def read_many(self, keys: Iterable[Key]) -> dict[Key, tuple[int | None, int | None, int] | None]:
        """One pass over ``keys`` (the scrape's threads).  Values are plain
        ``(run_time_ns, run_delay_ns, nonvoluntary_ctxt_switches)`` tuples
        (:class:`ThreadCounters`' fields, equal to one; no object per thread
        and scrape)."""
        keys = list(keys)
        ts = self._taskstats()
        if ts is not None:
            try:
                return ts.read_many(keys)
            except OSError as err:  # reopened at the next scrape; the files answer this one
                log.warning("taskstats read failed (%s): reading /proc for this scrape", err)
                ts.close()
                self._ts, self._ts_state = None, "untried"
        return self._read_files(keys)

    def _taskstats(self) -> Taskstats | None:
        if self._ts_state == "untried":
            try:
                self._ts, self._ts_state = Taskstats.open(), "open"
                self.keep(set())  # the files' descriptors are not needed any more
            except TaskstatsUnavailable as err:
                log.info("%s: vCPU counters are read from /proc (schedstat, status)", err)
                self._ts_state = "off"
        return self._ts

    def _read_files(self, keys: list[Key]) -> dict[Key, tuple[int | None, int | None, int] | None]:
        """``schedstat`` through kept descriptors (the common case inline),
        ``status`` when the count can have moved and is due."""
        now = self._clock()
        out: dict[Key, tuple[int | None, int | None, int] | None] = {}
        kept, last_of, pread = self._fds["schedstat"], self._last, os.pread
        for key in keys:
            fd = kept.get(key)
            try:
                fields = pread(fd, 256, 0).split() if fd is not None else self._schedstat(key)
            except OSError:  # ESRCH: the thread exited (its kept descriptor names it, not the TID)
                fields = None
            if fields is None:
                self._forget(key)
                out[key] = None
                continue
            run_time, run_delay = (int(fields[0]), int(fields[1])) if len(fields) >= 2 else (None, None)
            last = last_of.get(key)
            if last is not None and run_delay is not None and (last[0] == run_delay or now < last[2]):
                # Kept as it was: the delay stays the one the count was read
                # at, so a thread that stops waiting gets its exact count at
                # the next read once the value is due.
                out[key] = (run_time, run_delay, last[1])
                continue
            nvcsw = self._status(key)
            if nvcsw is None:
                self._forget(key)
                out[key] = None
                continue
            last_of[key] = (run_delay, nvcsw, now + self._max_age * random.uniform(0.5, 1.5))
            out[key] = (run_time, run_delay, nvcsw)
        return out

    def _schedstat(self, key: Key) -> list[bytes] | None:
        """schedstat's fields without a kept descriptor (opening one if the
        budget allows); [] without CONFIG_SCHED_INFO; None: gone."""
        try:
            return self._pread(key, "schedstat", 256).split()
        except FileNotFoundError:
            return [] if os.path.isdir(self._task_dir(key)) else None
        except OSError:  # EACCES, ESRCH, …
            return None

    def _status(self, key: Key) -> int | None:
        try:
            status = self._pread(key, "status", 8192)
        except OSError:
            return None
        self.status_reads += 1
        i = status.rfind(_NVCSW)
        return int(status[i + len(_NVCSW):].split(None, 1)[0]) if i >= 0 else 0

    def _task_dir(self, key: Key) -> str:
        return self._kernel.proc_path(str(key[0]), "task", str(key[1]))

    def _pread(self, key: Key, name: str, size: int) -> bytes:
        """``name`` of the thread: through its kept descriptor, or one opened
        and kept while the budget allows, else opened for this read only."""
        fds = self._fds[name]
        fd = fds.get(key)
        if fd is not None:
            return os.pread(fd, size, 0)
        path = f"{self._task_dir(key)}/{name}"
        if self.open_fds >= self.max_fds:
            return _read(path, size)
        fd = fds[key] = os.open(path, _RDONLY)
        return os.pread(fd, size, 0)

    def _forget(self, key: Key) -> None:
        self._last.pop(key, None)
        for fds in self._fds.values():
            fd = fds.pop(key, None)
            if fd is not None:
                os.close(fd)

    def keep(self, keys: set[Key]) -> None:
        """Forget threads no longer asked about (they left the exports), and
        close their descriptors."""
        for key in {k for k in self._last if k not in keys} | {k for fds in self._fds.values() for k in fds
                                                               if k not in keys}:
            self._forget(key)

    def forget_process(self, pid: int) -> None:
        """Forget every thread of process ``pid`` (its guest left), and close
        their descriptors now rather than at the next :meth:`keep`."""
        for key in {k for k in self._last if k[0] == pid} | {k for fds in self._fds.values() for k in fds
                                                              if k[0] == pid}:
            self._forget(key)

    def close(self) -> None:
        for key in {k for fds in self._fds.values() for k in fds}:
            self._forget(key)
        self._last.clear()
        if self._ts is not None:
            self._ts.close()
            self._ts, self._ts_state = None, "untried"
