"""Prometheus metrics: a custom collector over the daemon's state store.

The collector owns no state of its own.  Every scrape takes the store's lock
once, takes references to each guest's (immutable) report and copies its
counters, releases the lock and only then builds metric families — the
daemon loop never waits for an HTTP client.  What a report says (intent,
violations, per-vCPU policy) is derived once per report and reused while the
guest's report does not change (the steady state); the per-vCPU run-queue
delay, CPU time and involuntary switches are read from the kernel at scrape
time (:mod:`rtagent.monitor.counters`, cached for a scrape interval), not by
the resync.  Families are :class:`~rtagent.monitor.exposition.FastMetric`
(prometheus_client ``Metric`` objects rendered by our own writer; why:
docs/metrics.md, "Exposition cost").  A new metric is still one
``_gauge``/``_counter``/``_histogram`` and its ``add_metric`` calls here.  Because each scrape reads only what is in the store *now*,
the series of a guest that stopped (and was dropped from the store) vanish on
the next scrape; there is no registry of children to forget to clean up.

Conventions (prometheus.io, "Writing exporters"): base units (seconds,
bytes), ``_total`` only on counters, guests identified by ``domain`` (the
libvirt name) and vCPUs by ``vcpu`` (the index) — never by thread ID, which
changes whenever QEMU restarts — and guest metadata in
``rtagent_domain_info{domain, uuid, source, flavor}`` (flavor: Nova's
``<nova:flavor name=…>``, empty when the XML has none).  docs/metrics.md lists every
metric.

Per-vCPU series exist for *realtime* vCPUs only (``spec.vcpu(i).realtime``):
the timing evidence (run-queue delay, involuntary switches) means something
only for a thread that should own its core; a housekeeping vCPU shares CPUs
by design and would only add noise to the alerts.  A vCPU that stops being
realtime therefore loses its series, like a stopped guest.  A realtime vCPU
whose thread rtagent cannot tune (outside its vcpuN cgroup) keeps only
``rtagent_vcpu_tuned 0``.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..config import MetricsConfig
from ..errors import RtagentError
from ..state import GuestState, Histogram, StateStore
from ..tuning.guest.report import DomainReport
from .connserver import ConnectionServer, Limits
from .counters import CounterCache
from .exposition import ColumnMetric, FastMetric
from .httpd import RENDER_REUSE_S, MetricsHandler
from .lockprio import at_loop_priority
from .hostchecks import metric_of

__all__ = ["LISTEN_BACKLOG", "RtagentCollector", "MetricsServer", "serve", "SEVERITY_LEVELS"]

NS = "rtagent"

# rtagent_host_check_severity: the severity of a check's current result.
SEVERITY_LEVELS = {"info": 0, "warning": 1, "error": 2}
# Clients beyond metrics.max_connections wait here (kernel memory, not our
# descriptors); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


# ---------------------------------------------------------------------------
# plain copies taken under the store's lock


_BOUNDS: dict[tuple[float, ...], tuple[str, ...]] = {}


def _bounds(buckets: tuple[float, ...]) -> tuple[str, ...]:
    """Bucket bounds as exposition strings, computed once per bucket layout."""
    out = _BOUNDS.get(buckets)
    if out is None:
        out = _BOUNDS[buckets] = tuple(floatToGoString(b) for b in (*buckets, float("inf")))
    return out


@dataclass(frozen=True)
class _Hist:
    buckets: tuple[tuple[str, int], ...]
    total: float

    @classmethod
    def of(cls, h: Histogram) -> _Hist:
        return cls.raw(h.buckets, list(h.counts), h.total)

    @classmethod
    def raw(cls, buckets: tuple[float, ...], counts: list[int], total: float) -> _Hist:
        acc, out = 0, []
        for bound, n in zip(_bounds(buckets), counts, strict=True):
            acc += n
            out.append((bound, acc))
        return cls(tuple(out), float(total))


@dataclass(frozen=True)
class _Vcpu:
    vcpu: int
    policy: str
    priority: int
    tuned: bool
    # False: the intent has this realtime vCPU but the report has no planned
    # thread for it (not yet placed in its vcpuN cgroup, or moved out of it).
    has_thread: bool = True
    pid: int = 0  # whose counters are read at scrape time (never a label)
    tid: int = 0


@dataclass(frozen=True)
class _FromReport:
    """What one report says, derived once per report (reports are replaced,
    never changed, so this is reused for as long as the guest's report stays)."""

    source: str = ""
    flavor: str = ""
    realtime: bool = False
    valid: bool = False
    compliant: bool = False
    violations: tuple[tuple[str, int], ...] = ()
    memory: tuple[int, int, int] | None = None
    vcpus: tuple[_Vcpu, ...] = ()
    # (pCPU, this guest's thread, other guest, its thread) per pCPU conflict.
    conflicts: tuple[tuple[str, str, str, str], ...] = ()


class _GuestRef(NamedTuple):
    """Taken under the store's lock: a reference and flat copies (a tuple:
    the cheapest copy per guest); sorting and deriving happen outside it."""

    name: str
    uuid: str
    report: DomainReport | None
    corrections: dict
    correction_failures: dict
    latency: tuple[tuple[float, ...], list[int], float]
    event_to_tuned_s: float | None
    start_window: tuple[tuple[int, float], ...] = ()  # (vCPU, unprotected seconds) of its start


@dataclass(frozen=True)
class _Guest:
    name: str
    uuid: str
    source: str
    flavor: str
    has_report: bool
    realtime: bool
    valid: bool
    compliant: bool
    violations: tuple[tuple[str, int], ...]
    memory: tuple[int, int, int] | None  # required, locked, hugetlb bytes
    vcpus: tuple[_Vcpu, ...]
    corrections: tuple[tuple[str, int], ...]
    correction_failures: tuple[tuple[str, int], ...]
    correction_latency: _Hist
    event_to_tuned_s: float | None
    conflicts: tuple[tuple[str, str, str, str], ...] = ()
    start_window: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class _HostCheck:
    name: str
    ok: bool
    severity: int
    value: float | None


@dataclass
class _Snapshot:
    libvirt_up: bool = False
    libvirt_unresponsive_since: float | None = None
    reconnects: int = 0
    proc_connector: bool = False
    drift_watch: bool = False
    events: tuple[tuple[str, int], ...] = ()
    events_dropped: tuple[tuple[str, int], ...] = ()
    resyncs: int = 0
    full_checks: int = 0
    last_resync_at: float | None = None
    host_checks: tuple[_HostCheck, ...] = ()
    host_checks_at: float | None = None
    host_corrections: tuple[tuple[str, int], ...] = ()
    host_refused: tuple[tuple[str, int], ...] = ()
    reconcile: _Hist | None = None
    event_to_tuned: _Hist | None = None
    guests: list[_GuestRef] = field(default_factory=list)


def _items(counter: Any) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in dict(counter).items()))


