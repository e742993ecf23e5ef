"""The fast path for a live re-pin (libvirt's TUNABLE event).

``virsh vcpupin/emulatorpin/iothreadpin --live`` changes affinity, nothing
else: the thread set, names, roles, cgroup paths and memory facts are what
the last reconcile saw.  So the look before the fix re-reads only policy,
priority and affinity per thread by syscall (a few µs a thread) instead of
observing the whole process from ``/proc`` (1–2 ms of CPU a guest, which on
a saturated housekeeping CPU stretched the event-to-fix time to 20–40 ms:
docs/benchmarks.md, issue 14).  The fix itself, the look after it and the
drift accounting are the ordinary reconcile's.

Measured before this existed (n = 60, load ≈ 7): event handled → first
syscall p50 ≈ 3 ms, slowest 30 ms, all of it the re-observation.
"""

from __future__ import annotations

import dataclasses

from ..kernel.errors import GONE
from ..kernel.tasks import Tasks
from ..tuning.guest.observe import Observed, ThreadInfo
from ..tuning.guest.report import DomainReport

__all__ = ["pin_group", "refreshed"]


def _resched(tasks: Tasks, t: ThreadInfo, pid: int) -> ThreadInfo:
    s = tasks.sched(t.tid, pid)
    if (s.policy, s.priority, s.cpus) == (t.policy, t.priority, t.cpus):
        return t
    return dataclasses.replace(t, policy=s.policy, priority=s.priority, cpus=s.cpus)


def refreshed(last: DomainReport | None, tasks: Tasks) -> Observed | None:
    """``last.observed`` with every thread's scheduling re-read by syscall;
    None when there is nothing to refresh or a thread is gone (the caller
    then observes in full: the thread set changed)."""
    if last is None or last.observed is None or last.pid is None:
        return None
    obs = last.observed
    try:
        threads = tuple(_resched(tasks, t, obs.pid) for t in obs.threads)
        kthreads = tuple(_resched(tasks, t, t.tid) for t in obs.kthreads)
    except GONE:
        return None
    return dataclasses.replace(obs, threads=threads, kthreads=kthreads)


def pin_group(guest, group: str, cpus: frozenset[int]) -> None:
    """libvirt's own pin call for one of its thread groups (``vcpuN``,
    ``emulator``, ``iothreadN``): its cpuset, the threads' affinity and its
    live XML all say ``cpus``.  Raises rtagent's libvirt errors."""
    if group == "emulator":
        guest.pin_emulator(cpus)
    elif group.startswith("vcpu"):
        guest.pin_vcpu(int(group[len("vcpu"):]), cpus)
    elif group.startswith("iothread"):
        guest.pin_iothread(int(group[len("iothread"):]), cpus)
