"""The steady state's one question to the kernel: does each thread still have
the policy, priority and affinity it had when last seen?

Measured (B3): :meth:`Tasks.sched` costs ~7 µs a thread (a ``Sched``
dataclass, a policy-name lookup, a ``realpath`` per call); the goal for a
whole resync is 5 µs a managed thread.  This asks the same three scheduler
syscalls (~1.5 µs together) and compares raw numbers against an
:class:`Expected` built once, when the thread was last fully observed; the
priority syscall is skipped for non-realtime policies (their priority is 0).
Over a fixture tree (PIDs that are not real) the same answer comes from the
tree's files through :meth:`Tasks.sched`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cpulist import interned
from .tasks import POLICY_NUMBER

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["Expected", "DriftProbe"]

_REALTIME_NUMBERS = frozenset({1, 2})  # SCHED_FIFO, SCHED_RR
_UNKNOWN = -1  # a policy the table does not know never matches: re-read in full


@dataclass(frozen=True, slots=True)  # one per thread: no instance dict (daemon RSS)
class Expected:
    """One thread as last observed: raw policy number, rt priority, CPUs."""

    tid: int
    policy: int
    priority: int
    cpus: frozenset[int]
    pid: int = 0  # the process it was read under (fixture trees only)

    @classmethod
    def of(cls, tid: int, policy: str, priority: int, cpus: Iterable[int], pid: int = 0) -> Expected:
        return cls(tid, POLICY_NUMBER.get(policy, _UNKNOWN), int(priority), interned(cpus), pid)


class DriftProbe:
    """Compares threads against what was last observed, by syscall."""

    def __init__(self, kernel: Kernel):
        self._kernel = kernel
        self.live = kernel.live  # decided once: realpath per thread was a third of the cost

    def unchanged(self, expected: Iterable[Expected]) -> bool:
        """True if every thread exists with exactly its expected policy,
        priority and affinity; False at the first difference or gone thread."""
        if not self.live:
            return self._unchanged_fixture(expected)
        getscheduler, getparam, getaffinity = os.sched_getscheduler, os.sched_getparam, os.sched_getaffinity
        try:
            for e in expected:
                policy = getscheduler(e.tid) & 0xFF  # SCHED_RESET_ON_FORK is bit 30
                if policy != e.policy:
                    return False
                if policy in _REALTIME_NUMBERS and getparam(e.tid).sched_priority != e.priority:
                    return False
                if getaffinity(e.tid) != e.cpus:
                    return False
        except OSError:  # ESRCH: gone; EPERM/EINVAL: not ours to judge cheaply
            return False
        return True

    def _unchanged_fixture(self, expected: Iterable[Expected]) -> bool:
        tasks = self._kernel.tasks
        try:
            for e in expected:
                s = tasks.sched(e.tid, e.pid or e.tid)
                if (POLICY_NUMBER.get(s.policy, _UNKNOWN), s.priority, s.cpus) != (e.policy, e.priority, e.cpus):
                    return False
        except (OSError, ValueError):
            return False
        return True