def _from_report(r: DomainReport) -> _FromReport:
    spec = r.spec
    counts: dict[str, int] = {}
    for v in r.violations:
        counts[v.check] = counts.get(v.check, 0) + 1
    memory = None
    if r.observed is not None:
        memory = (int(spec.memory.size_bytes), int(r.observed.memory.vm_lck_bytes),
                  int(r.observed.memory.hugetlb_bytes))
    vcpus: list[_Vcpu] = []
    seen: set[int] = set()
    for tp in r.threads:
        t = tp.thread
        if t.role != "vcpu" or t.vcpu is None or t.vcpu in seen:
            continue
        vs = spec.vcpu(t.vcpu)
        if vs is None or not vs.realtime:
            continue
        seen.add(t.vcpu)
        vcpus.append(_Vcpu(t.vcpu, t.policy, int(t.priority), bool(tp.ok), pid=r.pid or t.tid, tid=t.tid))
    # A realtime vCPU rtagent cannot tune is reported untuned rather than
    # silently losing its series (fleet views count untuned vCPUs).
    for vs in spec.realtime_vcpus if r.observed is not None and spec.valid else ():
        if vs.vcpu not in seen:
            vcpus.append(_Vcpu(vs.vcpu, "", 0, False, has_thread=False))
    return _FromReport(source=spec.source or "", flavor=spec.flavor or "", realtime=bool(spec.realtime),
                       valid=bool(spec.valid), compliant=bool(r.compliant), violations=tuple(sorted(counts.items())),
                       memory=memory, vcpus=tuple(sorted(vcpus, key=lambda v: v.vcpu)),
                       conflicts=tuple(_conflict_labels(r.name, c) for c in r.conflicts))


