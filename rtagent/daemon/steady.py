"""The cheap steady state: between full checks, a resync asks the kernel only
what can drift.

After every reconcile the guest supervisor records, per managed guest, each
planned thread as the re-observation after apply saw it (:meth:`record`).  A
steady resync then asks, per thread, three scheduler syscalls (policy,
priority, affinity; :class:`~rtagent.kernel.probe.DriftProbe`) and compares
them with that record.  Everything equal means a full observe → plan → apply
would find exactly what it found last time, so it is skipped; any difference,
a vanished thread or a missing record sends the guest down the full path.

What a syscall cannot see — the thread set, names and roles, cgroup
placement, memory facts, the per-VM kthreads — changes only with an event
(the proc connector's FORK/COMM/EXIT for the tracked QEMU processes;
libvirt's lifecycle, TUNABLE, DEVICE_ADDED and METADATA_CHANGE), which
reconciles the guest at once, and is re-read by the slow full check
(``[daemon] full_check_interval_s``) that catches a missed event.  No
libvirt call is made here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..kernel.probe import DriftProbe, Expected
from ..kernel.root import Kernel
from ..tuning.guest.report import DomainReport

__all__ = ["Baseline", "SteadyCheck"]


@dataclass(frozen=True)
class Baseline:
    """One guest's planned threads as last observed."""

    pid: int
    threads: tuple[Expected, ...]


def baseline_of(report: DomainReport) -> Baseline | None:
    """The record of a reconciled guest; None when there is nothing to
    compare against (no process observed)."""
    if report.pid is None or report.observed is None or not report.threads:
        return None
    pid = report.pid
    # Separate per-VM kthreads (kvm-pit) are their own processes.
    separate = {k.tid for k in report.observed.kthreads}
    return Baseline(pid, tuple(
        Expected.of(t.tid, t.policy, t.priority, t.cpus, t.tid if t.tid in separate else pid)
        for t in (tp.thread for tp in report.threads)))


class SteadyCheck:
    """Baselines of the managed guests and the cheap comparison."""

    def __init__(self, probe: DriftProbe | None = None,
                 on_owners: Callable[[frozenset[int]], None] | None = None):
        """``on_owners``: told every managed thread (the drift watch's
        filter) whenever that set changes."""
        self.probe = probe or DriftProbe(Kernel())
        self._on_owners = on_owners
        self._baselines: dict[str, Baseline] = {}
        self._owner: dict[int, str] = {}  # tid -> uuid of the baseline holding it (the drift watch's map)
        self._every: tuple[Expected, ...] | None = None  # every baseline's threads in one tuple (run's first pass)
        self.checked = 0  # threads compared (the cost's unit)
        self.differed = 0  # guests sent down the full path

    def record(self, uuid: str, report: DomainReport) -> None:
        base = baseline_of(report)
        old = self._drop(uuid)
        if base is not None:
            self._baselines[uuid] = base
            self._owner.update((e.tid, uuid) for e in base.threads)
        if old != (frozenset(e.tid for e in base.threads) if base is not None else frozenset()):
            self._owners_changed()

    def forget(self, uuid: str) -> None:
        if self._drop(uuid):
            self._owners_changed()

    def _drop(self, uuid: str) -> frozenset[int]:
        self._every = None
        old = self._baselines.pop(uuid, None)
        if old is None:
            return frozenset()
        for e in old.threads:
            if self._owner.get(e.tid) == uuid:
                del self._owner[e.tid]
        return frozenset(e.tid for e in old.threads)

    def _owners_changed(self) -> None:
        if self._on_owners is not None:
            self._on_owners(frozenset(self._owner))

    def owners(self, tids: Iterable[int]) -> dict[str, set[int]]:
        """The guests whose baselines hold any of ``tids`` (uuid -> those
        tids); a tid no managed guest has is left out, at one dict lookup."""
        out: dict[str, set[int]] = {}
        owner = self._owner
        for tid in tids:
            uuid = owner.get(tid)
            if uuid is not None:
                out.setdefault(uuid, set()).add(tid)
        return out

    def unchanged(self, uuid: str) -> bool:
        base = self._baselines.get(uuid)
        if base is None:
            return False
        self.checked += len(base.threads)
        if self.probe.unchanged(base.threads):
            return True
        self.differed += 1
        return False

    def run(self, uuids: list[str], reconcile: Callable[[str], object]) -> int:
        """Reconcile every guest of ``uuids`` whose threads differ from their
        baseline; returns how many did.

        First one pass over every baseline's threads at once: when nothing
        differs (nearly every resync) that is the whole answer, without a
        call per guest; a difference anywhere, or a guest without a
        baseline, and each guest is compared on its own, as before."""
        base = self._baselines
        if uuids and all(map(base.__contains__, uuids)):
            every = self._every
            if every is None:
                every = self._every = tuple(e for b in base.values() for e in b.threads)
            if self.probe.unchanged(every):
                self.checked += len(every)
                return 0
        n = 0
        for uuid in uuids:
            if not self.unchanged(uuid):
                reconcile(uuid)
                n += 1
        return n
