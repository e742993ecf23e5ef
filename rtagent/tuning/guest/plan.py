"""Pure planning: what each thread of a guest should look like, and the
ordered actions that get it there from what was observed.

No I/O here.  The rules that keep a host safe live in this module, so they
hold on every path (one-shot apply, daemon reconcile, drift correction):

* a thread only becomes realtime *after* its affinity is narrowed to its
  dedicated pCPU (a FIFO thread with a wide mask may land on a core shared
  with SCHED_OTHER work and starve it);
* a realtime thread that must lose its realtime policy loses it *before* its
  affinity is widened;
* nothing is ever planned above ``realtime.max_priority`` for guest threads
  (kvm-pit, which must preempt the vCPUs, is the documented exception: one
  above the highest vCPU, capped at 99).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ...config import Partition, RealtimeConfig
from ...cpulist import format_cpulist
from ...kernel.cgroups import vcpu_of
from ...model import RealtimeSpec, Violation
from ...vocab import Check
from .observe import Observed, ThreadInfo
from .vmthreads import TIMER_KINDS, Placement, placement

REALTIME = frozenset({"fifo", "rr"})


@dataclass(frozen=True, slots=True)  # one per thread: no instance dict (daemon RSS)
class Want:
    """Desired state of one thread; ``None`` fields are not managed."""

    policy: str | None = None  # "fifo" | "rr" | "other"
    priority: int = 0
    cpus: frozenset[int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "priority": self.priority,
            "cpus": None if self.cpus is None else format_cpulist(self.cpus),
        }


@dataclass(frozen=True, slots=True)  # one per thread: no instance dict (daemon RSS)
class ThreadPlan:
    thread: ThreadInfo
    want: Want
    # "vcpu" | "emulator" | "kthread": the prefix of violation check names.
    check: str
    # How affinity is changed: through libvirt for the threads libvirt owns a
    # cgroup cpuset for, by syscall for the rest.
    pin_via: str = "thread"  # "vcpu" | "emulator" | "iothread" | "thread"
    iothread: int | None = None
    # For kernel workers inside QEMU: the QEMU pid whose main-thread cgroups
    # they may be moved into when their own cpuset forbids the target CPUs.
    join_cgroups_of: int | None = None

    @property
    def policy_ok(self) -> bool:
        w, t = self.want, self.thread
        if w.policy is None:
            return True
        if w.policy in REALTIME:
            return t.policy == w.policy and t.priority == w.priority
        # Non-realtime wanted: any non-realtime policy (batch/idle set by the
        # operator) is acceptable, a realtime one is not.
        return t.policy not in REALTIME and t.policy != "deadline"

    @property
    def affinity_ok(self) -> bool:
        return self.want.cpus is None or self.thread.cpus == self.want.cpus

    @property
    def ok(self) -> bool:
        return self.policy_ok and self.affinity_ok

    def violations(self) -> list[Violation]:
        t = self.thread
        label = f"vCPU {t.vcpu}" if t.role == "vcpu" else f"{t.name!r}"
        out = []
        if not self.affinity_ok:
            out.append(Violation(f"{self.check}_affinity",
                                 f"{label} (tid {t.tid}) runs on CPU {format_cpulist(t.cpus)}, "
                                 f"want {format_cpulist(self.want.cpus or ())}"))
        if not self.policy_ok:
            want = self.want.policy if self.want.policy not in REALTIME else f"{self.want.policy}:{self.want.priority}"
            out.append(Violation(f"{self.check}_policy",
                                 f"{label} (tid {t.tid}) is {t.policy}:{t.priority}, want {want}"))
        return out


# -- actions ------------------------------------------------------------------


@dataclass(frozen=True)
class SetAffinity:
    tid: int
    cpus: frozenset[int]
    via: str = "thread"  # "vcpu" | "emulator" | "iothread" | "thread"
    vcpu: int | None = None
    iothread: int | None = None
    name: str = ""
    before: frozenset[int] = frozenset()
    join_cgroups_of: int | None = None

    def describe(self) -> str:
        return f"{self.name} (tid {self.tid}) affinity {format_cpulist(self.before)} -> {format_cpulist(self.cpus)}"


@dataclass(frozen=True)
class SetScheduler:
    tid: int
    policy: str
    priority: int
    name: str = ""
    before: str = ""
    # The CPU set the thread must be confined to for this change to be safe;
    # the executor re-checks it right before the syscall.
    require_cpus: frozenset[int] | None = None

    def describe(self) -> str:
        return f"{self.name} (tid {self.tid}) policy {self.before} -> {self.policy}:{self.priority}"


Action = SetAffinity | SetScheduler


@dataclass
class DomainPlan:
    threads: list[ThreadPlan] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def realtime_cgroups(self) -> set[str]:
        """cpu-controller cgroups of the threads that must run realtime."""
        return {
            tp.thread.cgroup_cpu
            for tp in self.threads
            if tp.want.policy in REALTIME and tp.thread.cgroup_cpu is not None
            and tp.thread.kind not in TIMER_KINDS
        }


def _vcpu_want(spec: RealtimeSpec, t: ThreadInfo, partition: Partition) -> Want:
    vs = spec.vcpu(t.vcpu) if t.vcpu is not None else None
    if vs is None:
        # A vCPU the XML does not describe (hotplugged beyond <vcpu>?):
        # keep it away from the realtime pCPUs, never realtime.
        return Want(policy="other", cpus=_fallback_cpus(spec, partition))
    if vs.realtime and _on_realtime_cpus(vs.cpus, partition):
        return Want(policy=vs.policy, priority=vs.priority, cpus=vs.cpus)
    # Not realtime, or realtime but pinned outside the host's realtime CPUs
    # (none at all with realtime_cpus = "auto" and no isolcpus/nohz_full):
    # never FIFO there, where it would starve kernel threads and this agent.
    return Want(policy="other", cpus=vs.cpus or _fallback_cpus(spec, partition))


def _on_realtime_cpus(cpus: frozenset[int], partition: Partition) -> bool:
    return bool(cpus) and cpus <= partition.realtime


def _fallback_cpus(spec: RealtimeSpec, partition: Partition) -> frozenset[int]:
    """Where unpinned non-realtime work of a realtime guest goes: the
    emulator set, else the host's housekeeping CPUs."""
    return spec.emulator_cpus or partition.housekeeping


