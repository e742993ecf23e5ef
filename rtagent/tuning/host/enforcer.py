"""The host partition enforcer: plan + apply on every resync, restore on request.

The syscalls and writes go through the kernel floor; every failure is
classified by its one errno policy (refused and vanished are normal, only
errors make a report not ``ok``).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterable
from typing import Any

from ...config import HostTuningConfig, Partition
from ...cpulist import CpuListError, format_cpulist, parse_cpulist, parse_hexmask
from ...kernel import Kernel, outcome_of
from ...kernel.errors import describe, refusal_reason
from ...kernel.irqbalance import detect_irqbalance
from ...vocab import HostKind, Outcome
from .conflicts import IrqConflictDetector
from .kthreads import KThread
from .ledger import Ledger
from .plan import (
    DEFAULT_IRQ_KEY,
    KIND_ORDER,
    DefaultIrqAffinity,
    HostAction,
    HostPlan,
    HostSnapshot,
    IrqAffinity,
    KThreadAffinity,
    KThreadPriority,
    WorkqueueMask,
    plan_host_partition,
    read_snapshot,
)
from .report import HostReport, ItemResult

__all__ = ["HostPartitionEnforcer"]

log = logging.getLogger("rtagent.hostpart")


class HostPartitionEnforcer:
    """The stateful object the daemon keeps for its lifetime.

    ``enforce(vcpu_priority)`` plans and applies (``vcpu_priority``: the
    highest FIFO priority of the running realtime vCPUs, see
    :mod:`.priority`; per-CPU kthreads are raised above it), ``plan`` and
    ``apply`` are its two halves, ``restore`` puts back every saved original.
    A *correction* is a change to an item this enforcer had already brought
    into line (saved, or seen compliant on the previous pass): drift.
    """

    def __init__(self, partition: Partition, tuning: HostTuningConfig | None = None, *,
                 kernel: Kernel | None = None, vcpu_priority: int = 1, state_file: str | None = None,
                 clock=time.monotonic):
        self.partition = partition
        self.tuning = tuning or HostTuningConfig()
        self.kernel = kernel or Kernel()
        self.vcpu_priority = vcpu_priority
        self.state_file = state_file or self.tuning.state_file
        self.ledger = Ledger(self.state_file)
        self.clock = clock
        self.conflicts = IrqConflictDetector(self.tuning.irq_conflict_threshold, self.tuning.irq_conflict_window_s)
        self._known_good: set[str] = set()
        self._plan: HostPlan | None = None
        # irq -> (affinity text when refused, reason): not retried while the
        # affinity stays the same.
        self._refused_irqs: dict[int, tuple[str, str]] = {}

    # -- planning -------------------------------------------------------------

    def snapshot(self) -> HostSnapshot:
        return read_snapshot(self.kernel)

    def plan(self, vcpu_priority: int | None = None) -> list[HostAction]:
        snap = self.snapshot()
        refused = {}
        current = {i.irq: i.affinity_text for i in snap.irqs}
        for irq, (text, reason) in list(self._refused_irqs.items()):
            if current.get(irq) == text:
                refused[irq] = reason
            else:
                del self._refused_irqs[irq]  # gone or changed: try again
        self._plan = plan_host_partition(
            snap, self.partition, self.tuning,
            vcpu_priority=self.vcpu_priority if vcpu_priority is None else vcpu_priority,
            refused_irqs=refused,
        )
        return list(self._plan.actions)

    def enforce(self, vcpu_priority: int | None = None) -> HostReport:
        return self.apply(self.plan(vcpu_priority))

    # -- applying -------------------------------------------------------------

    def _save_originals(self, actions: list[HostAction], report: HostReport) -> tuple[list[str], bool]:
        """Record the originals of items changed for the first time, and write
        them before any change.  Returns (new keys, whether saving failed)."""
        new_keys = [a.key for a in actions if self.ledger.add(a.key, {"kind": str(a.kind), "item": a.item,
                                                                      **a.original()})]
        if not new_keys:
            return new_keys, False
        try:
            self.ledger.save()
        except OSError as err:
            report.errors.append(f"cannot write state file {self.state_file}: {describe(err)}")
            self.ledger.drop(new_keys)
            return new_keys, True
        return new_keys, False

    def apply(self, actions: Iterable[HostAction]) -> HostReport:
        actions = sorted(actions, key=lambda a: KIND_ORDER[a.kind])
        report = HostReport("enforce", self.partition, state_file=self.state_file)
        if self._plan is not None:
            report.left_alone = list(self._plan.left_alone)
        try:
            previously = self.ledger.keys() | self._known_good
        except OSError as err:
            report.errors.append(str(err.strerror or err))
            report.results = [ItemResult(a.kind, a.key, a.item, a.before, a.after, Outcome.ERROR,
                                         "original value could not be saved") for a in actions]
            return report
        new_keys, save_failed = self._save_originals(actions, report)
        changed: set[str] = set()
        prune: list[str] = []
        for a in actions:
            if save_failed and a.key in new_keys:
                report.results.append(ItemResult(a.kind, a.key, a.item, a.before, a.after, Outcome.ERROR,
                                                 "not changed: original value could not be saved"))
                continue
            result = self._apply_one(a, a.key in previously)
            report.results.append(result)
            if result.status is Outcome.CHANGED:
                changed.add(a.key)
                self._note_conflict(a, result, report)
            elif a.key in new_keys:
                prune.append(a.key)  # not changed: nothing to restore
        self._finish(report, changed, prune)
        return report

    def _note_conflict(self, a: HostAction, result: ItemResult, report: HostReport) -> None:
        if not (isinstance(a, IrqAffinity) and result.correction):
            return
        now = self.clock()
        if self.conflicts.record(a.irq, now):
            report.conflicts.append({"irq": a.irq, "item": a.item, "corrections": self.conflicts.count(a.irq, now),
                                     "window_s": self.conflicts.window_s})

    def _finish(self, report: HostReport, changed: set[str], prune: list[str]) -> None:
        if prune:
            self.ledger.drop(prune)
            try:
                self.ledger.save()
            except OSError as err:
                report.errors.append(f"cannot write state file {self.state_file}: {describe(err)}")
        if self._plan is not None:
            self._known_good = set(self._plan.compliant) | changed
        else:
            self._known_good |= changed
        if report.conflicts:
            report.irqbalance = detect_irqbalance(self.kernel)

    def _change(self, a: HostAction) -> None:
        k = self.kernel
        if isinstance(a, KThreadAffinity):
            self._kthread(a.pid, a.starttime, a.comm)
            k.tasks.set_affinity(a.pid, a.cpus)
        elif isinstance(a, KThreadPriority):
            self._kthread(a.pid, a.starttime, a.comm)
            k.tasks.set_scheduler(a.pid, a.policy, a.priority)
        elif isinstance(a, IrqAffinity):
            k.irqs.set_affinity(a.irq, a.cpus)
        elif isinstance(a, DefaultIrqAffinity):
            k.irqs.set_default_affinity(a.cpus)
        elif isinstance(a, WorkqueueMask):
            k.workqueues.set_mask_text(a.name, a.after)
        else:  # pragma: no cover - planner bug
            raise TypeError(f"unknown host action {a!r}")

    def _apply_one(self, a: HostAction, previously: bool) -> ItemResult:
        try:
            self._change(a)
        except OSError as err:
            status = outcome_of(err)
            detail = refusal_reason(err) if status is Outcome.REFUSED and a.kind is HostKind.IRQ_AFFINITY \
                else describe(err)
            if status is Outcome.VANISHED:
                log.debug("%s vanished before it could be changed (%s)", a.item, detail)
            elif status is Outcome.REFUSED:
                log.info("%s: %s → %s refused: %s", a.item, a.before, a.after, detail)
                if isinstance(a, IrqAffinity):
                    self._refused_irqs[a.irq] = (a.before, f"refused: {detail}")
            else:
                log.warning("%s: %s → %s failed: %s", a.item, a.before, a.after, detail)
            return ItemResult(a.kind, a.key, a.item, a.before, a.after, status, detail)
        return ItemResult(a.kind, a.key, a.item, a.before, a.after, Outcome.CHANGED, "", previously)

    def _kthread(self, pid: int | None, starttime: int | None, comm: str | None) -> KThread:
        """The kernel thread planned for, re-read right before a syscall: PID
        0/1 is refused outright, and a PID reused since (another start time,
        or no longer a kernel thread) is treated as vanished."""
        if pid is None or pid <= 1:
            raise PermissionError(errno.EPERM, "refusing to touch PID 0/1")
        task = self.kernel.tasks.kthread(pid)
        if task is None or task.stat.starttime != starttime:
            raise ProcessLookupError(errno.ESRCH, f"kernel thread {pid} ({comm}) is gone")
        return KThread.from_task(task)

    # -- restoring ------------------------------------------------------------

    def restore(self) -> HostReport:
        """Put back every saved original; remove the state file when done.
        Entries that fail with an error stay in the file for another try."""
        report = HostReport("restore", self.partition, state_file=self.state_file)
        try:
            saved = self.ledger.entries()
        except OSError as err:
            report.errors.append(str(err.strerror or err))
            return report
        order = sorted(saved.items(), key=lambda kv: (KIND_ORDER.get(kv[1].get("kind"), 9), _restore_rank(kv[0])))
        done = []
        for key, entry in order:
            status, detail, before, after = self._restore_one(key, entry)
            report.results.append(ItemResult(entry.get("kind", "?"), key, entry.get("item", key),
                                             before, after, status, detail))
            if status is not Outcome.ERROR:
                done.append(key)
        self.ledger.drop(done)
        try:
            self.ledger.save()
        except OSError as err:
            report.errors.append(f"cannot update state file {self.state_file}: {describe(err)}")
        self._known_good.clear()
        self._refused_irqs.clear()
        return report

    def _restore_one(self, key: str, entry: dict[str, Any]) -> tuple[Outcome, str, str, str]:
        kind = entry.get("kind")
        try:
            if kind == HostKind.KTHREAD_AFFINITY:
                return self._restore_kthread_affinity(entry)
            if kind == HostKind.KTHREAD_PRIORITY:
                return self._restore_kthread_priority(entry)
            if kind == HostKind.IRQ_AFFINITY and key != DEFAULT_IRQ_KEY and entry.get("irq") is not None:
                return self._restore_irq(int(entry["irq"]), entry["value"])
            if kind == HostKind.IRQ_AFFINITY:
                return self._restore_default_irq(entry["value"])
            if kind == HostKind.WORKQUEUE_CPUMASK:
                return self._restore_workqueue(entry)
            return Outcome.ERROR, f"unknown entry kind {kind!r}", "", ""
        except OSError as err:
            status = outcome_of(err)
            if status is Outcome.VANISHED:
                log.debug("%s vanished before it could be restored", entry.get("item"))
            return status, describe(err), "", entry.get("value", "")
        except (KeyError, ValueError, TypeError, CpuListError) as err:
            return Outcome.ERROR, f"malformed state entry: {err}", "", ""

    def _restore_kthread_affinity(self, entry: dict[str, Any]) -> tuple[Outcome, str, str, str]:
        try:
            kt = self._kthread(int(entry["pid"]), int(entry["starttime"]), entry.get("comm"))
        except ProcessLookupError as err:
            return Outcome.VANISHED, str(err.strerror), "", ""
        want = parse_cpulist(entry["value"], allow_empty=True)
        before = format_cpulist(kt.affinity)
        if kt.affinity == want:
            return Outcome.UNCHANGED, "", before, entry["value"]
        self.kernel.tasks.set_affinity(kt.pid, want)
        return Outcome.CHANGED, "", before, entry["value"]

    def _restore_kthread_priority(self, entry: dict[str, Any]) -> tuple[Outcome, str, str, str]:
        try:
            kt = self._kthread(int(entry["pid"]), int(entry["starttime"]), entry.get("comm"))
        except ProcessLookupError as err:
            return Outcome.VANISHED, str(err.strerror), "", ""
        before = f"{kt.policy} {kt.priority}"
        after = f"{entry['policy']} {entry['priority']}"
        if (kt.policy, kt.priority) == (entry["policy"], int(entry["priority"])):
            return Outcome.UNCHANGED, "", before, after
        self.kernel.tasks.set_scheduler(kt.pid, entry["policy"], int(entry["priority"]))
        return Outcome.CHANGED, "", before, after

    def _restore_irq(self, irq: int, value: str) -> tuple[Outcome, str, str, str]:
        now = self.kernel.irqs.read(irq)
        if now is None:
            raise FileNotFoundError(errno.ENOENT, f"IRQ {irq} is gone")
        if now.affinity == parse_cpulist(value, allow_empty=True):
            return Outcome.UNCHANGED, "", now.affinity_text, value
        self.kernel.irqs.set_affinity_text(irq, value)
        return Outcome.CHANGED, "", now.affinity_text, value

    def _restore_default_irq(self, value: str) -> tuple[Outcome, str, str, str]:
        now = self.kernel.irqs.default_affinity()
        if now is None:
            raise FileNotFoundError(errno.ENOENT, "default_smp_affinity is gone")
        if now[1] == parse_hexmask(value):
            return Outcome.UNCHANGED, "", now[0], value
        self.kernel.irqs.set_default_affinity_text(value)
        return Outcome.CHANGED, "", now[0], value

    def _restore_workqueue(self, entry: dict[str, Any]) -> tuple[Outcome, str, str, str]:
        # Entries written before the name was saved carry only the path.
        name = entry["name"] if "name" in entry else self.kernel.workqueues.name_of(entry["path"])
        value = entry["value"]
        now = self.kernel.workqueues.read(name)
        if now is None:
            raise FileNotFoundError(errno.ENOENT, f"workqueue {name or '(global)'} is gone")
        if now.cpus == parse_hexmask(value):
            return Outcome.UNCHANGED, "", now.text, value
        self.kernel.workqueues.set_mask_text(name, value)
        return Outcome.CHANGED, "", now.text, value


def _restore_rank(key: str) -> tuple[int, str]:
    # The global workqueue mask before the per-workqueue ones (a per-workqueue
    # mask is clipped to the global one), default_smp_affinity before IRQs.
    if key.endswith("/workqueue/cpumask") or key == DEFAULT_IRQ_KEY:
        return (0, key)
    return (1, key)