def _conflict_labels(name: str, c: Any) -> tuple[str, str, str, str]:
    """(pCPU, this guest's thread, the other guest, its thread)."""
    if c.loser == name:
        return str(c.cpu), c.claim.label, c.owner, c.owner_claim.label
    return str(c.cpu), c.owner_claim.label, c.loser, c.claim.label


def _ref(g: GuestState) -> _GuestRef:
    h, sw = g.correction_latency, g.start_window
    # Positional, through tuple's own constructor: this runs per guest under
    # the store's lock (2.5 -> 1.2 µs a guest against the keyword form).
    return _GuestRef._make((g.name, g.uuid, g.report, dict(g.corrections), dict(g.correction_failures),
                            (h.buckets, list(h.counts), h.total), g.event_to_tuned_s,
                            tuple((v, ns / 1e9) for v, e in sorted(sw.items()) if (ns := e.unprotected_ns) is not None)
                            if sw else ()))


def _guest(ref: _GuestRef, derived: _FromReport) -> _Guest:
    return _Guest(
        name=ref.name, uuid=ref.uuid, source=derived.source, flavor=derived.flavor, has_report=ref.report is not None,
        realtime=derived.realtime, valid=derived.valid, compliant=derived.compliant, violations=derived.violations,
        memory=derived.memory, vcpus=derived.vcpus, corrections=_items(ref.corrections),
        correction_failures=_items(ref.correction_failures), correction_latency=_Hist.raw(*ref.latency),
        event_to_tuned_s=ref.event_to_tuned_s, conflicts=derived.conflicts, start_window=ref.start_window,
    )


def _take(store: StateStore) -> _Snapshot:
    """Runs under the store's lock: copy, compute nothing expensive."""
    d = store.daemon
    checks = tuple(_HostCheck(str(c.name), bool(c.ok), SEVERITY_LEVELS.get(str(c.severity), 0),
                              None if c.value is None else float(c.value)) for c in d.host_checks)
    # One set of series per guest name: if the store briefly holds two guests
    # of one name (a transient guest re-created with a new UUID), export the
    # newer one rather than duplicate series.
    by_name: dict[str, GuestState] = {}
    for g in store.guests.values():
        old = by_name.get(g.name)
        if old is None or g.first_seen >= old.first_seen:
            by_name[g.name] = g
    return _Snapshot(
        libvirt_up=bool(d.libvirt_connected), libvirt_unresponsive_since=d.libvirt_unresponsive_since,
        reconnects=int(d.reconnects), proc_connector=bool(d.proc_connector),
        drift_watch=d.drift_watch.get("state") == "running",
        events=_items(d.events), events_dropped=_items(d.events_dropped), resyncs=int(d.resyncs),
        full_checks=int(d.full_checks), last_resync_at=d.last_resync_at, host_checks=checks,
        host_checks_at=d.host.get("checks_at"),
        host_corrections=_items(d.host_corrections), host_refused=_items(d.host_refused),
        reconcile=_Hist.of(d.reconcile_duration), event_to_tuned=_Hist.of(d.event_to_tuned),
        guests=[_ref(g) for _, g in sorted(by_name.items())],
    )


