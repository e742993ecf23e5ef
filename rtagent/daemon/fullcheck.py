"""The full check's shortcut: a guest that its last reconcile left with
nothing to do, and whose marks (tuning/guest/marks.py) are what that
reconcile observed, is not reconciled again.

A full observe → plan → apply → account of an unchanged guest finds what it
found last time and changes nothing; at 100 paused guests it was 162 ms a
full check (B3), most of it Python re-deriving the same plan.  The marks are
every input of that judgement the kernel holds; the others are checked here
(:func:`settled`, and the caller's: the same cached intent, the same
host-wide pCPU conflicts, no look pending).  Whatever differs, the guest is
reconciled as before.

The marks are read through descriptors kept open per guest
(:class:`~rtagent.kernel.kept.KeptTasks`: one ``pread`` a file, no task
listing while the thread count is unchanged), opened afresh for each new
observation and closed when the guest is forgotten.

What a skipped reconcile would still have refreshed — the realtime vCPUs'
counters shown by ``rtagent status`` (``vcpu_stats``) — is read here for
the vCPU threads only (:class:`~rtagent.kernel.counters.CounterReader`,
its ``schedstat`` descriptors kept within the same budget).
"""

from __future__ import annotations

from ..kernel import Kernel
from ..kernel.counters import CounterReader, Key
from ..kernel.kept import KeptTasks
from ..tuning.guest.marks import Marks, marks_of
from ..tuning.guest.observe import Observed
from ..tuning.guest.report import DomainReport
from ..vocab import Check, Role

__all__ = ["settled", "vcpu_keys", "Standing"]

# Violations that mean "look again soon": never stand on them.
_UNSETTLED = frozenset({Check.VCPU_PENDING, Check.RT_BUDGET})


def settled(last: DomainReport) -> bool:
    """Pure: ``last`` left nothing to do — observed, every planned thread as
    planned, no change refused, nothing waiting on libvirt or RT budget."""
    return (last.observed is not None and last.pid is not None and not last.withdrawn and last.spec.realtime
            and all(tp.ok for tp in last.threads) and not last.failures
            and not any(v.check in _UNSETTLED for v in last.violations))


def vcpu_keys(report: DomainReport) -> list[tuple[int, Key]]:
    """(vCPU index, (pid, tid)) of an observed guest's vCPU threads."""
    assert report.observed is not None and report.pid is not None
    return [(t.vcpu, (report.pid, t.tid)) for t in report.observed.threads if t.role == Role.VCPU and t.vcpu is not None]


# Descriptors the marks and the stood guests' counters keep open when no
# budget is given: none (everything by path).  The daemon gives the
# endpoints' (Standing.budget, monitor/fdlimit.py): ≈ 12 a paused guest.
DEFAULT_FDS = 0


class Standing:
    """The marks of each guest's last full observation (computed once per
    observation), the descriptors they are re-read through, and the counter
    reader of the guests that stood."""

    def __init__(self, kernel: Kernel, max_fds: int = DEFAULT_FDS):
        self._marks: dict[str, tuple[Observed, Marks]] = {}  # uuid -> (its Observed, marks_of it)
        self.kept = KeptTasks(kernel)
        self.counters = CounterReader(kernel, taskstats=False)  # files: no socket of its own on the loop
        self.budget(max_fds)

    def budget(self, max_fds: int) -> None:
        """Keep at most ``max_fds`` descriptors: three quarters for the
        marks, the rest for the counters (one ``schedstat`` a vCPU thread,
        ``status`` now and then)."""
        self.kept.max_fds = max_fds * 3 // 4
        self.counters.max_fds = max_fds - self.kept.max_fds

    def marks(self, uuid: str, last: DomainReport) -> Marks:
        assert last.observed is not None
        held = self._marks.get(uuid)
        if held is None or held[0] is not last.observed:
            held = self._marks[uuid] = (last.observed, marks_of(last.observed))
            self.kept.drop(uuid)  # a new observation: its threads' descriptors opened afresh
        return held[1]

    def forget(self, uuid: str) -> None:
        """The guest left: its marks and every descriptor of it (its vCPUs'
        counters too: the next full check's ``keep`` is up to 30 s away)."""
        held = self._marks.pop(uuid, None)
        self.kept.drop(uuid)
        if held is not None:
            self.counters.forget_process(held[0].pid)

    def read_counters(self, keys: list[Key]) -> dict[Key, tuple[int | None, int | None, int] | None]:
        """The counters of ``keys``; threads not asked about any more are forgotten."""
        self.counters.keep(set(keys))
        return self.counters.read_many(keys)
