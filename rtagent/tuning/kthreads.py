"""Kernel threads on the host partition: read, classify, and the two syscalls.

Public API
----------

``read_kthreads(proc_root="/proc") -> list[KThread]``
    Every kernel thread (``PF_KTHREAD`` in ``/proc/<pid>/stat`` field 9), with
    its name, flags, start time, allowed CPUs and scheduling policy/priority.
    User processes are never returned, nor PID 1.

``classify(kt, partition, *, vcpu_priority=1) -> KThreadClass``
    Pure decision for one kernel thread (no I/O):

    * ``"move"``: movable (no ``PF_NO_SETAFFINITY``) and allowed on a realtime
      CPU → ``target_cpus`` is where it should go (housekeeping CPUs, keeping
      the part of its current affinity that is housekeeping, e.g. a NUMA node);
    * ``"priority"``: a per-CPU thread that must stay on its realtime CPU
      (``ksoftirqd/N``, ``rcuc/N``, ``rcub/N``, ``ktimers/N``,
      ``ktimersoftd/N``) → ``target_priority`` is the SCHED_FIFO priority above
      the vCPUs' (:func:`rt_priority_for`);
    * ``"irq_thread"``: a threaded IRQ handler (``irq/N-…``) allowed on a
      realtime CPU.  The kernel re-derives its affinity from the IRQ's, so the
      caller decides (move it only when its IRQ accepted the move);
    * ``"guest"``: a per-VM thread (``kvm-pit/<pid>``, ``kvm-nx-lpage…``,
      ``vhost-<pid>``) that the guest tuning engine owns → never touched here;
    * ``"left_alone"``: pinned by the kernel and allowed on a realtime CPU
      (``migration/N``, ``cpuhp/N``, ``idle_inject/N``, bound kworkers and
      every other ``PF_NO_SETAFFINITY`` thread) → reported, never changed;
    * ``"ok"``: nothing to do.

``rt_priority_for(name, vcpu_priority) -> int | None``
    tuned's realtime-virtual-host ladder generalised: with vCPUs at ``base``,
    ksoftirqd/ktimers ``base+1``, ktimersoftd ``base+2``, rcuc/rcub
    ``base+3``, capped at 99.

``set_affinity(kt, cpus)`` / ``set_fifo(kt, priority)`` / ``set_policy(kt,
policy, priority)``
    The syscalls, guarded: PID ≤ 1 is refused outright, and the thread is
    re-read just before the call so that a PID reused by a user process is
    never touched (raises ``ProcessLookupError`` then, like a vanished
    thread).  They raise ``OSError``; the caller maps ESRCH/ENOENT to
    "vanished" and EINVAL/EPERM to "refused".
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import Partition
from ..cpulist import CpuListError, parse_cpulist
from .guest.vmthreads import HOST_PREFIXES

PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000

#: Names of per-VM kernel threads owned by the guest tuning engine (its
#: table of kinds, tuning/guest/vmthreads.py).
GUEST_PREFIXES = HOST_PREFIXES

#: Per-CPU threads that must stay where they are and run above the vCPUs:
#: name → offset above the highest vCPU priority (tuned realtime-virtual-host
#: with vCPUs at FIFO 1: ksoftirqd/ktimers 2, ktimersoftd 3, rcuc/rcub 4).
PRIORITY_OFFSETS = {
    "ksoftirqd": 1,
    "ktimers": 1,
    "ktimersoftd": 2,
    "rcuc": 3,
    "rcub": 3,
}

#: Per-CPU threads pinned by the kernel that we leave alone, with the reason.
LEFT_ALONE_REASONS = {
    "migration": "per-CPU stopper thread (FIFO 99 by design), pinned by the kernel",
    "cpuhp": "per-CPU hotplug thread, pinned by the kernel",
    "idle_inject": "per-CPU idle injection thread, pinned by the kernel",
}

_PERCPU_RE = re.compile(r"^([A-Za-z_]+)/(\d+)$")
_IRQ_THREAD_RE = re.compile(r"^irq/(\d+)-")

POLICY_NAMES = {
    os.SCHED_OTHER: "other",
    os.SCHED_FIFO: "fifo",
    os.SCHED_RR: "rr",
    getattr(os, "SCHED_BATCH", 3): "batch",
    getattr(os, "SCHED_IDLE", 5): "idle",
    6: "deadline",
}
POLICY_NUMBERS = {v: k for k, v in POLICY_NAMES.items()}


@dataclass(frozen=True)
class KThread:
    pid: int
    comm: str
    ppid: int
    flags: int
    starttime: int
    affinity: frozenset[int]
    policy: str  # "other" | "fifo" | "rr" | "batch" | "idle" | "deadline"
    priority: int  # rt_priority (0 unless fifo/rr)

    @property
    def movable(self) -> bool:
        return not self.flags & PF_NO_SETAFFINITY

    @property
    def label(self) -> str:
        return f"kthread {self.pid} ({self.comm})"


@dataclass(frozen=True)
class KThreadClass:
    kind: str  # "move" | "priority" | "irq_thread" | "guest" | "left_alone" | "ok"
    reason: str = ""
    target_cpus: frozenset[int] | None = None
    target_priority: int | None = None
    irq: int | None = None


# ---------------------------------------------------------------------------
# reading


class _Vanished(Exception):
    pass


def parse_stat(text: str) -> dict[str, int | str]:
    """The fields we need from ``/proc/<pid>/stat`` (comm may contain spaces
    and parentheses: it runs from the first ``(`` to the last ``)``)."""
    open_ = text.index("(")
    close = text.rindex(")")
    rest = text[close + 2:].split()
    # rest[0] is field 3 (state): field N is rest[N - 3].
    return {
        "pid": int(text[:open_].strip()),
        "comm": text[open_ + 1:close],
        "ppid": int(rest[1]),
        "flags": int(rest[6]),
        "starttime": int(rest[19]),
        "rt_priority": int(rest[37]) if len(rest) > 38 else 0,
        "policy": int(rest[38]) if len(rest) > 38 else 0,
    }


def _read_allowed(status_text: str) -> frozenset[int]:
    for line in status_text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpulist(line.split(":", 1)[1], allow_empty=True)
    raise ValueError("no Cpus_allowed_list")


def read_kthread(pid: int, proc_root: str = "/proc") -> KThread | None:
    """One kernel thread, or None if ``pid`` is not a kernel thread (or gone)."""
    if pid <= 1:
        return None
    base = Path(proc_root, str(pid))
    try:
        st = parse_stat(Path(base, "stat").read_text())
        if not int(st["flags"]) & PF_KTHREAD:
            return None
        status = Path(base, "status").read_text()
        affinity = _read_allowed(status)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    except (ValueError, IndexError, CpuListError):
        return None
    return KThread(
        pid=pid,
        comm=str(st["comm"]),
        ppid=int(st["ppid"]),
        flags=int(st["flags"]),
        starttime=int(st["starttime"]),
        affinity=affinity,
        policy=POLICY_NAMES.get(int(st["policy"]), str(st["policy"])),
        priority=int(st["rt_priority"]),
    )


def read_kthreads(proc_root: str = "/proc") -> list[KThread]:
    """Every kernel thread under ``proc_root``, sorted by PID.  Kernel threads
    are single-threaded, so ``/proc/<pid>`` is enough (no ``task/`` walk)."""
    out = []
    try:
        names = os.listdir(proc_root)
    except FileNotFoundError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        kt = read_kthread(int(name), proc_root)
        if kt is not None:
            out.append(kt)
    out.sort(key=lambda k: k.pid)
    return out


# ---------------------------------------------------------------------------
# classification (pure)


def rt_priority_for(name: str, vcpu_priority: int) -> int | None:
    """FIFO priority for a per-CPU thread that must outrank the vCPUs, or None
    if ``name`` is not one of them."""
    m = _PERCPU_RE.match(name)
    if not m or m.group(1) not in PRIORITY_OFFSETS:
        return None
    return min(99, max(1, vcpu_priority) + PRIORITY_OFFSETS[m.group(1)])


def is_guest_thread(name: str) -> bool:
    return name.startswith(GUEST_PREFIXES)


def classify(kt: KThread, partition: Partition, *, vcpu_priority: int = 1) -> KThreadClass:
    realtime = partition.realtime
    if kt.pid <= 1 or not kt.flags & PF_KTHREAD:
        return KThreadClass("ok", "not a kernel thread")
    if is_guest_thread(kt.comm):
        return KThreadClass("guest", "per-VM kernel thread, handled by the guest tuning engine")
    on_rt = bool(kt.affinity & realtime)
    if not on_rt:
        return KThreadClass("ok")
    prio = rt_priority_for(kt.comm, vcpu_priority)
    if prio is not None:
        return KThreadClass("priority", "per-CPU thread serving a realtime CPU", target_priority=prio)
    m = _PERCPU_RE.match(kt.comm)
    if m and m.group(1) in LEFT_ALONE_REASONS:
        return KThreadClass("left_alone", LEFT_ALONE_REASONS[m.group(1)])
    if not kt.movable:
        if kt.comm.startswith("kworker/"):
            reason = ("unbound/rescuer kworker, placed by the workqueue cpumask"
                      if kt.comm.startswith(("kworker/u", "kworker/R-"))
                      else "bound per-CPU kworker, pinned by the kernel")
        else:
            reason = "PF_NO_SETAFFINITY: pinned by the kernel"
        return KThreadClass("left_alone", reason)
    target = (kt.affinity & partition.housekeeping) or partition.housekeeping
    m = _IRQ_THREAD_RE.match(kt.comm)
    if m:
        return KThreadClass("irq_thread", "threaded IRQ handler, follows its IRQ's affinity",
                            target_cpus=frozenset(target), irq=int(m.group(1)))
    return KThreadClass("move", "movable kernel thread allowed on a realtime CPU", target_cpus=frozenset(target))


# ---------------------------------------------------------------------------
# syscalls


def _recheck(kt: KThread, proc_root: str) -> None:
    """Refuse to act on a PID that is no longer the kernel thread we planned for."""
    if kt.pid <= 1:
        raise PermissionError(errno.EPERM, "refusing to touch PID 0/1")
    now = read_kthread(kt.pid, proc_root)
    if now is None or now.starttime != kt.starttime:
        raise ProcessLookupError(errno.ESRCH, f"kernel thread {kt.pid} ({kt.comm}) is gone")


def set_affinity(kt: KThread, cpus: frozenset[int], proc_root: str = "/proc") -> None:
    _recheck(kt, proc_root)
    os.sched_setaffinity(kt.pid, cpus)


def set_policy(kt: KThread, policy: str, priority: int, proc_root: str = "/proc") -> None:
    _recheck(kt, proc_root)
    if policy not in POLICY_NUMBERS or policy == "deadline":
        raise OSError(errno.EINVAL, f"cannot set policy {policy!r}")
    os.sched_setscheduler(kt.pid, POLICY_NUMBERS[policy], os.sched_param(priority if policy in ("fifo", "rr") else 0))


def set_fifo(kt: KThread, priority: int, proc_root: str = "/proc") -> None:
    set_policy(kt, "fifo", priority, proc_root)
