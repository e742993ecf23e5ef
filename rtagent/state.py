"""The daemon's state store: what it knows about each guest and about itself.

One writer (the daemon loop) and several readers (the status socket, the
Prometheus collector) on other threads: every access goes through one lock,
and readers get copies (:meth:`StateStore.snapshot`, :meth:`StateStore.read`)
so they never see a guest half-updated.  A reader holds the lock only for a
cheap copy (references to the reports, which are replaced and never changed
once stored, and copies of the counters); turning it into JSON or metric
families happens after the lock is released, so the writer never waits for
a reader's conversion.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from .tuning.guest.report import DomainReport

# Seconds.  Corrections and reactions on this host range from milliseconds
# (proc connector) to a resync interval or two.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """Cumulative histogram in Prometheus' shape (upper bounds, +Inf last)."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out


@dataclass
class VcpuCounters:
    """Per realtime vCPU evidence, from schedstat and status."""

    run_delay_ns: int = 0
    run_time_ns: int = 0
    nonvoluntary_ctxt_switches: int = 0
    # Rate of run-queue delay over the last two observations (ns per second).
    run_delay_rate: float = 0.0
    observed_at: float = 0.0


@dataclass
class GuestState:
    uuid: str
    name: str
    report: DomainReport | None = None
    first_seen: float = field(default_factory=time.time)
    started_event_at: float | None = None  # monotonic time of the STARTED event
    tuned_at: float | None = None  # wall time when realtime vCPUs were first all tuned
    event_to_tuned_s: float | None = None
    corrections: Counter = field(default_factory=Counter)  # kind -> count
    correction_failures: Counter = field(default_factory=Counter)
    # Changes that applied a changed intent (metadata edit, reload): not drift.
    intent_changes: Counter = field(default_factory=Counter)
    last_correction_at: float | None = None
    vcpus: dict[int, VcpuCounters] = field(default_factory=dict)
    correction_latency: Histogram = field(default_factory=Histogram)
    # The start window of this QEMU process's start, per realtime vCPU
    # (daemon/startwindow.py VcpuStart): what it ran before it was realtime.
    start_window: dict[int, Any] = field(default_factory=dict)

    def copy(self) -> GuestState:
        """What :meth:`to_json` reads, copied under the store's lock: the
        report by reference (replaced, never changed, once stored), the
        counters and per-vCPU dicts by value (the writer changes them in
        place)."""
        c = copy.copy(self)
        c.corrections, c.correction_failures = Counter(self.corrections), Counter(self.correction_failures)
        c.intent_changes, c.vcpus = Counter(self.intent_changes), dict(self.vcpus)
        c.start_window = dict(self.start_window)
        c.correction_latency = replace(self.correction_latency, counts=list(self.correction_latency.counts))
        return c

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = self.report.to_json() if self.report is not None else {
            "name": self.name, "uuid": self.uuid, "realtime": None, "valid": None, "compliant": None,
            "violations": [], "threads": []}
        out.pop("changes", None)
        out["drift_corrections"] = dict(self.corrections)
        out["drift_corrections_total"] = sum(self.corrections.values())
        out["correction_failures"] = dict(self.correction_failures)
        out["intent_changes"] = dict(self.intent_changes)
        out["last_correction_at"] = self.last_correction_at
        out["tuned_at"] = self.tuned_at
        out["event_to_tuned_s"] = self.event_to_tuned_s
        out["vcpu_stats"] = {
            str(i): {"run_delay_ns": c.run_delay_ns, "run_delay_rate_ns_per_s": round(c.run_delay_rate, 1),
                     "run_time_ns": c.run_time_ns, "nonvoluntary_ctxt_switches": c.nonvoluntary_ctxt_switches,
                     # Wall time of the full observation these come from (up to a full check old).
                     "observed_at": c.observed_at}
            for i, c in sorted(self.vcpus.items())
        }
        out["start_window"] = {str(v): e.to_json() for v, e in sorted(self.start_window.items())}
        return out


