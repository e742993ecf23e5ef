"""Scrape-time per-thread counters, cached for a scrape interval.

The resync no longer reads ``schedstat``/``status`` (it asks only what can
drift); the collector asks this cache for the realtime vCPU threads it is
about to export.  Values younger than ``ttl_s`` are reused, so several
scrapers (an HA pair of Prometheus servers, ``rtagent status`` users) cost
one read per interval.  The cache has its own lock and never takes the
state store's: a scrape never blocks enforcement.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from ..kernel.counters import CounterReader, ThreadCounters
from ..kernel.root import Kernel

__all__ = ["CounterCache", "DEFAULT_TTL_S"]

# Prometheus' default scrape interval is 15 s; half of it keeps a 15 s
# scraper's values fresh while two scrapers in one interval share a read.
DEFAULT_TTL_S = 7.5

Key = tuple[int, int]  # (pid, tid)
Counts = tuple[int | None, int | None, int]  # ThreadCounters' fields


class CounterCache:
    """``reader``: a :class:`CounterReader` (read in one batch per scrape), or
    any ``(pid, tid) -> ThreadCounters | None`` (tests, the benchmark)."""

    def __init__(self, reader: Callable[[int, int], ThreadCounters | None] | CounterReader | None = None, *,
                 ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic, max_fds: int = 0):
        if reader is None:
            reader = CounterReader(Kernel(), max_fds=max_fds)
        self._kernel_reader = reader if isinstance(reader, CounterReader) else None
        self._reader = reader.read if isinstance(reader, CounterReader) else reader
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._at: dict[Key, float] = {}  # when each value was read
        self._values: dict[Key, Counts | None] = {}
        self.reads = 0  # threads read from the kernel (for tests and the benchmark)

    def get(self, keys: Iterable[Key]) -> dict[Key, Counts | None]:
        """Counters of every key — ``(run_time_ns, run_delay_ns,
        nonvoluntary_ctxt_switches)``, :class:`ThreadCounters` or a plain
        tuple — read from the kernel when missing or older than ``ttl_s``.
        Keys not asked for are dropped (threads that left)."""
        now = self._clock()
        with self._lock:
            keys = list(keys)
            at, values, ttl = self._at, self._values, self.ttl_s
            stale = [k for k in keys if now - at.get(k, -math.inf) >= ttl]
            got = self._read(stale) if stale else {}
            self.reads += len(stale)
            if len(stale) == len(keys):  # the usual scrape: the whole interval's values are due
                fresh, fresh_at = got, dict.fromkeys(keys, now)
            else:
                fresh = {k: got[k] if k in got else values[k] for k in keys}
                fresh_at = {k: now if k in got else at[k] for k in keys}
            if self._kernel_reader is not None and fresh.keys() != values.keys():
                self._kernel_reader.keep(set(fresh))
            self._values, self._at = fresh, fresh_at
        return fresh

    def _read(self, keys: list[Key]) -> dict[Key, Counts | None]:
        if self._kernel_reader is not None:
            return self._kernel_reader.read_many(keys)
        return {key: self._reader(*key) for key in keys}

    def close(self) -> None:
        """Close the reader's kept descriptors (the endpoint stops)."""
        with self._lock:
            self._values, self._at = {}, {}
            if self._kernel_reader is not None:
                self._kernel_reader.close()
