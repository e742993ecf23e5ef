"""Host kernel threads: what each one is, and where it should be (pure).

What is never touched: PID 1 and every user process (only ``PF_KTHREAD``
tasks are read), per-VM kernel threads (``kvm-pit/…``, ``kvm-nx-lpage…``,
``vhost-…``: the guest pipeline owns them), kernel-pinned threads
(``migration/N``, ``cpuhp/N``, ``idle_inject/N``, bound kworkers, anything
with ``PF_NO_SETAFFINITY``), and threaded IRQ handlers whose IRQ refused to
move.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...config import Partition
from ...kernel.tasks import PF_KTHREAD, PF_NO_SETAFFINITY, Task
from ...vocab import KThreadAction
from ..guest.vmthreads import HOST_PREFIXES

__all__ = ["KThread", "KThreadClass", "GUEST_PREFIXES", "PRIORITY_OFFSETS", "rt_priority_for",
           "is_guest_thread", "off_realtime", "classify"]

#: Names of per-VM kernel threads owned by the guest pipeline (its table of
#: kinds, tuning/guest/vmthreads.py).
GUEST_PREFIXES = HOST_PREFIXES

#: Per-CPU threads that must stay where they are and run above the vCPUs:
#: name → offset above the highest vCPU priority (tuned realtime-virtual-host
#: with vCPUs at FIFO 1: ksoftirqd/ktimers 2, ktimersoftd 3, rcuc/rcub 4).
PRIORITY_OFFSETS = {"ksoftirqd": 1, "ktimers": 1, "ktimersoftd": 2, "rcuc": 3, "rcub": 3}

#: Per-CPU threads pinned by the kernel that we leave alone, with the reason.
LEFT_ALONE_REASONS = {
    "migration": "per-CPU stopper thread (FIFO 99 by design), pinned by the kernel",
    "cpuhp": "per-CPU hotplug thread, pinned by the kernel",
    "idle_inject": "per-CPU idle injection thread, pinned by the kernel",
}

_PERCPU_RE = re.compile(r"^([A-Za-z_]+)/(\d+)$")
_IRQ_THREAD_RE = re.compile(r"^irq/(\d+)-")


@dataclass(frozen=True)
class KThread:
    """A host kernel thread at one moment; ``(pid, starttime)`` is its identity."""

    pid: int
    comm: str
    ppid: int
    flags: int
    starttime: int
    affinity: frozenset[int]
    policy: str
    priority: int  # rt_priority (0 unless fifo/rr)

    @classmethod
    def from_task(cls, t: Task) -> KThread:
        s = t.stat
        return cls(t.pid, s.comm, s.ppid, s.flags, s.starttime, t.cpus, s.policy, s.rt_priority)

    @property
    def movable(self) -> bool:
        return not self.flags & PF_NO_SETAFFINITY

    @property
    def label(self) -> str:
        return f"kthread {self.pid} ({self.comm})"


@dataclass(frozen=True)
class KThreadClass:
    kind: KThreadAction
    reason: str = ""
    target_cpus: frozenset[int] | None = None
    target_priority: int | None = None
    irq: int | None = None


def rt_priority_for(name: str, vcpu_priority: int) -> int | None:
    """FIFO priority for a per-CPU thread that must outrank the vCPUs
    (tuned's realtime-virtual-host ladder generalised, capped at 99), or None
    if ``name`` is not one of them."""
    m = _PERCPU_RE.match(name)
    if not m or m.group(1) not in PRIORITY_OFFSETS:
        return None
    return min(99, max(1, vcpu_priority) + PRIORITY_OFFSETS[m.group(1)])


def is_guest_thread(name: str) -> bool:
    return name.startswith(GUEST_PREFIXES)


def off_realtime(cpus: frozenset[int], partition: Partition) -> frozenset[int] | None:
    """Where something allowed on ``cpus`` should go — its housekeeping part,
    or every housekeeping CPU — or None when it already avoids the realtime
    CPUs.  The one target rule for kthreads, IRQs and workqueues."""
    if not cpus & partition.realtime:
        return None
    return frozenset(cpus & partition.housekeeping) or partition.housekeeping


def _pinned_reason(kt: KThread) -> str | None:
    m = _PERCPU_RE.match(kt.comm)
    if m and m.group(1) in LEFT_ALONE_REASONS:
        return LEFT_ALONE_REASONS[m.group(1)]
    if kt.movable:
        return None
    if kt.comm.startswith(("kworker/u", "kworker/R-")):
        return "unbound/rescuer kworker, placed by the workqueue cpumask"
    if kt.comm.startswith("kworker/"):
        return "bound per-CPU kworker, pinned by the kernel"
    return "PF_NO_SETAFFINITY: pinned by the kernel"


def classify(kt: KThread, partition: Partition, *, vcpu_priority: int = 1) -> KThreadClass:
    """What to do with one kernel thread (pure)."""
    if kt.pid <= 1 or not kt.flags & PF_KTHREAD:
        return KThreadClass(KThreadAction.OK, "not a kernel thread")
    if is_guest_thread(kt.comm):
        return KThreadClass(KThreadAction.GUEST, "per-VM kernel thread, handled by the guest tuning engine")
    target = off_realtime(kt.affinity, partition)
    if target is None:
        return KThreadClass(KThreadAction.OK)
    prio = rt_priority_for(kt.comm, vcpu_priority)
    if prio is not None:
        return KThreadClass(KThreadAction.PRIORITY, "per-CPU thread serving a realtime CPU", target_priority=prio)
    reason = _pinned_reason(kt)
    if reason is not None:
        return KThreadClass(KThreadAction.LEFT_ALONE, reason)
    m = _IRQ_THREAD_RE.match(kt.comm)
    if m:
        return KThreadClass(KThreadAction.IRQ_THREAD, "threaded IRQ handler, follows its IRQ's affinity",
                            target_cpus=target, irq=int(m.group(1)))
    return KThreadClass(KThreadAction.MOVE, "movable kernel thread allowed on a realtime CPU", target_cpus=target)
