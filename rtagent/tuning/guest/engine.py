"""One guest, end to end: intent → observe → plan → (apply) → report.

This is the only place that strings the pure core (intent, plan) together
with the readers (observe) and writers (apply, rtgroup, libvirt).  ``check``,
``apply`` and the daemon all go through :class:`Tuner`, so every path applies
the same safety rules.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from ...config import Config
from ...errors import DomainXMLError
from ...intent import derive_spec
from ...model import RealtimeSpec, Violation
from . import rtgroup
from .apply import Pinner, execute
from .memory import verify_memory
from .observe import Observed, ProcessGone, ThreadInfo, find_kvm_pit, find_qemu_pid, observe_process, read_thread
from .plan import REALTIME, SetScheduler, ThreadPlan, plan_actions, plan_domain
from .report import DomainReport

log = logging.getLogger(__name__)


class Tuner:
    """Checks and tunes guests.  A guest is a ``libvirt_host.Guest`` (name,
    uuid, live XML, pin calls); ``apply(None, report=…)`` drives a process
    that is not a guest (tests) with syscalls only."""

    def __init__(self, config: Config, *, proc_root: str = "/proc",
                 run_root: str = "/run/libvirt/qemu"):
        assert config.partition is not None, "the tuner needs a resolved host partition"
        self.config = config
        self.proc_root = proc_root
        self.run_root = run_root
        self.rt_hierarchy = rtgroup.find_cpu_hierarchy(proc_root)
        # Realtime vCPU cgroups of every realtime guest seen, by UUID: the RT
        # budget is shared host-wide, so granting for one guest must count all.
        self.rt_cgroups: dict[str, set[str]] = {}
        # Groups this tuner granted budget to, so that it can take it back
        # from a vCPU that stopped being realtime (its cgroup lives on).
        self.granted: set[str] = set()
        # QEMU pid -> (monotonic time of the scan, ((kthread pid, kind), ...)).
        # Finding kvm-pit/<pid> means reading the comm of every process on
        # the host; the kthread lives as long as the VM, so scan rarely.
        self._kthreads: dict[int, tuple[float, tuple[tuple[int, str], ...]]] = {}

    # -- read-only --------------------------------------------------------

    def spec_for(self, guest) -> RealtimeSpec:
        return derive_spec(guest.xml(), self.config)

    def inspect(self, guest, spec: RealtimeSpec | None = None) -> DomainReport:
        """Observe a running guest and compare it with its plan; changes nothing."""
        name, uuid = guest.name, guest.uuid
        if spec is None:
            try:
                spec = self.spec_for(guest)
            except DomainXMLError as err:
                spec = RealtimeSpec(domain=name, uuid=uuid, realtime=True, errors=(str(err),))
        report = DomainReport(name=name, uuid=uuid, spec=spec, observed_at=time.time())
        if not spec.realtime:
            return report
        if not spec.valid:
            report.violations = [Violation("intent", e) for e in spec.errors]
            return report
        pid = find_qemu_pid(name, uuid, run_root=self.run_root, proc_root=self.proc_root)
        if pid is None:
            report.violations = [Violation("process", f"QEMU process of {name!r} not found")]
            return report
        return self.inspect_process(report, pid)

    def inspect_process(self, report: DomainReport, pid: int) -> DomainReport:
        spec = report.spec
        report.pid = pid
        try:
            observed = observe_process(pid, proc_root=self.proc_root, with_kthreads=False)
            observed = dataclasses.replace(observed, kthreads=self._vm_kthreads(observed))
        except ProcessGone:
            report.violations = [Violation("process", f"QEMU process {pid} of {report.name!r} exited")]
            return report
        report.observed = observed
        plan = plan_domain(spec, observed, self.config.partition, self.config.realtime)
        report.threads = plan.threads
        violations: list[Violation] = []
        for tp in plan.threads:
            violations += tp.violations()
        violations += plan.violations
        violations += verify_memory(spec.memory, observed.memory)
        violations += self._budget_violations(plan.threads)
        report.violations = violations
        self.rt_cgroups[report.uuid] = {c for c in plan.realtime_cgroups if c != "/"}
        return report

    KTHREAD_RESCAN_S = 30.0

    def _vm_kthreads(self, observed: Observed) -> tuple[ThreadInfo, ...]:
        """The guest's separate per-VM kthreads (kvm-pit, old vhost), from a
        cached scan re-validated by name; a full scan when the cache is
        missing, stale, or a cached thread is gone or renamed."""
        pid = observed.pid
        cached = self._kthreads.get(pid)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.KTHREAD_RESCAN_S:
            out = []
            for kpid, kind in cached[1]:
                try:
                    t = read_thread(kpid, kpid, self.proc_root, role="kthread", kind=kind)
                except (FileNotFoundError, ProcessLookupError):
                    break
                if kind == "kvm-pit" and t.name != f"kvm-pit/{pid}":
                    break  # pid reused
                out.append(t)
            else:
                return tuple(out)
        found = tuple(find_kvm_pit(pid, self.proc_root, tids=[t.tid for t in observed.threads]))
        self._kthreads[pid] = (now, tuple((t.tid, t.kind) for t in found))
        return found

    def _budget_violations(self, threads: list[ThreadPlan]) -> list[Violation]:
        if self.rt_hierarchy is None:
            return []
        out = []
        for tp in threads:
            t = tp.thread
            if tp.want.policy not in REALTIME or tp.policy_ok or not t.cgroup_cpu or t.kind == "kvm-pit":
                continue
            zero = [p for p, v in rtgroup.chain_budget(self.rt_hierarchy, t.cgroup_cpu) if v <= 0]
            if zero:
                out.append(Violation("rt_budget", f"{t.name} (tid {t.tid}) cannot be realtime: cgroup "
                                     f"{zero[0]} has cpu.rt_runtime_us 0 (RT group scheduling)"))
        return out

    # -- enforcement --------------------------------------------------------

    def forget(self, uuid: str, pid: int | None = None) -> None:
        self.rt_cgroups.pop(uuid, None)
        if pid is not None:
            self._kthreads.pop(pid, None)

    def grant_budget(self) -> rtgroup.BudgetPlan | None:
        """Grant RT budget to every known realtime vCPU cgroup (idempotent)."""
        if self.rt_hierarchy is None:
            return None

        def exists(p: str) -> bool:
            return os.path.isdir(os.path.join(self.rt_hierarchy, p.lstrip("/")))

        leaves = {p for p in set().union(*self.rt_cgroups.values()) if exists(p)}
        release = {p for p in self.granted - leaves if exists(p)}
        release |= rtgroup.stale_guest_groups(self.rt_hierarchy, leaves)
        self.granted &= {p for p in self.granted if exists(p)}
        if not leaves and not release:
            return None
        fixed = self.config.realtime.rt_budget_us
        plan = rtgroup.apply_budgets(self.rt_hierarchy, leaves, None if fixed == "auto" else int(fixed), release)
        self.granted = (self.granted | leaves) - release
        return plan

    def apply(self, guest, *, dry_run: bool = False, report: DomainReport | None = None) -> DomainReport:
        """Bring a guest to its plan; returns the report *after* the changes
        (re-observed), with ``changes`` listing what was done."""
        report = report or self.inspect(guest)
        if not (report.realtime and report.spec.valid) or report.observed is None:
            return report
        actions = plan_actions(report.threads)
        if not actions:
            return report
        budget_error: list[str] = []
        if not dry_run and any(isinstance(a, SetScheduler) and a.policy in REALTIME for a in actions):
            try:
                self.grant_budget()
            except (rtgroup.BudgetError, OSError) as err:
                budget_error.append(str(err))
                log.warning("RT budget for %s: %s", report.name, err)
        pinner = Pinner(guest)
        results = execute(actions, pinner, dry_run=dry_run)
        if dry_run:
            report.changes = results
            return report
        after = self.inspect_process(DomainReport(name=report.name, uuid=report.uuid, spec=report.spec,
                                                  observed_at=time.time()), report.pid)
        after.changes = results
        for err in budget_error:
            after.violations.append(Violation("rt_budget", err))
        for r in results:
            if r.outcome in ("changed", "failed"):
                log.debug("%s: %s: %s%s", report.name, r.outcome, r.action.describe(),
                         f" ({r.detail})" if r.detail else "")
        return after