def _kvm_pit_want(spec: RealtimeSpec, partition: Partition, rt: RealtimeConfig) -> Want | None:
    if rt.kvm_pit == "off":
        return None
    if rt.kvm_pit == "housekeeping":
        return Want(policy="other", cpus=partition.housekeeping)
    # KubeVirt's placement: the PIT thread injects timer interrupts into the
    # guest, so it must preempt the vCPUs (one priority above) and sit on a
    # CPU where it does not compete with a realtime vCPU.
    if not any(_on_realtime_cpus(v.cpus, partition) for v in spec.realtime_vcpus):
        return Want(policy="other", cpus=partition.housekeeping)  # no vCPU to serve in realtime
    top = max((v.priority for v in spec.realtime_vcpus), default=rt.default_priority)
    nonrt = [v for v in spec.nonrealtime_vcpus if v.cpus]
    cpus = nonrt[0].cpus if nonrt else (spec.emulator_cpus or partition.housekeeping)
    return Want(policy="fifo", priority=min(top + 1, 99), cpus=cpus)


def plan_domain(spec: RealtimeSpec, observed: Observed, partition: Partition, rt: RealtimeConfig,
                kept_off: frozenset[int] = frozenset()) -> DomainPlan:
    """Desired state of every thread of a valid realtime guest, and the
    guest-level violations (vCPU count, host partition).  ``kept_off``: pCPUs
    owned by another guest's realtime vCPU (claims.py), which none of this
    guest's threads may use."""
    plan = DomainPlan()
    if not (spec.realtime and spec.valid):
        return plan
    seen_vcpus = _plan_vcpus(plan, spec, observed, partition)
    _plan_others(plan, spec, observed, partition, rt)
    if kept_off:
        plan.threads = [_keep_off(tp, kept_off, spec, partition) for tp in plan.threads]
    missing = sorted(v.vcpu for v in spec.realtime_vcpus if v.vcpu not in seen_vcpus)
    if missing:
        plan.violations.append(Violation(Check.VCPU_COUNT, f"realtime vCPU {format_cpulist(missing)} has no thread "
                                          f"(found {len(seen_vcpus)} vCPU threads, XML has {len(spec.vcpus)})"))
    plan.violations += _partition_violations(spec, partition)
    return plan