# ---------------------------------------------------------------------------
# the collector


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> FastMetric:
    return FastMetric(f"{NS}_{name}", doc, "gauge", list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> FastMetric:
    return FastMetric(f"{NS}_{name}", doc, "counter", list(labels))


def _histogram(name: str, doc: str, labels: Iterable[str] = ()) -> FastMetric:
    """``add_metric(labels, buckets, sum_value)``, buckets as ``[(le, cumulative), …]``."""
    return FastMetric(f"{NS}_{name}", doc, "histogram", list(labels))


def _guest_families() -> SimpleNamespace:
    """The per-guest families, in exposition order (one place to add one)."""
    d, dv = ["domain"], ["domain", "vcpu"]
    # uuid is Nova's instance UUID for Nova guests; flavor joins fleet
    # queries to flavors ("which flavors lose tuning").
    info = _gauge("domain_info", "Guest metadata; always 1.", ["domain", "uuid", "source", "flavor"])
    realtime = _gauge("domain_realtime", "1 if the guest has realtime intent, else 0.", d)
    valid = _gauge("domain_realtime_intent_valid",
                   "1 if the guest's realtime intent is valid (or it has none), 0 if invalid (nothing applied).", d)
    compliant = _gauge("domain_compliant", "1 if the guest matches its realtime intent (no violations), else 0.", d)
    violations = _gauge("domain_violations", "Current violations of the guest, by check (docs/checks.md); "
                        "a check without a series has none.", ["domain", "check"])
    required = _gauge("domain_memory_required_bytes", "Guest RAM size from the domain XML.", d)
    locked = _gauge("domain_memory_locked_bytes", "VmLck of the guest's QEMU process.", d)
    hugetlb = _gauge("domain_memory_hugetlb_bytes", "HugetlbPages of the guest's QEMU process.", d)
    tuned_s = _gauge("domain_event_to_tuned_seconds",
                     "Time from this guest's STARTED event until its realtime vCPUs were all tuned.", d)
    unprotected = _gauge("vcpu_unprotected_start_seconds",
                         "Time the realtime vCPU thread ran as non-realtime in this guest's start, from libvirt "
                         "placing it in its vcpuN cgroup until SCHED_FIFO/RR landed (docs/metrics.md).", dv)
    corrections = _counter("drift_corrections", "Configuration drift corrected, by kind.", ["domain", "kind"])
    failures = _counter("drift_correction_failures", "Drift corrections that failed, by kind.",
                        ["domain", "kind"])
    latency = _histogram("drift_correction_seconds", "Time from detecting drift to having corrected it "
                         "(realtime guests).", d)
    delay = _counter("vcpu_run_delay_seconds",
                     "Time the realtime vCPU thread was runnable but waiting for a CPU (schedstat field 2).", dv)
    cpu = _counter("vcpu_cpu_seconds", "Time the realtime vCPU thread ran on a CPU (schedstat field 1).", dv)
    nvcsw = _counter("vcpu_involuntary_context_switches",
                     "Involuntary context switches of the realtime vCPU thread (preemptions).", dv)
    policy = _gauge("vcpu_policy_info", "Observed scheduling policy of the realtime vCPU thread; always 1.",
                    ["domain", "vcpu", "policy"])
    prio = _gauge("vcpu_priority", "Observed realtime priority of the vCPU thread (0 if not realtime).", dv)
    tuned = _gauge("vcpu_tuned", "1 if the realtime vCPU thread has its planned policy, priority and pinning.",
                   dv)
    conflict = _gauge("cpu_conflict", "1 per realtime pCPU this guest shares with another guest: "
                      "thread = this guest's, other = the other guest, other_thread = its thread "
                      "(docs/checks.md, cpu_conflict).", ["domain", "cpu", "thread", "other", "other_thread"])
    return SimpleNamespace(info=info, realtime=realtime, valid=valid, compliant=compliant, violations=violations,
                           required=required, locked=locked, hugetlb=hugetlb, tuned_s=tuned_s, unprotected=unprotected,
                           corrections=corrections, failures=failures, latency=latency, delay=delay, cpu=cpu,
                           nvcsw=nvcsw, policy=policy, prio=prio, tuned=tuned, conflict=conflict)


def _add_guest(f: SimpleNamespace, g: _Guest) -> None:
    for c in g.conflicts:
        f.conflict.add_metric([g.name, *c], 1)
    f.info.add_metric([g.name, g.uuid, g.source, g.flavor], 1)
    for kind, n in g.corrections:
        f.corrections.add_metric([g.name, kind], n)
    for kind, n in g.correction_failures:
        f.failures.add_metric([g.name, kind], n)
    if g.realtime:
        f.latency.add_metric([g.name], list(g.correction_latency.buckets), g.correction_latency.total)
    if g.event_to_tuned_s is not None:
        f.tuned_s.add_metric([g.name], g.event_to_tuned_s)
    for vcpu, seconds in g.start_window:
        f.unprotected.add_metric([g.name, str(vcpu)], seconds)
    if not g.has_report:
        return
    f.realtime.add_metric([g.name], 1 if g.realtime else 0)
    f.valid.add_metric([g.name], 1 if g.valid else 0)
    f.compliant.add_metric([g.name], 1 if g.compliant else 0)
    for check, n in g.violations:
        f.violations.add_metric([g.name, check], n)
    if g.memory is not None:
        f.required.add_metric([g.name], g.memory[0])
        f.locked.add_metric([g.name], g.memory[1])
        f.hugetlb.add_metric([g.name], g.memory[2])


def _add_vcpus(f: SimpleNamespace, g: _Guest) -> None:
    """The vCPU rows that come from the report; the counters are columns
    filled per scrape (:func:`_columns`)."""
    for v in g.vcpus:
        labels = [g.name, str(v.vcpu)]
        if not v.has_thread:
            f.tuned.add_metric(labels, 0)
            continue
        f.policy.add_metric([*labels, v.policy], 1)
        f.prio.add_metric(labels, v.priority)
        f.tuned.add_metric(labels, 1 if v.tuned else 0)


# The per-scrape families: everything else a guest exports is kept as rows.
_COUNTED = ("delay", "cpu", "nvcsw")


@dataclass(frozen=True)
class _Rows:
    """One guest's rows of every family but the vCPU counters, built once per
    change of what it shows, and the (pid, tid, labels) of its counter rows."""

    static: tuple[tuple[str, tuple], ...]  # (family attribute, its rows)
    counted: tuple[tuple[int, int, tuple[str, str]], ...]


def _rows_of(g: _Guest) -> _Rows:
    f = _guest_families()
    _add_guest(f, g)
    if g.has_report:
        _add_vcpus(f, g)
    static = tuple((attr, tuple(m.rows)) for attr, m in vars(f).items() if m.rows and attr not in _COUNTED)
    counted = tuple((v.pid, v.tid, (g.name, str(v.vcpu))) for v in g.vcpus if v.has_thread) if g.has_report else ()
    return _Rows(static, counted)


@dataclass(frozen=True)
class _Layout:
    """Every guest's rows of one scrape, put together: the static families'
    rows in exposition order and the vCPU counters' two columns (the threads
    to read, their series' labels).  Kept while the guests' rows are the
    same objects (the steady state): a scrape then reads the counters into
    the columns and copies the rest."""

    rows: list[_Rows]
    static: dict[str, list]  # family attribute -> all guests' rows
    keys: tuple[tuple[int, int], ...]  # (pid, tid) per counter series
    labels: tuple[tuple[str, str], ...]  # (domain, vcpu) per counter series

    @classmethod
    def of(cls, rows: list[_Rows]) -> _Layout:
        static: dict[str, list] = {}
        for r in rows:
            for attr, rs in r.static:
                static.setdefault(attr, []).extend(rs)
        counted = [c for r in rows for c in r.counted]
        return cls(rows, static, tuple((pid, tid) for pid, tid, _ in counted),
                   tuple(labels for _, _, labels in counted))


def _columns(layout: _Layout, counters: dict) -> tuple[list, list, list]:
    """The run delay and CPU time (seconds) and involuntary switches of
    every counter series, ``None`` where there is no sample (the thread is
    gone since the report; a kernel without run delay)."""
    got = list(map(counters.get, layout.keys))
    if None not in got:
        runs, delays, switches = (list(c) for c in zip(*got)) if got else ([], [], [])
        if None not in runs and None not in delays:  # the usual case: plain columns
            return [d / 1e9 for d in delays], [r / 1e9 for r in runs], switches
    delay = [None if c is None or c[1] is None else c[1] / 1e9 for c in got]
    cpu = [None if c is None or c[0] is None else c[0] / 1e9 for c in got]
    return delay, cpu, [None if c is None else c[2] for c in got]


class RtagentCollector(Collector):
    """Reads the :class:`StateStore` on every scrape."""

    def __init__(self, store: StateStore, *, version: str = __version__, counters: CounterCache | None = None):
        self.store = store
        self.version = version
        # Per-thread counters, read at scrape time (not by the resync).
        self.counters = counters or CounterCache()
        # uuid -> (report, what it says, what the rows show, the guest, its rows)
        self._derived: dict[str, tuple[DomainReport | None, _FromReport, tuple, _Guest, _Rows]] = {}
        self._layout: _Layout | None = None

    def describe(self) -> list[Metric]:
        # Nothing to pre-declare: names are checked by the tests, and an empty
        # describe() keeps registration from running a full collect().
        return []

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        with at_loop_priority():  # the lock is held at the loop's priority, never at a client's
            snap: _Snapshot = self.store.read(_take)
        guests = self._derive(snap.guests)
        rows = [r for _, r in guests]
        if self._layout is None or self._layout.rows != rows:  # identical objects, as a rule: no deep compare
            self._layout = _Layout.of(rows)
        layout = self._layout
        counters = self.counters.get(layout.keys)
        families = [*self._daemon(snap), *self._host(snap), *self._guests(layout, counters)]
        scrape = _gauge("scrape_duration_seconds",
                        "Time this collector took to read the state store and build the metrics (this scrape).")
        scrape.add_metric([], time.perf_counter() - t0)
        families.append(scrape)
        yield from families

    def _derive(self, refs: list[_GuestRef]) -> list[tuple[_Guest, _Rows]]:
        """Outside the lock: each guest's rows, re-derived only for a new
        report, rebuilt only when what it shows changed (the steady state
        reuses them: a scrape then builds only the vCPU counter rows)."""
        old, new = self._derived, {}
        out = []
        for ref in refs:
            r = ref.report
            hit = old.get(ref.uuid)
            if r is None:
                derived = _FromReport()
            elif hit is not None and hit[0] is r:
                derived = hit[1]
            else:
                derived = _from_report(r)
            key = (derived, ref.name, ref.corrections, ref.correction_failures, ref.latency[1], ref.latency[2],
                   ref.event_to_tuned_s, ref.start_window, r is not None)
            if hit is not None and hit[2] == key:
                g, rows = hit[3], hit[4]
            else:
                g = _guest(ref, derived)
                rows = _rows_of(g)
            new[ref.uuid] = (r, derived, key, g, rows)
            out.append((g, rows))
        self._derived = new
        return out

    # -- the agent and its connections -----------------------------------

    def _daemon(self, s: _Snapshot) -> list[Metric]:
        out: list[Metric] = []
        m = _gauge("build_info", "rtagent version; always 1.", ["version"])
        m.add_metric([self.version], 1)
        out.append(m)
        m = _gauge("libvirt_up", "1 if the daemon is connected to libvirt, else 0.")
        m.add_metric([], 1 if s.libvirt_up else 0)
        out.append(m)
        # libvirt_up stays 1 while libvirtd hangs (the connection is open);
        # this says how long a call has gone unanswered (0 = answering).
        m = _gauge("libvirt_unresponsive_seconds", "Seconds a libvirt call has gone unanswered (libvirtd hung); "
                   "0 while libvirt answers.  Known guests are enforced from the kernel side meanwhile.")
        m.add_metric([], 0.0 if s.libvirt_unresponsive_since is None
                     else max(0.0, time.time() - s.libvirt_unresponsive_since))
        out.append(m)
        m = _counter("libvirt_reconnects", "Reconnections to libvirt after the connection was lost.")
        m.add_metric([], s.reconnects)
        out.append(m)
        m = _gauge("proc_connector_up", "1 if the kernel proc connector (thread creation events) is in use, else 0.")
        m.add_metric([], 1 if s.proc_connector else 0)
        out.append(m)
        m = _gauge("drift_watch_up", "1 if the drift watch (sched_set* syscalls and cgroup moves seen through "
                   "trace events) runs, else 0 (daemon.drift_watch off, unavailable or failed).")
        m.add_metric([], 1 if s.drift_watch else 0)
        out.append(m)
        m = _counter("events", "Events received, by source (libvirt, proc, cpuset, drift_watch).", ["source"])
        for source, n in s.events:
            m.add_metric([source], n)
        out.append(m)
        m = _counter("events_dropped", "Events dropped (queue full), by source.", ["source"])
        for source, n in s.events_dropped:
            m.add_metric([source], n)
        out.append(m)
        m = _counter("resyncs", "Periodic resyncs (the cheap steady check, or a full check).")
        m.add_metric([], s.resyncs)
        out.append(m)
        m = _counter("full_checks", "Resyncs that re-listed the guests through libvirt and re-read each in full "
                     "(every daemon.full_check_interval_s, and after a reconnect or lost events).")
        m.add_metric([], s.full_checks)
        out.append(m)
        if s.last_resync_at is not None:
            m = _gauge("last_resync_timestamp_seconds", "Unix time of the last completed resync.")
            m.add_metric([], s.last_resync_at)
            out.append(m)
        if s.reconcile is not None:
            m = _histogram("reconcile_duration_seconds", "Time to reconcile one guest (observe, plan, apply).")
            m.add_metric([], list(s.reconcile.buckets), s.reconcile.total)
            out.append(m)
        if s.event_to_tuned is not None:
            m = _histogram("event_to_tuned_seconds",
                           "Time from a guest's libvirt STARTED event until all its realtime vCPUs were tuned.")
            m.add_metric([], list(s.event_to_tuned.buckets), s.event_to_tuned.total)
            out.append(m)
        return out

    # -- the host partition -------------------------------------------------

    def _host(self, s: _Snapshot) -> list[Metric]:
        ok = _gauge("host_check_ok", "1 if the host readiness check passes, else 0 (docs/host-partition.md).",
                    ["check"])
        sev = _gauge("host_check_severity",
                     "Severity of the host check's current result: 0 ok/info, 1 warning, 2 error.", ["check"])
        val = _gauge("host_check_value", "The number behind a host check where it has one (docs/checks.md): "
                     "e.g. realtime CPUs with a fair server, SMT siblings doing other work, intruder threads.",
                     ["check"])
        seen: set[str] = set()
        out: list[Metric] = [ok, sev, val]
        if s.host_checks_at is not None:
            at = _gauge("host_checks_timestamp_seconds", "Unix time the host readiness checks last ran "
                        "(every daemon.host_check_interval_s, and at start, first guest, reload).")
            at.add_metric([], s.host_checks_at)
            out.append(at)
        for c in s.host_checks:
            if c.name in seen:
                continue
            seen.add(c.name)
            ok.add_metric([c.name], 1 if c.ok else 0)
            sev.add_metric([c.name], c.severity)
            if c.value is not None:
                val.add_metric([c.name], c.value)
            spec = metric_of(c.name)
            if spec is not None and c.value is not None:
                m = _gauge(spec.name, spec.help)
                m.add_metric([], c.value)
                out.append(m)
        m = _counter("host_corrections", "Host partition corrections (kthread, IRQ, workqueue moves), by kind.",
                     ["kind"])
        for kind, n in s.host_corrections:
            m.add_metric([kind], n)
        out.append(m)
        m = _gauge("host_refused", "Host objects the kernel refuses to move off the realtime CPUs "
                   "(managed IRQs, per-CPU kthreads), by kind.", ["kind"])
        for kind, n in s.host_refused:
            m.add_metric([kind], n)
        out.append(m)
        return out

    # -- guests ---------------------------------------------------------------

    def _guests(self, layout: _Layout, counters: dict) -> list[Metric]:
        families = vars(_guest_families())
        for attr, rs in layout.static.items():
            families[attr].rows.extend(rs)  # a copy: what a consumer of this scrape adds stays its own
        for attr, values in zip(_COUNTED, _columns(layout, counters), strict=True):
            families[attr] = ColumnMetric.like(families[attr], layout.labels, values)
        return list(families.values())


# ---------------------------------------------------------------------------
# the HTTP endpoint


class ClientServersCollector(Collector):
    """Connection counters of the metrics endpoint and the status socket:
    evidence of clients that hold or flood the daemon's sockets."""

    def __init__(self, servers: dict[str, ConnectionServer]):
        self.servers = servers

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        open_ = _gauge("client_connections", "Client connections open now, by server (metrics, status).",
                       ["server"])
        peak = _gauge("client_connections_peak", "Most client connections open at once since start.", ["server"])
        cap = _gauge("client_connections_max", "Cap on open client connections (the rest wait in the backlog).",
                     ["server"])
        accepted = _counter("client_connections_accepted", "Client connections accepted.", ["server"])
        closed = _counter("client_connections_closed", "Client connections closed, by reason (done, "
                          "idle_timeout, request_timeout, write_timeout, evicted, accept_emfile, …).",
                          ["server", "reason"])
        for name, srv in sorted(self.servers.items()):
            st = srv.stats
            open_.add_metric([name], st.open)
            peak.add_metric([name], st.peak_open)
            cap.add_metric([name], srv.limits.max_connections)
            accepted.add_metric([name], st.accepted)
            for reason, n in sorted(dict(st.closed).items()):
                closed.add_metric([name, reason], n)
        yield from (open_, peak, cap, accepted, closed)


class MetricsServer:
    """A running /metrics endpoint; :meth:`close` stops it and joins its thread."""

    def __init__(self, server: ConnectionServer, handler: MetricsHandler, registry: CollectorRegistry, tls: bool,
                 counters: CounterCache | None = None):
        self.server = server
        self.counters = counters
        self.handler = handler
        self.registry = registry
        self.host, self.port = server.listener.getsockname()[:2]
        self.tls = tls

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close(timeout)
            if self.counters is not None:
                self.counters.close()  # after the server thread stopped: no scrape is reading

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``); port 0 = any free port (tests)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise RtagentError(f"metrics.listen = {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _tls_context(cfg: MetricsConfig) -> ssl.SSLContext | None:
    """Load the TLS files before binding, naming the key that fails."""
    if not (cfg.tls_cert or cfg.tls_key or cfg.tls_client_ca):
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise RtagentError(f"metrics.tls_cert = {cfg.tls_cert!r}, metrics.tls_key = {cfg.tls_key!r}: "
                           "both must be set for TLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=cfg.tls_cert, keyfile=cfg.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise RtagentError(f"metrics.tls_cert = {cfg.tls_cert!r} / metrics.tls_key = {cfg.tls_key!r}: "
                           f"cannot load: {err}") from None
    if cfg.tls_client_ca:
        try:
            ctx.load_verify_locations(cafile=cfg.tls_client_ca)
        except (OSError, ssl.SSLError) as err:
            raise RtagentError(f"metrics.tls_client_ca = {cfg.tls_client_ca!r}: cannot load: {err}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _bind(cfg: MetricsConfig) -> socket.socket:
    host, port = _listen(cfg.listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise RtagentError(f"metrics.listen = {cfg.listen!r}: cannot resolve {host!r}: {err.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        raise RtagentError(f"metrics.listen = {cfg.listen!r}: cannot listen: {err.strerror or err}") from None
    return sock


def serve(store: StateStore, metrics_config: MetricsConfig, registry: CollectorRegistry | None = None, *,
          max_connections: int | None = None, status_server: ConnectionServer | None = None,
          reuse_s: float = RENDER_REUSE_S, counter_fds: int = 0,
          counters: CounterCache | None = None) -> MetricsServer:
    """Serve ``/metrics`` for ``store`` on ``metrics_config.listen``.

    A private registry (not prometheus_client's global one) holds the
    collector, so nothing else in the process can add series by accident.
    With ``tls_cert``/``tls_key`` the endpoint speaks HTTPS; with
    ``tls_client_ca`` it also requires a client certificate signed by it.
    ``max_connections`` overrides the config's cap (the daemon's descriptor
    budget, :mod:`rtagent.monitor.fdlimit`); ``status_server`` adds the
    status socket's connection counters.  ``counter_fds``: ``schedstat``
    descriptors the vCPU counters may keep open (the same budget's
    ``counters``); ``counters``: a cache to read them through (benchmarks).
    """
    ctx = _tls_context(metrics_config)
    sock = _bind(metrics_config)
    if registry is None:
        registry = CollectorRegistry()
        # The agent's own CPU, memory, file descriptors, start time.
        ProcessCollector(registry=registry)
    counters = counters or CounterCache(max_fds=counter_fds)
    registry.register(RtagentCollector(store, counters=counters))
    limits = Limits(max_connections=max_connections or metrics_config.max_connections,
                    idle_timeout_s=metrics_config.idle_timeout_s,
                    request_timeout_s=metrics_config.request_timeout_s)
    handler = MetricsHandler(registry, reuse_s=reuse_s)
    server = ConnectionServer(sock, handler, limits, name="metrics-http", ssl_context=ctx)
    servers = {"metrics": server}
    if status_server is not None:
        servers["status"] = status_server
    registry.register(ClientServersCollector(servers))
    server.start()
    return MetricsServer(server, handler, registry, ctx is not None, counters)
