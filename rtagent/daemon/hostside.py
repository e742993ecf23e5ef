"""The host-side supervisor: the host partition (kernel threads, IRQs,
workqueues off the realtime CPUs) enforced on every resync, and the host
readiness checks on their own slower timer (they scan all of /proc).

The checks are a report about configuration (the kernel command line,
sysctls, hugepages, irqbalance, user threads allowed on a realtime CPU),
not enforcement, and the last of them costs ≈ 15 µs per host thread (an
affinity syscall and a ``stat`` read per thread): every 30 s at 1,000 host
threads that alone was the idle daemon's whole budget (0.05 % of a core),
and with guests it grew with the host, not with the guests.  So they run
every ``[daemon] host_check_interval_s`` (300 s), and at once when the
answer may have changed (:func:`checks_due`): at start, for the first
managed guest after none, at a SIGHUP reload (the operator just changed
something), and for a newly defined guest libvirt will refuse.
``rtagent check`` runs them on demand."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

from ..config import Config
from ..kernel.procscan import ThreadNames
from ..state import StateStore

log = logging.getLogger(__name__)


def checks_due(now: float, next_at: float, *, busy: bool, was_busy: bool, refused_changed: bool) -> bool:
    """Whether the host checks run now (pure).  ``busy``: a guest is managed
    now; ``was_busy``: at the last call; ``refused_changed``: the defined
    guests libvirt will refuse (a realtime ``<vcpusched>``) changed."""
    return now >= next_at or refused_changed or (busy and not was_busy)


class HostSupervisor:
    def __init__(self, config: Config, store: StateStore, clock: Callable[[], float] = time.monotonic,
                 known_threads: Callable[[], Mapping[int, Mapping[int, str]]] = dict):
        self.store = store
        self._clock = clock
        # The managed QEMUs' threads as the guest supervisor observed them:
        # the host checks' /proc scan does not read them again.
        self._known_threads = known_threads
        # Everyone else's thread names as the last runs read them: each
        # run reads only new threads' comm (kernel/procscan.py).
        self._thread_names = ThreadNames()
        self._busy = False  # a guest was managed at the last call
        self._vcpusched_seen: tuple[str, ...] = ()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)build the enforcer from the config (start and SIGHUP); the host
        checks run at the next resync (a reload follows a change)."""
        self.config = config
        self._partition_stored = False  # the store shows this config's partition (_store)
        self.next_checks = 0.0
        ht = config.host_tuning
        self.enforcer = None
        if (ht.kthreads or ht.irqs or ht.workqueues or ht.kthread_priorities) and config.partition.realtime:
            from ..tuning.host.enforcer import HostPartitionEnforcer

            self.enforcer = HostPartitionEnforcer(config.partition, ht,
                                                  vcpu_priority=config.realtime.default_priority)

    def _realtime_priority(self) -> int:
        """The highest priority of any realtime vCPU under management: host
        kernel threads that must stay above the vCPUs are ranked against it
        (the computation ``rtagent host apply`` uses too)."""
        from ..tuning.host.priority import vcpu_priority

        specs = self.store.read(lambda s: [g.report.spec for g in s.guests.values() if g.report is not None])
        return vcpu_priority(specs, self.config.realtime.default_priority)

    def enforce(self, guest_pids: set[int], vcpusched_guests: tuple[str, ...] = ()) -> None:
        report = None
        if self.enforcer is not None:
            try:
                report = self.enforcer.enforce(self._realtime_priority())
            except Exception:  # the host partition must never take the daemon down
                log.exception("host partition enforcement failed")
        checks = self._checks(guest_pids, vcpusched_guests)
        if report is None and checks is None and self._partition_stored:
            # Nothing new to show (the steady resync without a host partition):
            # no lock, no partition JSON rebuilt every second.
            return
        self.store.update(lambda s: self._store(s, report, checks))
        if report is not None:
            for r in report.changed:
                log.info("host: %s", r.to_json())

    def _checks(self, guest_pids: set[int], vcpusched_guests: tuple[str, ...] = ()) -> tuple | None:
        now, busy = self._clock(), bool(guest_pids)
        # A newly defined guest libvirt will refuse to start is news now, not
        # at the next run; so is the first managed guest after an idle spell.
        due = checks_due(now, self.next_checks, busy=busy, was_busy=self._busy,
                         refused_changed=vcpusched_guests != self._vcpusched_seen)
        self._busy = busy
        if not due:
            return None
        self.next_checks = now + self.config.daemon.host_check_interval_s
        self._vcpusched_seen = vcpusched_guests
        try:
            from ..monitor.hostchecks import run_host_checks

            return tuple(run_host_checks(self.config.partition, exclude_pids=guest_pids,
                                         vcpusched_guests=vcpusched_guests, known_threads=self._known_threads(),
                                         thread_names=self._thread_names))
        except Exception:
            log.exception("host checks failed")
            return None

    def _store(self, s: StateStore, report, checks: tuple | None) -> None:
        s.daemon.host.update(self.config.partition.to_json())
        self._partition_stored = True
        if checks is not None:
            s.daemon.host_checks = checks
            # How old the checks in an answer are, and how often they run.
            s.daemon.host["checks_at"] = time.time()
            s.daemon.host["checks_every_s"] = self.config.daemon.host_check_interval_s
        if report is None:
            return
        s.daemon.host_corrections.update(report.corrections_by_kind)
        s.daemon.host_refused = Counter(r.kind.split("_")[0] for r in report.refused)
        s.daemon.host["partition_enforcement"] = {"counts": report.counts,
                                                  "conflicts": report.to_json().get("conflicts", [])}
