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
from .plan import REALTIME, Action, SetAffinity, SetScheduler

log = logging.getLogger(__name__)

_POLICY = {"other": os.SCHED_OTHER, "fifo": os.SCHED_FIFO, "rr": os.SCHED_RR}


@dataclass(frozen=True)
class Result:
    action: Action
    outcome: str  # "changed" | "vanished" | "failed" | "skipped" | "dry-run"
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        a = self.action
        out: dict[str, Any] = {"tid": a.tid, "name": a.name, "outcome": self.outcome, "detail": self.detail}
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


def _v1_mounts(proc_root: str = "/proc") -> dict[str, str]:
    """controller -> mount point of each cgroup v1 hierarchy."""
    out = {}
    with open(os.path.join(proc_root, "self/mounts")) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 3 and parts[2] == "cgroup":
                for opt in parts[3].split(","):
                    if opt in ("cpu", "cpuset", "cpuacct"):
                        out[opt] = parts[1]
    return out


def join_cgroups(pid: int, tid: int, proc_root: str = "/proc") -> None:
    """Move thread ``tid`` into the cpu/cpuset cgroups of QEMU's main thread
    (libvirt's emulator cgroups): where a per-VM kernel worker that was born
    in a realtime vCPU's cgroup belongs."""
    main: dict[str, str] = {}
    with open(os.path.join(proc_root, str(pid), "task", str(pid), "cgroup")) as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(","):
                main[c] = path
    for controller, mount in _v1_mounts(proc_root).items():
        if controller in main:
            with open(os.path.join(mount, main[controller].lstrip("/"), "tasks"), "w") as fh:
                fh.write(str(tid))
    log.debug("moved thread %d into the cgroups of QEMU %d's main thread", tid, pid)


def _gone(err: OSError) -> bool:
    return err.errno in (errno.ESRCH, errno.ENOENT)


def _set_scheduler(tid: int, policy: str, priority: int) -> None:
    os.sched_setscheduler(tid, _POLICY[policy], os.sched_param(priority if policy in REALTIME else 0))


def execute(actions: list[Action], pinner: Pinner | None = None, *, dry_run: bool = False,
            on_eperm=None) -> list[Result]:
    """Run ``actions`` in order.  ``on_eperm(tid)`` may grant what a realtime
    change needs (RT group budget) and return True to retry once."""
    pinner = pinner or Pinner()
    results: list[Result] = []
    failed_affinity: set[int] = set()
    for a in actions:
        if dry_run:
            results.append(Result(a, "dry-run"))
            continue
        try:
            if isinstance(a, SetAffinity):
                # The syscall first where the cgroup already allows it: the
                # kernel has the correction before libvirt's round trip
                # (which then puts its cgroup cpuset and live XML in line).
                try:
                    os.sched_setaffinity(a.tid, a.cpus)
                except OSError:
                    pass  # outside the thread's cpuset: libvirt's pin below first
                try:
                    pinner.pin(a)
                except LibvirtError as err:
                    # Fall through to the syscall (also what keeps a guest
                    # enforced while libvirtd hangs); report libvirt's reason
                    # if that fails too.
                    log.debug("libvirt pin of %s failed: %s", a.name, err)
                try:
                    os.sched_setaffinity(a.tid, a.cpus)
                except OSError as err:
                    if err.errno != errno.EINVAL or not a.join_cgroups_of:
                        raise
                    # The thread's cpuset cgroup excludes the target CPUs.
                    join_cgroups(a.join_cgroups_of, a.tid)
                    os.sched_setaffinity(a.tid, a.cpus)
                got = frozenset(os.sched_getaffinity(a.tid))
                if got != a.cpus and a.join_cgroups_of:
                    join_cgroups(a.join_cgroups_of, a.tid)
                    os.sched_setaffinity(a.tid, a.cpus)
                    got = frozenset(os.sched_getaffinity(a.tid))
                if got != a.cpus:
                    # A cpuset cgroup narrower than the request intersects it.
                    failed_affinity.add(a.tid)
                    results.append(Result(a, "failed", f"kernel kept CPU {format_cpulist(got)} "
                                          "(cpuset cgroup does not allow the requested CPUs)"))
                    continue
                results.append(Result(a, "changed"))
            else:
                if a.policy in REALTIME:
                    if a.tid in failed_affinity:
                        results.append(Result(a, "skipped", "affinity could not be narrowed; not going realtime"))
                        continue
                    got = frozenset(os.sched_getaffinity(a.tid))
                    if a.require_cpus is not None and got != a.require_cpus:
                        results.append(Result(a, "skipped", f"affinity is CPU {format_cpulist(got)}, "
                                              f"not {format_cpulist(a.require_cpus)}; not going realtime"))
                        continue
                try:
                    _set_scheduler(a.tid, a.policy, a.priority)
                except PermissionError:
                    if a.policy in REALTIME and on_eperm is not None and on_eperm(a.tid):
                        _set_scheduler(a.tid, a.policy, a.priority)
                    else:
                        raise
                results.append(Result(a, "changed"))
        except OSError as err:
            if _gone(err):
                log.debug("thread %d (%s) vanished", a.tid, a.name)
                results.append(Result(a, "vanished"))
            else:
                if isinstance(a, SetAffinity):
                    failed_affinity.add(a.tid)
                reason = os.strerror(err.errno) if err.errno else str(err)
                results.append(Result(a, "failed", f"{reason} (errno {errno.errorcode.get(err.errno, err.errno)})"))
    if not dry_run:
        results += _demote_wide(actions, failed_affinity)
    return results


def _demote_wide(actions: list[Action], failed_affinity: set[int]) -> list[Result]:
    """Never leave a thread realtime with a wider mask than planned."""
    out = []
    for a in actions:
        if not isinstance(a, SetAffinity) or a.tid not in failed_affinity:
            continue
        try:
            policy = os.sched_getscheduler(a.tid)
            if policy in (os.SCHED_FIFO, os.SCHED_RR) and frozenset(os.sched_getaffinity(a.tid)) != a.cpus:
                _set_scheduler(a.tid, "other", 0)
                demote = SetScheduler(tid=a.tid, policy="other", priority=0, name=a.name, before="realtime")
                out.append(Result(demote, "changed", "demoted: realtime with an affinity wider than planned"))
        except OSError as err:
            if not _gone(err):
                log.warning("cannot demote %s (tid %d): %s", a.name, a.tid, err)
    return out
