"""The host partition enforcer: kernel threads, IRQs and workqueues off the
realtime CPUs, per-CPU kernel threads above the vCPUs — and back again.

Planning is pure (it reads a :class:`HostSnapshot`, it changes nothing); the
syscalls and file writes happen only in :meth:`HostPartitionEnforcer.apply`
and :meth:`HostPartitionEnforcer.restore`.

Public API
----------

``read_host_snapshot(proc_root="/proc", sys_root="/sys") -> HostSnapshot``
    Kernel threads, IRQ affinities, ``default_smp_affinity`` and workqueue
    cpumasks as the kernel reports them now.

``plan_host_partition(snapshot, partition, tuning=HostTuningConfig(), *,
vcpu_priority=1, refused_irqs=()) -> HostPlan``
    Pure.  ``HostPlan.actions`` is a list of :class:`HostAction` (kind, item,
    before → after), ``HostPlan.left_alone`` what is allowed on a realtime CPU
    but deliberately not touched (with the reason), ``HostPlan.compliant``
    the keys of items that already comply.

``HostPartitionEnforcer(partition, tuning=None, *, vcpu_priority=1,
proc_root="/proc", sys_root="/sys", state_file=None)``
    The stateful object the daemon keeps for its lifetime:

    * ``enforce(vcpu_priority=None) -> HostReport`` — plan + apply; call it on
      every resync.  ``vcpu_priority`` is the highest FIFO priority of the
      running realtime vCPUs (default: the constructor's, normally
      ``realtime.default_priority``); per-CPU kthreads are raised above it.
    * ``plan(vcpu_priority=None) -> list[HostAction]`` and
      ``apply(actions) -> HostReport`` — the two halves, for dry runs.
    * ``restore() -> HostReport`` — put back every saved original value and
      remove the state file.

    The first time an item is changed its original value is written to the
    JSON state file (``host_tuning.state_file``) *before* the change, so a
    crash never loses it; later changes of the same item keep the first
    original.  A fresh enforcer (a restarted daemon, ``rtagent host apply``)
    continues the same file.

``HostReport``
    Per-item :class:`ItemResult` (``status`` one of ``changed``, ``refused``,
    ``vanished``, ``error``, ``unchanged``), ``counts`` (per status),
    ``changes_by_kind`` and ``corrections_by_kind`` over the kinds
    ``kthread_affinity``, ``kthread_priority``, ``irq_affinity``,
    ``workqueue_cpumask``.  A *correction* is a change to an item this
    enforcer had already brought into line (saved in the state file, or seen
    compliant on the previous pass): drift.  The daemon adds
    ``corrections_by_kind`` to its counters.  ``conflicts`` lists IRQs
    corrected more than ``host_tuning.irq_conflict_threshold`` times within
    ``irq_conflict_window_s`` (someone — usually irqbalance — moves them
    back; ``irqbalance`` then says whether it runs and what it bans).
    ``ok`` is False only for errors: refusals (managed IRQs, kthreads that
    reject a new affinity) and vanished threads are normal.

What is never touched: PID 1 and every user process (only ``PF_KTHREAD``
tasks are read), per-VM kernel threads (``kvm-pit/…``, ``kvm-nx-lpage…``,
``vhost-…``: the guest tuning engine owns them), kernel-pinned threads
(``migration/N``, ``cpuhp/N``, ``idle_inject/N``, bound kworkers, anything with
``PF_NO_SETAFFINITY``), and threaded IRQ handlers whose IRQ refused to move.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import HostTuningConfig, Partition
from ..cpulist import CpuListError, format_cpulist, format_hexmask, parse_cpulist, parse_hexmask
from . import irqs as irqmod
from . import kthreads as ktmod
from . import workqueue as wqmod

log = logging.getLogger("rtagent.hostpart")

KINDS = ("kthread_affinity", "kthread_priority", "irq_affinity", "workqueue_cpumask")
STATUSES = ("changed", "refused", "vanished", "error", "unchanged")
STATE_VERSION = 1

# Order of application: workqueues, IRQs, then threads (an IRQ thread follows
# its IRQ), priorities last.
_KIND_ORDER = {"workqueue_cpumask": 0, "irq_affinity": 1, "kthread_affinity": 2, "kthread_priority": 3}


# ---------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class HostSnapshot:
    kthreads: tuple[ktmod.KThread, ...] = ()
    irqs: tuple[irqmod.Irq, ...] = ()
    default_affinity: tuple[str, frozenset[int]] | None = None
    workqueues: tuple[wqmod.WqMask, ...] = ()
    proc_root: str = "/proc"
    sys_root: str = "/sys"


@dataclass(frozen=True)
class HostAction:
    """One change to make.  ``key`` identifies the item in the state file;
    ``original`` is what gets saved the first time the item is changed."""

    kind: str
    key: str
    item: str
    before: str
    after: str
    original: dict[str, Any] = field(default_factory=dict, compare=False)
    pid: int | None = None
    starttime: int | None = None
    comm: str | None = None
    irq: int | None = None
    path: str | None = None
    cpus: frozenset[int] | None = None
    policy: str | None = None
    priority: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "item": self.item, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class LeftAlone:
    kind: str  # "kthread" | "irq"
    item: str
    cpus: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "item": self.item, "cpus": self.cpus, "reason": self.reason}


@dataclass(frozen=True)
class HostPlan:
    actions: tuple[HostAction, ...] = ()
    left_alone: tuple[LeftAlone, ...] = ()
    compliant: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ItemResult:
    kind: str
    key: str
    item: str
    before: str
    after: str
    status: str  # one of STATUSES
    detail: str = ""
    correction: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "item": self.item, "before": self.before, "after": self.after,
            "status": self.status, "detail": self.detail, "correction": self.correction,
        }


@dataclass
class HostReport:
    operation: str  # "enforce" | "restore"
    partition: Partition
    results: list[ItemResult] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    state_file: str = ""
    irqbalance: irqmod.IrqbalanceInfo | None = None

    def _by(self, status: str) -> list[ItemResult]:
        return [r for r in self.results if r.status == status]

    @property
    def changed(self) -> list[ItemResult]:
        return self._by("changed")

    @property
    def refused(self) -> list[ItemResult]:
        return self._by("refused")

    @property
    def vanished(self) -> list[ItemResult]:
        return self._by("vanished")

    @property
    def failed(self) -> list[ItemResult]:
        return self._by("error")

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.results:
            out[r.status] += 1
        out["errors"] = out.pop("error") + len(self.errors)
        out["left_alone"] = len(self.left_alone)
        out["conflicts"] = len(self.conflicts)
        return out

    @property
    def changes_by_kind(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for r in self.changed:
            out[r.kind] += 1
        return out

    @property
    def corrections_by_kind(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for r in self.changed:
            if r.correction:
                out[r.kind] += 1
        return out

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "ok": self.ok,
            "partition": self.partition.to_json(),
            "state_file": self.state_file,
            "counts": self.counts,
            "changes_by_kind": self.changes_by_kind,
            "corrections_by_kind": self.corrections_by_kind,
            "results": [r.to_json() for r in self.results],
            "left_alone": [a.to_json() for a in self.left_alone],
            "conflicts": self.conflicts,
            "errors": self.errors,
            "irqbalance": None if self.irqbalance is None else self.irqbalance.to_json(),
        }


# ---------------------------------------------------------------------------
# reading and planning


def read_host_snapshot(proc_root: str = "/proc", sys_root: str = "/sys") -> HostSnapshot:
    return HostSnapshot(
        kthreads=tuple(ktmod.read_kthreads(proc_root)),
        irqs=tuple(irqmod.read_irqs(proc_root)),
        default_affinity=irqmod.read_default_affinity(proc_root),
        workqueues=tuple(wqmod.read_workqueue_masks(sys_root)),
        proc_root=proc_root,
        sys_root=sys_root,
    )


def _kt_key(kind: str, kt: ktmod.KThread) -> str:
    return f"{kind}:{kt.pid}:{kt.starttime}"


def plan_host_partition(
    snapshot: HostSnapshot,
    partition: Partition,
    tuning: HostTuningConfig | None = None,
    *,
    vcpu_priority: int = 1,
    refused_irqs: Mapping[int, str] | Iterable[int] = (),
) -> HostPlan:
    """Decide what to change.  Pure: no I/O, no syscalls.

    ``refused_irqs`` are IRQs that refused a new affinity before (managed
    IRQs): they are reported as left alone instead of being retried, and so
    are their ``irq/N-…`` handler threads.
    """
    tuning = tuning or HostTuningConfig()
    refused = dict(refused_irqs) if isinstance(refused_irqs, Mapping) else dict.fromkeys(refused_irqs, "refused before")
    actions: list[HostAction] = []
    left: list[LeftAlone] = []
    compliant: set[str] = set()
    if not partition.realtime:
        return HostPlan()

    if tuning.workqueues:
        for wq in snapshot.workqueues:
            key = f"workqueue_cpumask:{wq.path}"
            target = wqmod.wq_target(wq.cpus, partition)
            if target is None:
                compliant.add(key)
                continue
            actions.append(HostAction(
                kind="workqueue_cpumask", key=key, item=wq.label,
                before=wq.text, after=_hex(target),
                original={"path": wq.path, "value": wq.text},
                path=wq.path, cpus=target,
            ))

    if tuning.irqs:
        if snapshot.default_affinity is not None:
            text, cpus = snapshot.default_affinity
            key = "irq_affinity:default"
            target = irqmod.irq_target(cpus, partition)
            if target is None:
                compliant.add(key)
            else:
                actions.append(HostAction(
                    kind="irq_affinity", key=key, item="default_smp_affinity",
                    before=text, after=_hex(target),
                    original={"path": str(Path(snapshot.proc_root, "irq", "default_smp_affinity")), "value": text},
                    path=str(Path(snapshot.proc_root, "irq", "default_smp_affinity")), cpus=target,
                ))
        for irq in snapshot.irqs:
            key = f"irq_affinity:{irq.irq}"
            target = irqmod.irq_target(irq.affinity, partition)
            if target is None:
                compliant.add(key)
                continue
            if irq.irq in refused:
                left.append(LeftAlone("irq", irq.label, irq.affinity_text, refused[irq.irq]))
                continue
            actions.append(HostAction(
                kind="irq_affinity", key=key, item=irq.label,
                before=irq.affinity_text, after=format_cpulist(target),
                original={"irq": irq.irq, "value": irq.affinity_text},
                irq=irq.irq, cpus=target,
            ))

    for kt in snapshot.kthreads:
        cls = ktmod.classify(kt, partition, vcpu_priority=vcpu_priority)
        cpus_text = format_cpulist(kt.affinity)
        if cls.kind == "ok":
            if kt.movable:
                compliant.add(_kt_key("kthread_affinity", kt))
            continue
        if cls.kind in ("guest", "left_alone"):
            left.append(LeftAlone("kthread", kt.label, cpus_text, cls.reason))
            continue
        if cls.kind == "priority":
            key = _kt_key("kthread_priority", kt)
            if not tuning.kthread_priorities:
                left.append(LeftAlone("kthread", kt.label, cpus_text, "host_tuning.kthread_priorities is off"))
                continue
            assert cls.target_priority is not None
            if kt.policy in ("fifo", "rr") and kt.priority >= cls.target_priority:
                compliant.add(key)
                continue
            actions.append(HostAction(
                kind="kthread_priority", key=key, item=kt.label,
                before=f"{kt.policy} {kt.priority}", after=f"fifo {cls.target_priority}",
                original={"pid": kt.pid, "starttime": kt.starttime, "comm": kt.comm,
                          "policy": kt.policy, "priority": kt.priority},
                pid=kt.pid, starttime=kt.starttime, comm=kt.comm,
                policy="fifo", priority=cls.target_priority,
            ))
            continue
        # "move" or "irq_thread"
        if not tuning.kthreads:
            left.append(LeftAlone("kthread", kt.label, cpus_text, "host_tuning.kthreads is off"))
            continue
        if cls.kind == "irq_thread":
            if not tuning.irqs:
                left.append(LeftAlone("kthread", kt.label, cpus_text,
                                      f"follows IRQ {cls.irq}, and host_tuning.irqs is off"))
                continue
            if cls.irq in refused:
                left.append(LeftAlone("kthread", kt.label, cpus_text,
                                      f"follows IRQ {cls.irq}, which refuses affinity changes"))
                continue
        assert cls.target_cpus is not None
        actions.append(HostAction(
            kind="kthread_affinity", key=_kt_key("kthread_affinity", kt), item=kt.label,
            before=cpus_text, after=format_cpulist(cls.target_cpus),
            original={"pid": kt.pid, "starttime": kt.starttime, "comm": kt.comm, "value": cpus_text},
            pid=kt.pid, starttime=kt.starttime, comm=kt.comm, cpus=cls.target_cpus,
        ))
    actions.sort(key=lambda a: _KIND_ORDER[a.kind])
    return HostPlan(tuple(actions), tuple(left), frozenset(compliant))


def _hex(cpus: frozenset[int]) -> str:
    # The kernel prints bitmaps without leading zero groups ("3", "1"); keep
    # that form so before/after read alike.
    text = format_hexmask(cpus)
    if "," in text:
        return text
    return text.lstrip("0") or "0"


# ---------------------------------------------------------------------------
# the enforcer


def _classify_oserror(err: OSError) -> str:
    if isinstance(err, (ProcessLookupError, FileNotFoundError)) or err.errno in (errno.ESRCH, errno.ENOENT):
        return "vanished"
    if irqmod.is_refusal(err):
        return "refused"
    return "error"


def _describe(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0, str(err.errno))
    return f"{name}: {err.strerror or err}"


class HostPartitionEnforcer:
    """Keeps the host partition; see the module docstring."""

    def __init__(
        self,
        partition: Partition,
        tuning: HostTuningConfig | None = None,
        *,
        vcpu_priority: int = 1,
        proc_root: str = "/proc",
        sys_root: str = "/sys",
        etc_root: str = "/etc",
        state_file: str | None = None,
        clock=time.monotonic,
    ):
        self.partition = partition
        self.tuning = tuning or HostTuningConfig()
        self.vcpu_priority = vcpu_priority
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.etc_root = etc_root
        self.state_file = state_file or self.tuning.state_file
        self.clock = clock
        self.conflicts = irqmod.IrqConflictDetector(self.tuning.irq_conflict_threshold,
                                                    self.tuning.irq_conflict_window_s)
        self._saved: dict[str, dict[str, Any]] | None = None
        self._known_good: set[str] = set()
        self._plan: HostPlan | None = None
        # irq -> (affinity text when refused, reason): not retried while the
        # affinity stays the same.
        self._refused_irqs: dict[int, tuple[str, str]] = {}

    # -- state file ---------------------------------------------------------

    def load_saved(self) -> dict[str, dict[str, Any]]:
        """The saved originals (``{key: entry}``), read once from the state file."""
        if self._saved is None:
            self._saved = {}
            try:
                data = json.loads(Path(self.state_file).read_text())
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as err:
                raise OSError(errno.EIO, f"state file {self.state_file} unreadable: {err}") from None
            else:
                if isinstance(data, dict) and isinstance(data.get("entries"), dict):
                    self._saved = dict(data["entries"])
        return self._saved

    def _write_saved(self) -> None:
        saved = self.load_saved()
        path = Path(self.state_file)
        if not saved:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        body = json.dumps({"version": STATE_VERSION, "written_by": "rtagent", "entries": saved},
                          indent=1, sort_keys=True)
        with open(tmp, "w") as fh:
            fh.write(body + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # -- planning -------------------------------------------------------------

    def snapshot(self) -> HostSnapshot:
        return read_host_snapshot(self.proc_root, self.sys_root)

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

    def apply(self, actions: Iterable[HostAction]) -> HostReport:
        actions = sorted(actions, key=lambda a: _KIND_ORDER[a.kind])
        report = HostReport("enforce", self.partition, state_file=self.state_file)
        if self._plan is not None:
            report.left_alone = list(self._plan.left_alone)
        try:
            saved = self.load_saved()
        except OSError as err:
            report.errors.append(str(err.strerror or err))
            for a in actions:
                report.results.append(ItemResult(a.kind, a.key, a.item, a.before, a.after, "error",
                                                 "original value could not be saved"))
            return report
        previously = set(saved) | self._known_good
        new_keys = [a.key for a in actions if a.key not in saved]
        for a in actions:
            if a.key not in saved:
                saved[a.key] = {"kind": a.kind, "item": a.item, **a.original}
        save_error = None
        if new_keys:
            try:
                self._write_saved()
            except OSError as err:
                save_error = f"cannot write state file {self.state_file}: {_describe(err)}"
                report.errors.append(save_error)
                for k in new_keys:
                    saved.pop(k, None)
        now = self.clock()
        prune: list[str] = []
        changed_keys: set[str] = set()
        for a in actions:
            if save_error and a.key in new_keys:
                report.results.append(ItemResult(a.kind, a.key, a.item, a.before, a.after, "error",
                                                 "not changed: original value could not be saved"))
                continue
            status, detail = self._apply_one(a)
            correction = status == "changed" and a.key in previously
            report.results.append(ItemResult(a.kind, a.key, a.item, a.before, a.after, status, detail, correction))
            if status == "changed":
                changed_keys.add(a.key)
                if a.kind == "irq_affinity" and a.irq is not None and correction:
                    if self.conflicts.record(a.irq, now):
                        report.conflicts.append({
                            "irq": a.irq, "item": a.item,
                            "corrections": self.conflicts.count(a.irq, now),
                            "window_s": self.conflicts.window_s,
                        })
            elif a.key in new_keys:
                prune.append(a.key)
            if status == "refused" and a.kind == "irq_affinity" and a.irq is not None:
                self._refused_irqs[a.irq] = (a.before, f"refused: {detail}")
        if prune:
            for k in prune:
                saved.pop(k, None)
            try:
                self._write_saved()
            except OSError as err:
                report.errors.append(f"cannot write state file {self.state_file}: {_describe(err)}")
        if self._plan is not None:
            self._known_good = set(self._plan.compliant) | changed_keys
        else:
            self._known_good |= changed_keys
        if report.conflicts:
            report.irqbalance = irqmod.detect_irqbalance(self.proc_root, self.etc_root, self.sys_root)
        return report

    def _apply_one(self, a: HostAction) -> tuple[str, str]:
        try:
            if a.kind in ("kthread_affinity", "kthread_priority"):
                kt = self._kthread_for(a.pid, a.starttime, a.comm)
                if a.kind == "kthread_affinity":
                    ktmod.set_affinity(kt, a.cpus, self.proc_root)
                else:
                    ktmod.set_policy(kt, a.policy, a.priority, self.proc_root)
            elif a.kind == "irq_affinity":
                if a.irq is None:
                    irqmod.write_raw(a.path, _hex(a.cpus) + "\n")
                else:
                    irqmod.write_irq_affinity(a.irq, a.cpus, self.proc_root)
            elif a.kind == "workqueue_cpumask":
                wqmod.write_mask_text(a.path, _hex(a.cpus))
            else:  # pragma: no cover - planner bug
                return "error", f"unknown kind {a.kind}"
        except OSError as err:
            status = _classify_oserror(err)
            detail = irqmod.refusal_reason(err) if status == "refused" and a.kind == "irq_affinity" else _describe(err)
            if status == "vanished":
                log.debug("%s vanished before it could be changed (%s)", a.item, detail)
            elif status == "refused":
                log.info("%s: %s → %s refused: %s", a.item, a.before, a.after, detail)
            else:
                log.warning("%s: %s → %s failed: %s", a.item, a.before, a.after, detail)
            return status, detail
        return "changed", ""

    def _kthread_for(self, pid: int | None, starttime: int | None, comm: str | None) -> ktmod.KThread:
        if pid is None or pid <= 1:
            raise PermissionError(errno.EPERM, "refusing to touch PID 0/1")
        kt = ktmod.read_kthread(pid, self.proc_root)
        if kt is None or kt.starttime != starttime:
            raise ProcessLookupError(errno.ESRCH, f"kernel thread {pid} ({comm}) is gone")
        return kt

    # -- restoring ------------------------------------------------------------

    def restore(self) -> HostReport:
        """Put back every saved original; remove the state file when done.
        Entries that fail with an error stay in the file for another try."""
        report = HostReport("restore", self.partition, state_file=self.state_file)
        try:
            saved = self.load_saved()
        except OSError as err:
            report.errors.append(str(err.strerror or err))
            return report
        order = sorted(saved.items(), key=lambda kv: (_KIND_ORDER.get(kv[1].get("kind"), 9), _restore_rank(kv[0])))
        for key, entry in order:
            status, detail, before, after = self._restore_one(entry)
            report.results.append(ItemResult(entry.get("kind", "?"), key, entry.get("item", key),
                                             before, after, status, detail))
            if status != "error":
                saved.pop(key, None)
        try:
            self._write_saved()
        except OSError as err:
            report.errors.append(f"cannot update state file {self.state_file}: {_describe(err)}")
        self._known_good.clear()
        self._refused_irqs.clear()
        return report

    def _restore_one(self, entry: dict[str, Any]) -> tuple[str, str, str, str]:
        kind = entry.get("kind")
        try:
            if kind in ("kthread_affinity", "kthread_priority"):
                pid, starttime = int(entry["pid"]), int(entry["starttime"])
                try:
                    kt = self._kthread_for(pid, starttime, entry.get("comm"))
                except ProcessLookupError as err:
                    return "vanished", str(err.strerror), "", ""
                if kind == "kthread_affinity":
                    want = parse_cpulist(entry["value"], allow_empty=True)
                    before = format_cpulist(kt.affinity)
                    if kt.affinity == want:
                        return "unchanged", "", before, entry["value"]
                    ktmod.set_affinity(kt, want, self.proc_root)
                    return "changed", "", before, entry["value"]
                before = f"{kt.policy} {kt.priority}"
                after = f"{entry['policy']} {entry['priority']}"
                if (kt.policy, kt.priority) == (entry["policy"], int(entry["priority"])):
                    return "unchanged", "", before, after
                ktmod.set_policy(kt, entry["policy"], int(entry["priority"]), self.proc_root)
                return "changed", "", before, after
            if kind == "irq_affinity" and entry.get("irq") is not None:
                path = Path(self.proc_root, "irq", str(int(entry["irq"])), "smp_affinity_list")
                before = path.read_text().strip()
                if parse_cpulist(before, allow_empty=True) == parse_cpulist(entry["value"], allow_empty=True):
                    return "unchanged", "", before, entry["value"]
                irqmod.write_raw(path, entry["value"].strip() + "\n")
                return "changed", "", before, entry["value"]
            if kind in ("irq_affinity", "workqueue_cpumask"):
                path = Path(entry["path"])
                before = path.read_text().strip()
                if parse_hexmask(before) == parse_hexmask(entry["value"]):
                    return "unchanged", "", before, entry["value"]
                irqmod.write_raw(path, entry["value"].strip() + "\n")
                return "changed", "", before, entry["value"]
            return "error", f"unknown entry kind {kind!r}", "", ""
        except OSError as err:
            status = _classify_oserror(err)
            if status == "vanished":
                log.debug("%s vanished before it could be restored", entry.get("item"))
            return status, _describe(err), "", entry.get("value", "")
        except (KeyError, ValueError, TypeError, CpuListError) as err:
            return "error", f"malformed state entry: {err}", "", ""


def _restore_rank(key: str) -> tuple[int, str]:
    # The global workqueue mask before the per-workqueue ones (a per-workqueue
    # mask is clipped to the global one), default_smp_affinity before IRQs.
    if key.endswith("/workqueue/cpumask") or key == "irq_affinity:default":
        return (0, key)
    return (1, key)
