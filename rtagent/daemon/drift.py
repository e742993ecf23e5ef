"""Drift accounting: what one reconcile of a guest means for its evidence.

Pure: given the reports before and after, whether the guest had been tuned
before and whether its intent has just changed, :func:`classify` says which
changes were drift (something changed behind rtagent's back), which applied
a changed intent (a ``virsh metadata --live`` edit, a SIGHUP with a new
priority — not drift), and which failed.  :func:`record` folds that into a
guest's state with times passed in, so both are unit-tested with an
injected clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..state import DaemonState, GuestState, VcpuCounters
from ..vocab import ApplyOutcome, DriftKind, Policy, Role
from ..tuning.guest.plan import SetAffinity
from ..tuning.guest.engine import DomainReport

REALTIME_POLICIES = (Policy.FIFO, Policy.RR)


@dataclass(frozen=True)
class Times:
    """``detected``/``done``: monotonic seconds (cause seen, reconcile
    finished); ``wall``: wall-clock seconds at ``done``."""

    detected: float
    done: float
    wall: float


@dataclass(frozen=True)
class Outcome:
    drift: Counter = field(default_factory=Counter)  # kind -> corrections of drift
    intent: Counter = field(default_factory=Counter)  # kind -> changes applying a new intent
    failures: Counter = field(default_factory=Counter)  # kind -> refused changes
    realtime_tuned: bool = False  # every realtime vCPU is as planned after this reconcile

    @property
    def corrected(self) -> bool:
        return bool(self.drift)


def change_kind(role_check: str, action) -> DriftKind | str:
    """``vcpu_policy``, ``emulator_affinity``, ``kthread_affinity`` … (a
    :class:`~rtagent.vocab.DriftKind`; a thread of no known role gives a
    plain ``thread_…`` string rather than a wrong kind)."""
    kind = f"{role_check}_{'affinity' if isinstance(action, SetAffinity) else 'policy'}"
    try:
        return DriftKind(kind)
    except ValueError:
        return kind


def classify(before: DomainReport, after: DomainReport, *, tuned_before: bool, intent_changed: bool) -> Outcome:
    """Sort ``after.changes``.  Before the first full tuning nothing is drift
    (that is the initial tuning, measured as event-to-tuned instead)."""
    check_by_tid = {tp.thread.tid: tp.check for tp in before.threads}
    drift: Counter = Counter()
    intent: Counter = Counter()
    failures: Counter = Counter()
    for r in after.changes:
        kind = change_kind(check_by_tid.get(r.action.tid, "thread"), r.action)
        if r.outcome == ApplyOutcome.FAILED:
            failures[kind] += 1
        elif r.outcome == ApplyOutcome.CHANGED and tuned_before:
            (intent if intent_changed else drift)[kind] += 1
    rt_tuned = bool(after.observed) and all(
        tp.ok for tp in after.threads if tp.thread.role == Role.VCPU and tp.want.policy in REALTIME_POLICIES)
    return Outcome(drift=drift, intent=intent, failures=failures, realtime_tuned=rt_tuned)


def record(g: GuestState, daemon: DaemonState, after: DomainReport, outcome: Outcome, times: Times,
           *, started: bool) -> None:
    """Fold one reconcile into the guest's state (caller holds the store lock)."""
    first_tuning = g.tuned_at is None
    if started and first_tuning and g.started_event_at is None:
        g.started_event_at = times.detected
    g.report = after
    if outcome.drift:
        g.corrections.update(outcome.drift)
        g.last_correction_at = times.wall
        g.correction_latency.observe(times.done - times.detected)
    if outcome.intent:
        g.intent_changes.update(outcome.intent)
    g.correction_failures.update(outcome.failures)
    if first_tuning and outcome.realtime_tuned:
        g.tuned_at = times.wall
        if g.started_event_at is not None:
            g.event_to_tuned_s = round(times.done - g.started_event_at, 6)
            daemon.event_to_tuned.observe(times.done - g.started_event_at)
    if after.observed is not None:
        _vcpu_counters(g, after, times.wall)


def _vcpu_counters(g: GuestState, after: DomainReport, now: float) -> None:
    """Run-queue delay per realtime vCPU, and its rate since the last look."""
    fold_counters(g, ((t.vcpu, t.run_delay_ns, t.run_time_ns, t.nonvoluntary_ctxt_switches)
                      for t in after.observed.threads if t.role == Role.VCPU and t.vcpu is not None), now)


def fold_counters(g: GuestState, rows: Iterable[tuple[int, int | None, int | None, int]], now: float) -> None:
    """``(vcpu, run delay ns, run time ns, involuntary switches)`` per vCPU
    into the guest's counters, with the delay's rate since the last look."""
    for vcpu, delay_ns, run_ns, nvcsw in rows:
        c = g.vcpus.get(vcpu)
        delay = delay_ns or 0
        if c is not None and now > c.observed_at and delay >= c.run_delay_ns:
            rate = (delay - c.run_delay_ns) / (now - c.observed_at)
        else:
            rate = 0.0
        g.vcpus[vcpu] = VcpuCounters(run_delay_ns=delay, run_time_ns=run_ns or 0, nonvoluntary_ctxt_switches=nvcsw,
                                     run_delay_rate=rate, observed_at=now)
