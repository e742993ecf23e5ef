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
        self._at: dict[Key, float] = {}  # when each value was read (not kept while _whole_at is set)
        self._values: dict[Key, Counts | None] = {}
        # Set while every value was read at one time for these keys (then no age per key).
        self._whole_keys: tuple[Key, ...] = ()
        self._whole_at: float | None = None
        self.reads = 0  # threads read from the kernel (for tests and the benchmark)

    def get(self, keys: Iterable[Key]) -> dict[Key, Counts | None]:
        """Counters of every key — ``(run_time_ns, run_delay_ns,
        nonvoluntary_ctxt_switches)``, :class:`ThreadCounters` or a plain
        tuple — read from the kernel when missing or older than ``ttl_s``.
        Keys not asked for are dropped (threads that left).  The answer is
        the cache's own dict: read it, do not change it."""
        now = self._clock()
        with self._lock:
            keys = keys if isinstance(keys, tuple) else tuple(keys)
            if self._whole_at is not None and keys == self._whole_keys:
                # The usual scrape: the same threads as the last one, all
                # read at one time — fresh or all due, no age per key.
                if now - self._whole_at < self.ttl_s:
                    return self._values
                return self._read_whole(keys, now)
            if self._whole_at is not None:
                self._at = dict.fromkeys(self._whole_keys, self._whole_at)
            at, values, ttl = self._at, self._values, self.ttl_s
            stale = [k for k in keys if now - at.get(k, -math.inf) >= ttl]
            if len(stale) == len(keys):
                return self._read_whole(keys, now)
            got = self._read(stale) if stale else {}
            self.reads += len(stale)
            fresh = {k: got[k] if k in got else values[k] for k in keys}
            self._keep(fresh)
            self._values, self._at = fresh, {k: now if k in got else at[k] for k in keys}
            self._whole_at = None
        return fresh

    def _read_whole(self, keys: tuple[Key, ...], now: float) -> dict[Key, Counts | None]:
        """Every key read now (the caller holds the lock)."""
        got = self._read(list(keys))
        self.reads += len(keys)
        if keys != self._whole_keys or self._whole_at is None:
            self._keep(got)
        self._values, self._whole_keys, self._whole_at = got, keys, now
        return got

    def _keep(self, fresh: dict[Key, Counts | None]) -> None:
        if self._kernel_reader is not None and fresh.keys() != self._values.keys():
            self._kernel_reader.keep(set(fresh))

    def _read(self, keys: list[Key]) -> dict[Key, Counts | None]:
        if self._kernel_reader is not None:
            return self._kernel_reader.read_many(keys)
        return {key: self._reader(*key) for key in keys}

    def close(self) -> None:
        """Close the reader's kept descriptors (the endpoint stops)."""
        with self._lock:
            self._values, self._at, self._whole_at = {}, {}, None
            if self._kernel_reader is not None:
                self._kernel_reader.close()
