"""The per-VM kernel-thread kinds: the one table to extend when KVM or vhost
grows a new worker thread.

A per-VM kernel thread is work the kernel does on a guest's behalf (timer
injection, vhost I/O, huge-page recovery).  Each kind says how to recognise
it, where it lives (a task inside the QEMU process, or a kthread of its own
that names its owner) and where it belongs.  Observation (``observe``), the
planner (``plan``), the RT-budget ledger and the host wing
(``tuning/host/kthreads.py``: threads it must leave to the guest engine) all read
this table, so adding a row is the whole change.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ...kernel.tasks import PF_IO_WORKER, PF_KTHREAD, PF_USER_WORKER

# A kernel worker, possibly living inside a user process (the task flags are
# the floor's, kernel/tasks.py).
WORKER_FLAGS = PF_USER_WORKER | PF_IO_WORKER | PF_KTHREAD


class Placement(enum.Enum):
    """Where a per-VM kernel thread belongs."""

    # With the emulator threads, off the realtime pCPUs, SCHED_OTHER.
    EMULATOR = "emulator"
    # The guest's timer source: placed by ``realtime.kvm_pit`` (KubeVirt's
    # choice is FIFO one above the vCPUs, next to a non-realtime vCPU).
    TIMER = "timer"


class Owner(enum.Enum):
    """How a separate kthread names the guest it works for (its comm's number)."""

    QEMU_PID = "qemu-pid"  # kvm-pit/<QEMU pid>
    QEMU_TASK = "qemu-task"  # vhost-<pid of the QEMU task that opened vhost>


@dataclass(frozen=True)
class VmThreadKind:
    kind: str  # the ThreadInfo.kind it gets, also in reports and metrics
    prefix: str  # comm prefix: how the host wing tells these from host kthreads
    pattern: re.Pattern[str]  # the exact comm; a match alone identifies the kind
    placement: Placement
    # Set for kinds that can be kthreads of their own (found by a /proc scan);
    # None for kinds that only ever live inside the QEMU process.
    owner: Owner | None = None

    def matches(self, name: str, flags: int = 0) -> bool:
        """A task inside QEMU: the exact form, or the prefix on a kernel worker
        (a QEMU user thread that happens to be called ``vhost-foo`` is not one)."""
        return bool(self.pattern.fullmatch(name)) or (bool(flags & WORKER_FLAGS) and name.startswith(self.prefix))

    def owner_pid(self, comm: str) -> int | None:
        m = self.pattern.fullmatch(comm)
        if m is None or self.owner is None or not m.groups():
            return None
        return int(m.group(1))


KINDS: tuple[VmThreadKind, ...] = (
    VmThreadKind("kvm-pit", "kvm-pit/", re.compile(r"kvm-pit/(\d+)"), Placement.TIMER, owner=Owner.QEMU_PID),
    # vhost: a kthread "vhost-<owner>" before Linux 6.4, a vhost_task inside
    # QEMU (PF_USER_WORKER) since.
    VmThreadKind("vhost", "vhost-", re.compile(r"vhost-(\d+)"), Placement.EMULATOR, owner=Owner.QEMU_TASK),
    VmThreadKind("kvm-nx-lpage", "kvm-nx-lpage", re.compile(r"kvm-nx-lpage.*"), Placement.EMULATOR),
)

BY_KIND = {k.kind: k for k in KINDS}
SEPARATE = tuple(k for k in KINDS if k.owner is not None)
# Kinds placed by the timer rule: separate kthreads in the root cgroup, so
# they need no RT group budget of a guest cgroup.
TIMER_KINDS = frozenset(k.kind for k in KINDS if k.placement is Placement.TIMER)
# Comm prefixes that mark a host thread as one of these (for the host wing).
HOST_PREFIXES = tuple(k.prefix for k in KINDS)


def kind_of(name: str, flags: int = 0) -> str | None:
    """The per-VM kind of a task *inside* a QEMU process, or None."""
    for k in KINDS:
        if k.matches(name, flags):
            return k.kind
    return None


def separate_kind(comm: str, qemu_pid: int, owners: Iterable[int]) -> str | None:
    """The kind of a separate kthread called ``comm`` if it works for QEMU
    process ``qemu_pid`` (whose tasks are ``owners``), else None."""
    tasks = set(owners) | {qemu_pid}
    for k in SEPARATE:
        pid = k.owner_pid(comm)
        if pid is None:
            continue
        if (k.owner is Owner.QEMU_PID and pid == qemu_pid) or (k.owner is Owner.QEMU_TASK and pid in tasks):
            return k.kind
    return None


def still_owned(kind: str, comm: str, qemu_pid: int) -> bool:
    """A cached separate kthread still works for ``qemu_pid`` (pids are reused)."""
    k = BY_KIND.get(kind)
    if k is None or k.owner is not Owner.QEMU_PID:
        return True
    return k.owner_pid(comm) == qemu_pid


def placement(kind: str) -> Placement:
    k = BY_KIND.get(kind)
    return Placement.EMULATOR if k is None else k.placement
