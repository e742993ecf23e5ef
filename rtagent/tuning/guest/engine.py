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
from ...cpulist import interned
from ...errors import DomainXMLError
from ...intent import derive_spec
from ...kernel import Kernel
from ...kernel.errors import GONE
from ...kernel.kept import KeptTasks
from ...kernel.members import GroupMembers
from ...model import RealtimeSpec, Violation
from ...vocab import Check, Role
from . import rtgroup, vcpusched, vmthreads
from .apply import Pinner, execute
from .assess import assess
from .claims import ClaimBook, GuestClaims, claims_of
from .ledger import BudgetLedger
from .marks import Marks, read_marks, read_marks_kept
from .observe import (
    Observed,
    ProcessGone,
    ThreadInfo,
    find_vm_kthreads,
    observe_process,
    read_thread,
)
from .plan import REALTIME, SetScheduler, plan_actions
from .report import DomainReport

log = logging.getLogger(__name__)


class Tuner:
    """Checks and tunes guests.  A guest is a ``libvirt_host.Guest`` (name,
    uuid, live XML, pin calls); ``apply(None, report=…)`` drives a process
    that is not a guest (tests) with syscalls only.  ``ledger`` is the
    host-wide RT-budget record; pass the same one to a new tuner (config
    reload) so that budget granted before is still known."""

    # A rescan reads the comm of every process on the host, per guest.  At
    # 30 s it ran on nearly every full check (also every 30 s): 100 guests
    # meant 100 whole-/proc scans every 30 s (B3, issue 14).  The cache is
    # re-validated by name on every use, and a hotplug (DEVICE_ADDED, new
    # vhost kthreads) drops it (:meth:`rescan_kthreads`), so a rare rescan
    # is only the net under a missed event.
    KTHREAD_RESCAN_S = 600.0

    def __init__(self, config: Config, *, kernel: Kernel | None = None, ledger: BudgetLedger | None = None):
        assert config.partition is not None, "the tuner needs a resolved host partition"
        self.config = config
        self.kernel = kernel or Kernel()
        self.ledger = ledger if ledger is not None else BudgetLedger.for_host(config.realtime.rt_budget_us, self.kernel)
        self.ledger.configure(config.realtime.rt_budget_us)
        # Why libvirt's own <vcpusched> fails here (None: it does not).
        self.vcpusched_refused = vcpusched.host_refuses(self.kernel)
        # QEMU pid -> (monotonic time of the scan, ((kthread pid, kind), ...)).
        # Finding the separate per-VM kthreads (kvm-pit/<pid>, …) means
        # reading the comm of every process on the host; they live as long
        # as the VM, so scan rarely.
        self._kthreads: dict[int, tuple[float, tuple[tuple[int, str], ...]]] = {}
        self._live = self.kernel.live  # decided once (a realpath): the full check asks per guest
        self._members = GroupMembers(self.kernel)  # the full check's cgroup read (marks.py)

    @property
    def rt_hierarchy(self):
        """The RT group budget files (``kernel.cgroups.RtTree``), or None."""
        return self.ledger.hierarchy

    # -- read-only --------------------------------------------------------

    def spec_for(self, guest) -> RealtimeSpec:
        return derive_spec(guest.xml(), self.config)

    def inspect(self, guest, spec: RealtimeSpec | None = None, *, withdrawn: bool = False,
                peers: ClaimBook | None = None) -> DomainReport:
        """Observe a running guest and compare it with its plan; changes
        nothing (the budget ledger and ``peers`` included).  ``withdrawn``:
        the caller tuned this guest as realtime before and its intent no
        longer says so (see :func:`assess`).  ``peers``: the pCPU claims of
        the other guests, for host-wide ownership (claims.py); the guest's
        own claims are in ``report.claims`` for the caller to record."""
        name, uuid = guest.name, guest.uuid
        if spec is None:
            try:
                spec = self.spec_for(guest)
            except DomainXMLError as err:
                spec = RealtimeSpec(domain=name, uuid=uuid, realtime=True, errors=(str(err),))
        withdrawn = withdrawn and not spec.realtime
        report = DomainReport(name=name, uuid=uuid, spec=spec, observed_at=time.time(), withdrawn=withdrawn)
        if not (spec.realtime or withdrawn):
            report.claims = self._passive_claims(spec)
            return report
        if not spec.valid:
            report.violations = [Violation(Check.INTENT, e) for e in spec.errors]
            return report
        pid = self.kernel.qemu.find(name, uuid)
        if pid is None:
            report.violations = [Violation(Check.PROCESS, f"QEMU process of {name!r} not found")]
            refused = vcpusched.refusal(spec, self.vcpusched_refused)
            if refused:
                report.violations.append(Violation(Check.VCPUSCHED_REFUSED, refused))
            return report
        return self.inspect_process(report, pid, peers)

    def _started(self, pid: int) -> float:
        """When QEMU ``pid`` started, in seconds since boot (who claimed first)."""
        try:
            return self.kernel.tasks.stat(pid).starttime / os.sysconf("SC_CLK_TCK")
        except GONE:
            return float("inf")

    def _passive_claims(self, spec: RealtimeSpec) -> GuestClaims | None:
        """A guest rtagent does not tune still claims the realtime pCPUs it
        pins threads to (and may have been there first)."""
        claims = claims_of(spec, 0.0, relevant=self.config.partition.realtime)
        if not claims.claims:
            return None
        pid = self.kernel.qemu.find(spec.domain, spec.uuid)
        return dataclasses.replace(claims, started=float("inf") if pid is None else self._started(pid))

    def _claims(self, report: DomainReport) -> GuestClaims:
        spec, observed = report.spec, report.observed
        assert observed is not None
        holding = interned(  # kept in every report's claims: one instance per set (cpulist.interned)
            next(iter(v.cpus)) for v in spec.realtime_vcpus
            if len(v.cpus) == 1 and (t := observed.vcpu_threads.get(v.vcpu)) is not None
            and t.realtime and t.cpus == v.cpus)
        return claims_of(spec, self._started(observed.pid), holding, relevant=self.config.partition.realtime)

    def reassess(self, report: DomainReport, peers: ClaimBook) -> DomainReport:
        """Judge an observed guest again against ``peers`` (a one-shot
        command that first had to see every guest's claims); no new reads
        but the RT-budget chain."""
        if report.observed is None or report.claims is None:
            return report
        return self._judge(report, peers.ownership_for(report.claims).for_guest(report.uuid))

    def inspect_process(self, report: DomainReport, pid: int, peers: ClaimBook | None = None, *,
                        conflicts: tuple | None = None) -> DomainReport:
        """``conflicts`` (already resolved) instead of ``peers``: the look
        after a change, judged as the look before it."""
        report.pid = pid
        try:
            observed = observe_process(pid, self.kernel, with_kthreads=False)
            observed = dataclasses.replace(observed, kthreads=self._vm_kthreads(observed))
        except ProcessGone:
            report.violations = [Violation(Check.PROCESS, f"QEMU process {pid} of {report.name!r} exited")]
            return report
        report.observed = observed
        report.claims = self._claims(report)
        if conflicts is None:
            conflicts = peers.ownership_for(report.claims).for_guest(report.uuid) if peers is not None else ()
        return self._judge(report, conflicts)

    def rejudge(self, last: DomainReport, observed: Observed) -> DomainReport:
        """``last`` (a reconciled report) judged again on ``observed`` — the
        same threads with their scheduling re-read by syscall — against the
        same conflicts: the look before a fix when only scheduling can have
        changed (a live re-pin), without re-reading /proc."""
        report = DomainReport(name=last.name, uuid=last.uuid, spec=last.spec, pid=last.pid, observed=observed,
                              observed_at=time.time(), withdrawn=last.withdrawn, claims=last.claims)
        return self._judge(report, last.conflicts)

    def _judge(self, report: DomainReport, conflicts: tuple) -> DomainReport:
        assert report.observed is not None
        chain = None
        if self.ledger.hierarchy is not None:
            hierarchy = self.ledger.hierarchy

            def chain(cgroup: str) -> list[tuple[str, int]]:
                return rtgroup.chain_budget(hierarchy, cgroup)

        verdict = assess(report.spec, report.observed, self.config.partition, self.config.realtime,
                         budget_chain=chain, withdrawn=report.withdrawn, conflicts=conflicts)
        report.conflicts = tuple(conflicts)
        report.threads = list(verdict.threads)
        report.violations = list(verdict.violations)
        report.realtime_cgroups = verdict.realtime_cgroups
        return report

    def still_observed(self, observed: Observed, marks: Marks, kept: tuple[KeptTasks, str] | None = None) -> bool:
        """The guest is what ``observed`` (its last full observation, whose
        marks are ``marks``) saw: its marks now are the same, and its per-VM
        kthreads are not due for a rescan (marks.py; the full check).
        ``kept``: (descriptors, their owner) to read the marks through
        (kernel/kept.py) instead of by path."""
        cached = self._kthreads.get(observed.pid)
        if cached is None or time.monotonic() - cached[0] >= self.KTHREAD_RESCAN_S:
            return False
        kpids = [k for k, _kind in cached[1]]
        if kpids != [t.tid for t in observed.kthreads]:
            return False
        groups = self._members.read({t.cgroup_cpu for t in observed.threads})
        if kept is not None:
            return read_marks_kept(kept[0], kept[1], marks, live=self._live, groups=groups) == marks
        return read_marks(self.kernel, observed.pid, kpids, live=self._live, groups=groups) == marks

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
                    t = read_thread(self.kernel, kpid, kpid, role=Role.KTHREAD, kind=kind)
                except GONE:
                    break
                if not vmthreads.still_owned(kind, t.name, pid):
                    break  # pid reused
                out.append(t)
            else:
                return tuple(out)
        found = tuple(find_vm_kthreads(self.kernel, pid, tids=[t.tid for t in observed.threads]))
        self._kthreads[pid] = (now, tuple((t.tid, t.kind) for t in found))
        return found

    # -- enforcement --------------------------------------------------------

    def rescan_kthreads(self, pid: int) -> None:
        """Find the per-VM kthreads of QEMU ``pid`` afresh at its next look."""
        self._kthreads.pop(pid, None)

    def forget(self, uuid: str, pid: int | None = None) -> None:
        """A guest stopped: its claim on the RT budget ends (the supervisor
        releases it at once; its cgroups usually go with it)."""
        self.ledger.withdraw(uuid)
        if pid is not None:
            self._kthreads.pop(pid, None)

    def record_claim(self, report: DomainReport) -> None:
        """Put a guest's need for RT budget in the ledger: what it needs when
        realtime and valid, nothing when withdrawn or not realtime."""
        if report.realtime and report.spec.valid and report.observed is not None:
            self.ledger.claim(report.uuid, report.realtime_cgroups)
        elif not report.realtime:
            self.ledger.withdraw(report.uuid)

    def apply(self, guest, *, dry_run: bool = False, report: DomainReport | None = None) -> DomainReport:
        """Bring a guest to its plan; returns the report *after* the changes
        (re-observed), with ``changes`` listing what was done.  Budget is
        granted before any thread goes realtime and released after threads
        left it (the kernel refuses the other orders)."""
        report = report or self.inspect(guest)
        if not ((report.realtime and report.spec.valid) or report.withdrawn) or report.observed is None:
            return report
        if not dry_run:
            self.record_claim(report)
        actions = plan_actions(report.threads)
        if not actions:
            if not dry_run:
                self.ledger.release_unclaimed()
            return report
        if dry_run:
            report.changes = execute(actions, None, dry_run=True)
            return report
        budget_error = self._grant_for(report, actions)
        results = execute(actions, Pinner(guest), kernel=self.kernel)
        self.ledger.release_unclaimed()
        after = self.inspect_process(DomainReport(name=report.name, uuid=report.uuid, spec=report.spec,
                                                  observed_at=time.time(), withdrawn=report.withdrawn), report.pid,
                                    conflicts=report.conflicts)
        after.changes = results
        after.violations += [Violation(Check.RT_BUDGET, err) for err in budget_error]
        for r in results:
            if r.outcome in ("changed", "failed"):
                log.debug("%s: %s: %s%s", report.name, r.outcome, r.action.describe(),
                          f" ({r.detail})" if r.detail else "")
        return after

    def budget_wait_until(self, after: DomainReport) -> float | None:
        """When trying ``after``'s guest again can first succeed, if all it
        failed on is realtime for want of RT budget (its FIFO changes refused,
        the ledger's refusal on record): the grant gate's deadline
        (grantgate.py), before which the same refusal would come back.
        None when something else failed too, or nothing did."""
        if not after.failures or not self.ledger.gate.closed:
            return None
        if not any(v.check == Check.RT_BUDGET for v in after.violations):
            return None
        if not all(isinstance(r.action, SetScheduler) and r.action.policy in REALTIME for r in after.failures):
            return None
        return self.ledger.gate.until

    def _grant_for(self, report: DomainReport, actions: list) -> list[str]:
        if not any(isinstance(a, SetScheduler) and a.policy in REALTIME for a in actions):
            return []
        try:
            self.ledger.grant()
        except (rtgroup.BudgetError, OSError) as err:
            # The same refusal again (grantgate.py) was logged when it was new.
            level = logging.DEBUG if isinstance(err, rtgroup.BudgetShort) and err.repeat else logging.WARNING
            log.log(level, "RT budget for %s: %s", report.name, err)
            return [str(err)]
        return []