@dataclass
class DaemonState:
    started_at: float = field(default_factory=time.time)
    libvirt_connected: bool = False
    libvirt_uri: str = ""
    reconnects: int = 0
    last_reconnect_s: float | None = None
    # Wall time since when a libvirt call has not returned (libvirtd hung);
    # None while libvirt answers.
    libvirt_unresponsive_since: float | None = None
    proc_connector: bool = False
    start_watch: bool = False  # libvirt's cgroup creation is watched (daemon/startwatch.py)
    # The drift watch (daemon/driftwatch.py): {"state", "reason", "interval_s"};
    # its events and lost events are counted in events/events_dropped["drift_watch"].
    drift_watch: dict[str, Any] = field(default_factory=lambda: {"state": "off", "reason": "", "interval_s": None})
    events: Counter = field(default_factory=Counter)  # source -> count ("libvirt", "proc")
    events_dropped: Counter = field(default_factory=Counter)
    resyncs: int = 0
    full_checks: int = 0  # resyncs that re-listed guests and re-read them in full
    last_resync_at: float | None = None
    host: dict[str, Any] = field(default_factory=dict)  # partition summary, enforcement counts
    host_checks: tuple[Any, ...] = ()  # monitor.hostchecks.HostCheck results, typed
    host_corrections: Counter = field(default_factory=Counter)  # kind -> count
    host_refused: Counter = field(default_factory=Counter)  # "irq" | "kthread" -> count refusing to move
    reconcile_duration: Histogram = field(default_factory=Histogram)
    event_to_tuned: Histogram = field(default_factory=Histogram)

    def copy(self) -> DaemonState:
        """What :meth:`to_json` and the status answer read, copied under the
        store's lock (counters by value, the host summary deep: it is small)."""
        c = copy.copy(self)
        c.events, c.events_dropped = Counter(self.events), Counter(self.events_dropped)
        c.host_corrections, c.host_refused = Counter(self.host_corrections), Counter(self.host_refused)
        c.host = copy.deepcopy(self.host)
        c.drift_watch = dict(self.drift_watch)
        return c

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "libvirt": {"uri": self.libvirt_uri, "connected": self.libvirt_connected,
                        "reconnects": self.reconnects, "last_reconnect_s": self.last_reconnect_s,
                        "responsive": self.libvirt_unresponsive_since is None,
                        "unresponsive_for_s": None if self.libvirt_unresponsive_since is None
                        else round(time.time() - self.libvirt_unresponsive_since, 1)},
            "proc_connector": self.proc_connector,
            "start_watch": self.start_watch,
            "drift_watch": {**self.drift_watch, "events": self.events.get("drift_watch", 0),
                            "lost": self.events_dropped.get("drift_watch", 0)},
            "events": dict(self.events),
            "events_dropped": dict(self.events_dropped),
            "resyncs": self.resyncs,
            "full_checks": self.full_checks,
            "last_resync_at": self.last_resync_at,
            "host_corrections": dict(self.host_corrections),
            "host_refused": dict(self.host_refused),
        }


class StateStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.daemon = DaemonState()
        self.guests: dict[str, GuestState] = {}

    def update(self, fn: Callable[[StateStore], Any]) -> Any:
        """Run ``fn(store)`` under the lock (the writer's entry point)."""
        with self._lock:
            return fn(self)

    def read(self, fn: Callable[[StateStore], Any]) -> Any:
        """Run a reader under the lock; ``fn`` must copy what it keeps."""
        with self._lock:
            return fn(self)

    def guest(self, uuid: str, name: str) -> GuestState:
        """Get or create (caller holds the lock via :meth:`update`)."""
        g = self.guests.get(uuid)
        if g is None:
            g = self.guests[uuid] = GuestState(uuid=uuid, name=name)
        return g

    def drop(self, uuid: str) -> None:
        with self._lock:
            self.guests.pop(uuid, None)

    def take(self, around_lock: Callable[[], AbstractContextManager] = contextlib.nullcontext
             ) -> tuple[list[GuestState], DaemonState]:
        """The copies a status answer is made of, taken under the lock
        (entered inside ``around_lock()``: the status thread takes the loop's
        priority for it), guests sorted by name."""
        with around_lock(), self._lock:
            taken = [g.copy() for g in self.guests.values()]
            d = self.daemon.copy()
        taken.sort(key=lambda g: g.name)
        return taken, d

    def snapshot(self, around_lock: Callable[[], AbstractContextManager] = contextlib.nullcontext) -> dict[str, Any]:
        """Everything, JSON-ready: the status answer as one document (the
        daemon's socket sends the same bytes, encoded one guest at a time:
        rtagent/statusjson.py).  Only the copy is taken under the lock;
        every guest's conversion runs after the lock is released."""
        taken, d = self.take(around_lock)
        guests = [g.to_json() for g in taken]
        host = host_json(d)
        compliant = all(g.get("compliant") is not False for g in guests) and host_compliant(host)
        return {"host": host, "daemon": d.to_json(), "domains": guests, "compliant": compliant}


def host_json(d: DaemonState) -> dict[str, Any]:
    """The answer's ``host`` section from a copy (:meth:`DaemonState.copy`:
    its ``host`` is the copy's own, so adding the checks changes nothing
    stored)."""
    host = d.host
    if d.host_checks:  # a tuple of frozen HostCheck results
        host["checks"] = [c.to_json() for c in d.host_checks]
    return host


def host_compliant(host: dict[str, Any]) -> bool:
    """No host check failed with severity ``error``."""
    return not any(not c["ok"] and c.get("severity") == "error" for c in host.get("checks", []))
