"""The imperative shell: execute planned actions with syscalls and libvirt's
live pinning calls, and report each one.

Error policy (tuned's scheduler plugin does the same): a thread that vanished
(ESRCH/ENOENT, or libvirt saying the domain stopped) is normal and reported as
``vanished``; a real refusal (EPERM, EINVAL, a libvirt error) is reported per
thread with the reason.  Whatever happens, no thread is left realtime with an
affinity wider than its planned pCPU: if narrowing fails, the scheduler change
is skipped, and a thread found realtime with a wide mask is demoted.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Any

from ...cpulist import format_cpulist
from ...errors import LibvirtError
from ...kernel import Kernel, outcome_of
from ...vocab import ApplyOutcome, Outcome, Policy
from .plan import REALTIME, Action, SetAffinity, SetScheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    action: Action
    outcome: ApplyOutcome
    detail: str = ""
    # A thread made realtime: its time on CPU right after the change (the
    # start window, daemon/startwindow.py); None otherwise.
    run_time_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        a = self.action
        out: dict[str, Any] = {"tid": a.tid, "name": a.name, "outcome": str(self.outcome), "detail": self.detail}
        if isinstance(a, SetAffinity):
            out.update(kind="affinity", before=format_cpulist(a.before), after=format_cpulist(a.cpus), via=a.via)
        else:
            out.update(kind="scheduler", before=a.before, after=f"{a.policy}:{a.priority}")
        return out


class Pinner:
    """libvirt's live pin calls for one guest (a ``libvirt_host.Guest``;
    None = syscall only, e.g. in tests on processes that are not guests)."""

    def __init__(self, guest=None):
        self.guest = guest
        self._emulator_done = False

    def pin(self, a: SetAffinity) -> None:
        if self.guest is None:
            return
        if a.via == "vcpu" and a.vcpu is not None:
            self.guest.pin_vcpu(a.vcpu, a.cpus)
        elif a.via == "emulator" and not self._emulator_done:
            # One call re-sets the emulator cgroup's cpuset for all emulator
            # threads; per-thread syscalls below catch the ones it missed.
            self.guest.pin_emulator(a.cpus)
            self._emulator_done = True
        elif a.via == "iothread" and a.iothread is not None:
            self.guest.pin_iothread(a.iothread, a.cpus)


class _Executor:
    """One run of :func:`execute`: the actions in order, through the floor."""

    def __init__(self, kernel: Kernel, pinner: Pinner, on_eperm):
        self.tasks = kernel.tasks
        self.cgroups = kernel.cgroups
        self.pinner = pinner
        self.on_eperm = on_eperm
        self.failed_affinity: set[int] = set()

    def _set_affinity(self, a: SetAffinity) -> frozenset[int]:
        """Narrow, moving a per-VM kernel worker out of a cpuset cgroup that
        excludes the target; returns what the kernel now has."""
        try:
            self.tasks.set_affinity(a.tid, a.cpus)
        except OSError as err:
            if err.errno != errno.EINVAL or not a.join_cgroups_of:
                raise
            # The thread's cpuset cgroup excludes the target CPUs.
            self.cgroups.join_groups_of(a.join_cgroups_of, a.tid)
            self.tasks.set_affinity(a.tid, a.cpus)
        got = self.tasks.affinity(a.tid)
        if got != a.cpus and a.join_cgroups_of:
            self.cgroups.join_groups_of(a.join_cgroups_of, a.tid)
            self.tasks.set_affinity(a.tid, a.cpus)
            got = self.tasks.affinity(a.tid)
        return got

    def affinity(self, a: SetAffinity) -> Result:
        # The syscall first where the cgroup already allows it: the kernel
        # has the correction before libvirt's round trip (which then puts
        # its cgroup cpuset and live XML in line).
        try:
            self.tasks.set_affinity(a.tid, a.cpus)
        except OSError:
            pass  # outside the thread's cpuset: libvirt's pin below first
        try:
            self.pinner.pin(a)
        except LibvirtError as err:
            # Fall through to the syscall (also what keeps a guest enforced
            # while libvirtd hangs); report libvirt's reason if that fails too.
            log.debug("libvirt pin of %s failed: %s", a.name, err)
        got = self._set_affinity(a)
        if got != a.cpus:
            # A cpuset cgroup narrower than the request intersects it.
            self.failed_affinity.add(a.tid)
            return Result(a, ApplyOutcome.FAILED, f"kernel kept CPU {format_cpulist(got)} "
                                                  "(cpuset cgroup does not allow the requested CPUs)")
        return Result(a, ApplyOutcome.CHANGED)

    def scheduler(self, a: SetScheduler) -> Result:
        if a.policy in REALTIME:
            if a.tid in self.failed_affinity:
                return Result(a, ApplyOutcome.SKIPPED, "affinity could not be narrowed; not going realtime")
            got = self.tasks.affinity(a.tid)
            if a.require_cpus is not None and got != a.require_cpus:
                return Result(a, ApplyOutcome.SKIPPED, f"affinity is CPU {format_cpulist(got)}, "
                                                       f"not {format_cpulist(a.require_cpus)}; not going realtime")
        try:
            self.tasks.set_scheduler(a.tid, a.policy, a.priority)
        except PermissionError:
            if not (a.policy in REALTIME and self.on_eperm is not None and self.on_eperm(a.tid)):
                raise
            self.tasks.set_scheduler(a.tid, a.policy, a.priority)
        if a.policy in REALTIME:
            return Result(a, ApplyOutcome.CHANGED, run_time_ns=self.tasks.run_time_ns(a.tid))
        return Result(a, ApplyOutcome.CHANGED)

    def run(self, a: Action) -> Result:
        try:
            return self.affinity(a) if isinstance(a, SetAffinity) else self.scheduler(a)
        except OSError as err:
            if outcome_of(err) is Outcome.VANISHED:
                log.debug("thread %d (%s) vanished", a.tid, a.name)
                return Result(a, ApplyOutcome.VANISHED)
            if isinstance(a, SetAffinity):
                self.failed_affinity.add(a.tid)
            reason = os.strerror(err.errno) if err.errno else str(err)
            return Result(a, ApplyOutcome.FAILED, f"{reason} (errno {errno.errorcode.get(err.errno, err.errno)})")

    def demote_wide(self, actions: list[Action]) -> list[Result]:
        """Never leave a thread realtime with a wider mask than planned."""
        out = []
        for a in actions:
            if not isinstance(a, SetAffinity) or a.tid not in self.failed_affinity:
                continue
            try:
                now = self.tasks.sched(a.tid)
                if now.realtime and now.cpus != a.cpus:
                    self.tasks.set_scheduler(a.tid, Policy.OTHER, 0)
                    demote = SetScheduler(tid=a.tid, policy="other", priority=0, name=a.name, before="realtime")
                    out.append(Result(demote, ApplyOutcome.CHANGED,
                                      "demoted: realtime with an affinity wider than planned"))
            except OSError as err:
                if outcome_of(err) is not Outcome.VANISHED:
                    log.warning("cannot demote %s (tid %d): %s", a.name, a.tid, err)
        return out


def execute(actions: list[Action], pinner: Pinner | None = None, *, dry_run: bool = False,
            on_eperm=None, kernel: Kernel | None = None) -> list[Result]:
    """Run ``actions`` in order.  ``on_eperm(tid)`` may grant what a realtime
    change needs (RT group budget) and return True to retry once."""
    if dry_run:
        return [Result(a, ApplyOutcome.DRY_RUN) for a in actions]
    ex = _Executor(kernel or Kernel(), pinner or Pinner(), on_eperm)
    results = [ex.run(a) for a in actions]
    return results + ex.demote_wide(actions)
