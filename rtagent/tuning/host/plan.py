"""Plan the host partition: a snapshot of the kernel in, typed actions out.

Pure: :func:`plan_host_partition` reads a :class:`HostSnapshot` and changes
nothing.  Every action carries the item's identity (its key in the saved
originals), the value before and after, and what to save the first time it
is changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ...config import HostTuningConfig, Partition
from ...cpulist import format_cpulist, format_kernel_hexmask
from ...kernel import Kernel
from ...kernel.irqs import Irq
from ...kernel.workqueues import WqMask
from ...vocab import REALTIME_POLICIES, HostKind, KThreadAction, Policy
from .kthreads import KThread, classify, off_realtime
from .report import LeftAlone

__all__ = ["HostSnapshot", "HostAction", "WorkqueueMask", "DefaultIrqAffinity", "IrqAffinity",
           "KThreadAffinity", "KThreadPriority", "HostPlan", "read_snapshot", "plan_host_partition",
           "KIND_ORDER", "DEFAULT_IRQ_KEY"]

# Order of application: workqueues, IRQs, then threads (an IRQ thread follows
# its IRQ), priorities last.
KIND_ORDER = {k: i for i, k in enumerate(HostKind)}
DEFAULT_IRQ_KEY = "irq_affinity:default"


@dataclass(frozen=True)
class HostSnapshot:
    kthreads: tuple[KThread, ...] = ()
    irqs: tuple[Irq, ...] = ()
    default_affinity: tuple[str, frozenset[int]] | None = None
    workqueues: tuple[WqMask, ...] = ()


def read_snapshot(kernel: Kernel) -> HostSnapshot:
    """Kernel threads, IRQ affinities, ``default_smp_affinity`` and workqueue
    cpumasks as the kernel reports them now."""
    return HostSnapshot(
        kthreads=tuple(KThread.from_task(t) for t in kernel.tasks.kthreads()),
        irqs=tuple(kernel.irqs.all()),
        default_affinity=kernel.irqs.default_affinity(),
        workqueues=tuple(kernel.workqueues.all()),
    )


@dataclass(frozen=True)
class HostAction:
    """One change to make.  ``key`` identifies the item in the saved originals."""

    kind: ClassVar[HostKind]
    key: str
    item: str
    before: str
    after: str

    def original(self) -> dict[str, Any]:
        """What is saved the first time the item is changed."""
        return {"value": self.before}

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "item": self.item, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class WorkqueueMask(HostAction):
    kind: ClassVar[HostKind] = HostKind.WORKQUEUE_CPUMASK
    name: str  # "" = the global mask
    path: str  # identity only (the key and the saved entry carry it)
    cpus: frozenset[int]

    def original(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "value": self.before}


@dataclass(frozen=True)
class DefaultIrqAffinity(HostAction):
    kind: ClassVar[HostKind] = HostKind.IRQ_AFFINITY
    cpus: frozenset[int]


@dataclass(frozen=True)
class IrqAffinity(HostAction):
    kind: ClassVar[HostKind] = HostKind.IRQ_AFFINITY
    irq: int
    cpus: frozenset[int]

    def original(self) -> dict[str, Any]:
        return {"irq": self.irq, "value": self.before}


@dataclass(frozen=True)
class KThreadAffinity(HostAction):
    kind: ClassVar[HostKind] = HostKind.KTHREAD_AFFINITY
    pid: int
    starttime: int
    comm: str
    cpus: frozenset[int]

    def original(self) -> dict[str, Any]:
        return {"pid": self.pid, "starttime": self.starttime, "comm": self.comm, "value": self.before}


@dataclass(frozen=True)
class KThreadPriority(HostAction):
    kind: ClassVar[HostKind] = HostKind.KTHREAD_PRIORITY
    pid: int
    starttime: int
    comm: str
    policy: str
    priority: int
    old_policy: str
    old_priority: int

    def original(self) -> dict[str, Any]:
        return {"pid": self.pid, "starttime": self.starttime, "comm": self.comm,
                "policy": self.old_policy, "priority": self.old_priority}


@dataclass(frozen=True)
class HostPlan:
    actions: tuple[HostAction, ...] = ()
    left_alone: tuple[LeftAlone, ...] = ()
    compliant: frozenset[str] = frozenset()


class _Planner:
    def __init__(self, partition: Partition, tuning: HostTuningConfig, vcpu_priority: int,
                 refused: Mapping[int, str]):
        self.partition = partition
        self.tuning = tuning
        self.vcpu_priority = vcpu_priority
        self.refused = refused
        self.actions: list[HostAction] = []
        self.left: list[LeftAlone] = []
        self.compliant: set[str] = set()

    def workqueues(self, masks: Iterable[WqMask]) -> None:
        for wq in masks:
            key = f"{HostKind.WORKQUEUE_CPUMASK}:{wq.path}"
            target = off_realtime(wq.cpus, self.partition)
            if target is None:
                self.compliant.add(key)
                continue
            self.actions.append(WorkqueueMask(key, wq.label, wq.text, format_kernel_hexmask(target),
                                              name=wq.name, path=wq.path, cpus=target))

    def default_irq(self, default: tuple[str, frozenset[int]] | None) -> None:
        if default is None:
            return
        text, cpus = default
        target = off_realtime(cpus, self.partition)
        if target is None:
            self.compliant.add(DEFAULT_IRQ_KEY)
        else:
            self.actions.append(DefaultIrqAffinity(DEFAULT_IRQ_KEY, "default_smp_affinity", text,
                                                   format_kernel_hexmask(target), cpus=target))

    def irqs(self, irqs: Iterable[Irq]) -> None:
        for irq in irqs:
            key = f"{HostKind.IRQ_AFFINITY}:{irq.irq}"
            target = off_realtime(irq.affinity, self.partition)
            if target is None:
                self.compliant.add(key)
            elif irq.irq in self.refused:
                self.left.append(LeftAlone("irq", irq.label, irq.affinity_text, self.refused[irq.irq]))
            else:
                self.actions.append(IrqAffinity(key, irq.label, irq.affinity_text, format_cpulist(target),
                                                irq=irq.irq, cpus=target))

    def _leave(self, kt: KThread, reason: str) -> None:
        self.left.append(LeftAlone("kthread", kt.label, format_cpulist(kt.affinity), reason))

    def _priority(self, kt: KThread, target: int) -> None:
        key = f"{HostKind.KTHREAD_PRIORITY}:{kt.pid}:{kt.starttime}"
        if not self.tuning.kthread_priorities:
            self._leave(kt, "host_tuning.kthread_priorities is off")
        elif kt.policy in REALTIME_POLICIES and kt.priority >= target:
            self.compliant.add(key)
        else:
            self.actions.append(KThreadPriority(
                key, kt.label, f"{kt.policy} {kt.priority}", f"fifo {target}", pid=kt.pid,
                starttime=kt.starttime, comm=kt.comm, policy=Policy.FIFO, priority=target,
                old_policy=kt.policy, old_priority=kt.priority))

    def _movable_reason(self, irq: int | None) -> str | None:
        """Why a movable kthread stays (a switch is off, its IRQ refuses), or None."""
        if not self.tuning.kthreads:
            return "host_tuning.kthreads is off"
        if irq is None:
            return None
        if not self.tuning.irqs:
            return f"follows IRQ {irq}, and host_tuning.irqs is off"
        if irq in self.refused:
            return f"follows IRQ {irq}, which refuses affinity changes"
        return None

    def kthread(self, kt: KThread) -> None:
        cls = classify(kt, self.partition, vcpu_priority=self.vcpu_priority)
        key = f"{HostKind.KTHREAD_AFFINITY}:{kt.pid}:{kt.starttime}"
        if cls.kind is KThreadAction.OK:
            if kt.movable:
                self.compliant.add(key)
        elif cls.kind in (KThreadAction.GUEST, KThreadAction.LEFT_ALONE):
            self._leave(kt, cls.reason)
        elif cls.kind is KThreadAction.PRIORITY:
            assert cls.target_priority is not None
            self._priority(kt, cls.target_priority)
        elif (reason := self._movable_reason(cls.irq)) is not None:
            self._leave(kt, reason)
        else:
            assert cls.target_cpus is not None
            self.actions.append(KThreadAffinity(key, kt.label, format_cpulist(kt.affinity),
                                                format_cpulist(cls.target_cpus), pid=kt.pid,
                                                starttime=kt.starttime, comm=kt.comm, cpus=cls.target_cpus))


def plan_host_partition(
    snapshot: HostSnapshot,
    partition: Partition,
    tuning: HostTuningConfig | None = None,
    *,
    vcpu_priority: int = 1,
    refused_irqs: Mapping[int, str] | Iterable[int] = (),
) -> HostPlan:
    """Decide what to change.  ``refused_irqs`` are IRQs that refused a new
    affinity before (managed IRQs): reported as left alone instead of being
    retried, and so are their ``irq/N-…`` handler threads."""
    tuning = tuning or HostTuningConfig()
    if not partition.realtime:
        return HostPlan()
    refused = dict(refused_irqs) if isinstance(refused_irqs, Mapping) else dict.fromkeys(refused_irqs, "refused before")
    p = _Planner(partition, tuning, vcpu_priority, refused)
    if tuning.workqueues:
        p.workqueues(snapshot.workqueues)
    if tuning.irqs:
        p.default_irq(snapshot.default_affinity)
        p.irqs(snapshot.irqs)
    for kt in snapshot.kthreads:
        p.kthread(kt)
    actions = sorted(p.actions, key=lambda a: KIND_ORDER[a.kind])
    return HostPlan(tuple(actions), tuple(p.left), frozenset(p.compliant))