def _plan_vcpus(plan: DomainPlan, spec: RealtimeSpec, observed: Observed, partition: Partition) -> set[int | None]:
    seen: set[int | None] = set()
    per_vcpu_cgroups = any(_in_own_vcpu_cgroup(t) for t in observed.threads if t.role == "vcpu")
    for t in observed.threads:
        if t.role != "vcpu":
            continue
        seen.add(t.vcpu)
        want = _vcpu_want(spec, t, partition)
        if per_vcpu_cgroups and not _in_own_vcpu_cgroup(t) and want.policy in REALTIME:
            # libvirt has not yet moved this (new) vCPU thread into its
            # vcpuN cgroup.  A realtime thread cannot be moved into a
            # cgroup without RT budget, so tuning it now would make
            # libvirt's move (and the hotplug) fail: wait for the move.
            plan.violations.append(Violation(
                Check.VCPU_PENDING, f"vCPU {t.vcpu} (tid {t.tid}) is not yet in its vcpu{t.vcpu} cgroup "
                f"(in {t.cgroup_cpu}); tuned once libvirt has placed it"))
            continue
        plan.threads.append(ThreadPlan(t, want, "vcpu", pin_via="vcpu"))
    return seen


def _plan_others(plan: DomainPlan, spec: RealtimeSpec, observed: Observed, partition: Partition,
                 rt: RealtimeConfig) -> None:
    """Emulator threads, iothreads and the per-VM kernel threads."""
    iothread_cpus = {t.iothread: t.cpus for t in spec.iothreads}
    emulator_cpus = spec.emulator_cpus or partition.housekeeping
    for t in observed.threads:
        if t.role == "vcpu":
            continue
        if t.role == "emulator":
            io = _iothread_id(t.name)
            if io is not None and iothread_cpus.get(io):
                plan.threads.append(ThreadPlan(t, Want(policy="other", cpus=iothread_cpus[io]),
                                               "emulator", pin_via="iothread", iothread=io))
            else:
                plan.threads.append(ThreadPlan(t, Want(policy="other", cpus=emulator_cpus), "emulator",
                                               pin_via="emulator"))
        else:
            # Per-VM kernel workers inside QEMU (vhost, kvm-nx-lpage-recovery):
            # emulator-class work, off the realtime pCPUs.  The kernel creates
            # kvm-nx-lpage-recovery from whichever vCPU runs first, so it may
            # sit in a realtime vCPU's cpuset cgroup.
            plan.threads.append(ThreadPlan(t, Want(policy="other", cpus=emulator_cpus), "kthread",
                                           join_cgroups_of=observed.pid))
    timer_want = _kvm_pit_want(spec, partition, rt)
    for k in observed.kthreads:
        if placement(k.kind) is Placement.TIMER:
            if timer_want is not None:
                plan.threads.append(ThreadPlan(k, timer_want, "kthread"))
        else:
            plan.threads.append(ThreadPlan(k, Want(policy="other", cpus=emulator_cpus), "kthread"))


