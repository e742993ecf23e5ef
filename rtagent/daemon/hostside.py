"""The host-side supervisor: the host partition (kernel threads, IRQs,
workqueues off the realtime CPUs) enforced on every resync, and the host
readiness checks on their own slower timer (they scan all of /proc)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

from ..config import Config
from ..kernel.procscan import ThreadNames
from ..state import StateStore

log = logging.getLogger(__name__)

# Host readiness checks scan all of /proc: not on every resync.
HOST_CHECK_INTERVAL_S = 30.0


class HostSupervisor:
    def __init__(self, config: Config, store: StateStore, clock: Callable[[], float] = time.monotonic,
                 check_interval_s: float = HOST_CHECK_INTERVAL_S,
                 known_threads: Callable[[], Mapping[int, Mapping[int, str]]] = dict):
        self.store = store
        self._clock = clock
        # The managed QEMUs' threads as the guest supervisor observed them:
        # the host checks' /proc scan does not read them again.
        self._known_threads = known_threads
        # Everyone else's thread names as the last runs read them: each
        # run reads only new threads' comm (kernel/procscan.py).
        self._thread_names = ThreadNames()
        self.check_interval_s = check_interval_s
        self.next_checks = 0.0
        self._vcpusched_seen: tuple[str, ...] = ()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)build the enforcer from the config (start and SIGHUP)."""
        self.config = config
        self._partition_stored = False  # the store shows this config's partition (_store)
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
        now = self._clock()
        # A newly defined guest libvirt will refuse to start is news now, not in 30 s.
        if now < self.next_checks and vcpusched_guests == self._vcpusched_seen:
            return None
        self.next_checks = now + self.check_interval_s
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
        if report is None:
            return
        s.daemon.host_corrections.update(report.corrections_by_kind)
        s.daemon.host_refused = Counter(r.kind.split("_")[0] for r in report.refused)
        s.daemon.host["partition_enforcement"] = {"counts": report.counts,
                                                  "conflicts": report.to_json().get("conflicts", [])}