def _keep_off(tp: ThreadPlan, kept_off: frozenset[int], spec: RealtimeSpec, partition: Partition) -> ThreadPlan:
    """A thread planned onto a pCPU another guest's realtime vCPU owns: it is
    not made realtime there, and it is kept on the rest of its CPUs when its
    pinning has others.  A thread pinned only there is left where libvirt
    put it (moving it through libvirt would rewrite the guest's live pinning,
    the very intent rtagent reads): its guest's XML has to change."""
    w = tp.want
    if w.cpus is None or not w.cpus & kept_off:
        return tp
    rest = w.cpus - kept_off
    if w.policy in REALTIME:
        return dataclasses.replace(tp, want=Want(policy="other", cpus=rest or None))
    return dataclasses.replace(tp, want=Want(policy=w.policy, priority=w.priority, cpus=rest or None))


def _partition_violations(spec: RealtimeSpec, partition: Partition) -> list[Violation]:
    if not partition.realtime:
        return [Violation(
            Check.PARTITION, "the host has no realtime CPUs (host.realtime_cpus is auto and neither isolcpus "
            "nor nohz_full is set): no vCPU is made realtime; set host.realtime_cpus or boot with "
            "isolcpus=/nohz_full=")]
    outside = sorted(c for v in spec.realtime_vcpus for c in v.cpus if c not in partition.realtime)
    if outside:
        return [Violation(
            Check.PARTITION, f"realtime vCPUs pinned to CPU {format_cpulist(outside)}, not a realtime CPU of "
            f"this host (realtime CPUs {format_cpulist(partition.realtime)}): those vCPUs are not made "
            "realtime")]
    return []


def plan_withdrawal(observed: Observed) -> DomainPlan:
    """A guest taken out of realtime (its intent withdrawn): every thread of
    it that is realtime — vCPUs, kvm-pit, anything rtagent made FIFO — goes
    back to SCHED_OTHER.  Affinity is no longer managed and left as it is."""
    plan = DomainPlan()
    for t in observed.threads + observed.kthreads:
        if t.policy in REALTIME:
            check = "vcpu" if t.role == "vcpu" else ("emulator" if t.role == "emulator" else "kthread")
            plan.threads.append(ThreadPlan(t, Want(policy="other"), check))
    return plan


def _in_own_vcpu_cgroup(t: ThreadInfo) -> bool:
    """libvirt has moved the thread into its ``vcpuN`` group (v1 or v2 layout)."""
    return t.vcpu is not None and vcpu_of(t.cgroup_cpu) == t.vcpu


def _iothread_id(name: str) -> int | None:
    # QEMU names the thread of <iothreads> N "IO iothreadN" (libvirt's ids).
    if name.startswith("IO iothread") and name[len("IO iothread"):].isdigit():
        return int(name[len("IO iothread"):])
    return None


def plan_actions(threads: list[ThreadPlan]) -> list[Action]:
    """Ordered actions for every thread that differs from its plan.

    Per thread: going realtime → affinity first, then the scheduler (with the
    target CPU set recorded so the executor refuses if the narrowing did not
    take); leaving realtime → scheduler first, then affinity.
    """
    actions: list[Action] = []
    for tp in threads:
        if tp.ok:
            continue
        t, w = tp.thread, tp.want
        aff: list[Action] = []
        if not tp.affinity_ok and w.cpus is not None:
            aff.append(SetAffinity(tid=t.tid, cpus=w.cpus, via=tp.pin_via, vcpu=t.vcpu, iothread=tp.iothread,
                                   name=t.name, before=t.cpus, join_cgroups_of=tp.join_cgroups_of))
        sched: list[Action] = []
        if not tp.policy_ok:
            sched.append(SetScheduler(tid=t.tid, policy=w.policy or "other", priority=w.priority, name=t.name,
                                      before=f"{t.policy}:{t.priority}",
                                      require_cpus=w.cpus if w.policy in REALTIME else None))
        if w.policy in REALTIME:
            actions += aff + sched
        else:
            actions += sched + aff
    return actions
