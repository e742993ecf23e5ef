"""Read-only view of a guest's QEMU process: its threads, their scheduling,
affinity, cgroup and scheduler statistics, the per-VM kernel threads, and the
process's memory locking.

The kernel is read through the floor (:class:`rtagent.kernel.Kernel`), so
the same code runs over fixture trees in tests and on a host; this module
adds what a thread *is to a guest* (role and kind).  Threads come and go
while we read: a thread that vanishes between listing and reading (ENOENT,
ESRCH) is skipped and logged at debug — normal, not an error.  A *process*
that vanishes raises :class:`ProcessGone`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ...kernel import Kernel
from ...kernel.errors import GONE
from ...kernel.tasks import PF_NO_SETAFFINITY, ProcessMemory, Task
from ...vocab import REALTIME_POLICIES, Role, ThreadKind
from . import vmthreads
from .vmthreads import WORKER_FLAGS

__all__ = ["ProcessGone", "ThreadInfo", "ProcessMemory", "Observed", "classify", "thread_info", "read_thread",
           "find_vm_kthreads", "observe_process"]

log = logging.getLogger(__name__)

_VCPU_RE = re.compile(r"CPU (\d+)/(KVM|TCG)")


class ProcessGone(LookupError):
    """The QEMU process exited (or was never there)."""

    def __init__(self, pid: int, reason: str = "no such process"):
        self.pid = pid
        super().__init__(f"process {pid}: {reason}")


@dataclass(frozen=True, slots=True)  # one per thread: no instance dict (daemon RSS)
class ThreadInfo:
    """One task as the kernel reports it.

    ``role`` is what the host partition cares about: ``vcpu``
    threads get realtime policy and 1:1 pinning, ``emulator`` threads go to the
    emulator set, ``kthread`` are per-VM kernel workers handled explicitly.
    ``kind`` is finer, for reports and for deciding what can be changed.
    """

    tid: int
    name: str  # comm, at most 15 characters for user threads
    role: str  # "vcpu" | "emulator" | "kthread"
    vcpu: int | None  # vCPU index for role "vcpu" (None for single-threaded TCG "ALL CPUs/TCG")
    kind: str  # "vcpu" "main" "call_rcu" "iothread" "worker" "vhost" "kvm-nx-lpage" "kvm-pit" "other"
    policy: str  # "other" "fifo" "rr" "batch" "idle" "deadline" ("ext", "unknown-N" if ever seen)
    priority: int  # rt_priority; 0 for non-realtime policies
    cpus: frozenset[int]  # Cpus_allowed_list
    cgroup_cpu: str | None  # path in the v1 "cpu" controller, else the v2 "0::" path
    run_time_ns: int | None  # schedstat field 1: time on CPU
    run_delay_ns: int | None  # schedstat field 2: time runnable but waiting for a CPU
    timeslices: int | None  # schedstat field 3: number of times run on a CPU
    voluntary_ctxt_switches: int
    nonvoluntary_ctxt_switches: int
    delayacct_blkio_ticks: int  # stat field 42, clock ticks (block I/O incl. swap-in, if delayacct is on)
    flags: int = 0  # stat field 9, PF_* task flags
    start_time: int = 0  # stat field 22, clock ticks since boot: a reused TID starts later

    @property
    def realtime(self) -> bool:
        return self.policy in REALTIME_POLICIES

    @property
    def no_setaffinity(self) -> bool:
        """The kernel refuses affinity changes for this task (PF_NO_SETAFFINITY)."""
        return bool(self.flags & PF_NO_SETAFFINITY)


@dataclass(frozen=True)
class Observed:
    """A QEMU process as observed at one moment."""

    pid: int
    threads: tuple[ThreadInfo, ...]  # tasks of the process, incl. in-process kernel workers
    kthreads: tuple[ThreadInfo, ...]  # separate per-VM kthreads: kvm-pit/<pid>, pre-6.4 vhost-<pid>
    memory: ProcessMemory

    @property
    def vcpu_threads(self) -> dict[int, ThreadInfo]:
        """vCPU index → thread (threads without an index are left out)."""
        return {t.vcpu: t for t in self.threads if t.role == "vcpu" and t.vcpu is not None}

    @property
    def emulator_threads(self) -> tuple[ThreadInfo, ...]:
        return tuple(t for t in self.threads if t.role == "emulator")

    @property
    def vm_kthreads(self) -> tuple[ThreadInfo, ...]:
        """Every per-VM kernel worker: in-process ones (vhost, kvm-nx-lpage) and
        separate kthreads (kvm-pit, old vhost)."""
        return tuple(t for t in self.threads if t.role == "kthread") + self.kthreads

    def thread(self, tid: int) -> ThreadInfo | None:
        for t in self.threads + self.kthreads:
            if t.tid == tid:
                return t
        return None


# --------------------------------------------------------------------------
# classification


_EMULATOR_NAMES = {"call_rcu": ThreadKind.CALL_RCU, "worker": ThreadKind.WORKER}  # worker: QEMU's thread pool


def classify(name: str, tid: int, pid: int, flags: int = 0) -> tuple[Role, int | None, str]:
    """(role, vcpu index, kind) of a thread of QEMU process ``pid``.

    Kernel workers living inside the QEMU process (vhost_task on kernels
    >= 6.4, kvm-nx-lpage-recovery) are recognised by the per-VM kernel-thread
    table (vmthreads.py), other workers by PF_USER_WORKER / PF_IO_WORKER /
    PF_KTHREAD.
    """
    m = _VCPU_RE.fullmatch(name)
    if m:
        return Role.VCPU, int(m.group(1)), ThreadKind.VCPU
    if name == "ALL CPUs/TCG":  # single-threaded TCG: every vCPU in one thread
        return Role.VCPU, None, ThreadKind.VCPU
    kind = vmthreads.kind_of(name, flags)
    if kind is not None:
        return Role.KTHREAD, None, kind
    if flags & WORKER_FLAGS:
        return Role.KTHREAD, None, ThreadKind.OTHER
    if tid == pid:
        return Role.EMULATOR, None, ThreadKind.MAIN
    if name.startswith("IO "):  # QEMU names iothreads "IO <id>" (e.g. "IO mon_iothread")
        return Role.EMULATOR, None, ThreadKind.IOTHREAD
    return Role.EMULATOR, None, _EMULATOR_NAMES.get(name, ThreadKind.OTHER)


def thread_info(task: Task, *, role: str | None = None, kind: str | None = None) -> ThreadInfo:
    """A guest's view of one task read by the floor.  ``role``/``kind``
    override the classification (separate kthreads such as kvm-pit)."""
    st = task.stat
    # stat's comm is the raw name (split at the last ")"), the same string
    # /proc/.../comm shows; taking it from stat saves a file and a race.
    c_role, vcpu, c_kind = classify(st.comm, task.tid, task.pid, st.flags)
    final_role = role or c_role
    run_time, run_delay, slices = task.schedstat or (None, None, None)
    return ThreadInfo(
        tid=task.tid, name=st.comm, role=final_role, vcpu=vcpu if final_role == Role.VCPU else None,
        kind=kind or c_kind, policy=st.policy, priority=st.rt_priority, cpus=task.cpus,
        cgroup_cpu=task.cgroup_cpu, run_time_ns=run_time, run_delay_ns=run_delay, timeslices=slices,
        voluntary_ctxt_switches=task.status_int("voluntary_ctxt_switches"),
        nonvoluntary_ctxt_switches=task.status_int("nonvoluntary_ctxt_switches"),
        delayacct_blkio_ticks=st.blkio_ticks, flags=st.flags, start_time=st.starttime,
    )


def read_thread(kernel: Kernel, pid: int, tid: int, *, role: str | None = None,
                kind: str | None = None) -> ThreadInfo:
    """Read one task of process ``pid``; raises a GONE error when it is gone."""
    return thread_info(kernel.tasks.read(pid, tid), role=role, kind=kind)


# --------------------------------------------------------------------------
# per-VM kernel threads and the process


def find_vm_kthreads(kernel: Kernel, qemu_pid: int, *, tids: Iterable[int] = ()) -> list[ThreadInfo]:
    """The per-VM kthreads that are separate processes (the kinds of
    vmthreads.py with an owner): ``kvm-pit/<qemu_pid>`` and, on kernels
    before 6.4, ``vhost-<owner>`` (owner = the QEMU task that set up vhost:
    the main thread, or any of ``tids``).  Only kernel threads qualify."""
    owners = set(tids)
    found: list[ThreadInfo] = []
    for kpid, kind in kernel.qemu.kthreads_matching(lambda comm: vmthreads.separate_kind(comm, qemu_pid, owners)):
        try:
            found.append(read_thread(kernel, kpid, kpid, role=Role.KTHREAD, kind=kind))
        except GONE:
            log.debug("kthread %d (%s) vanished while reading", kpid, kind)
    return found


def _process_facts(kernel: Kernel, pid: int) -> tuple[dict[str, str], ProcessMemory, list[int]]:
    try:
        status, memory = kernel.tasks.process(pid)  # one read of status for both
        return status, memory, kernel.tasks.tids(pid)
    except GONE as e:
        raise ProcessGone(pid) from e


def observe_process(pid: int, kernel: Kernel, *, with_kthreads: bool = True) -> Observed:
    """Everything rtagent needs to know about QEMU process ``pid``.

    Raises :class:`ProcessGone` if the process does not exist or is a zombie.
    Threads that vanish mid-read are left out.
    """
    status, memory, tids = _process_facts(kernel, pid)
    tgid = status.get("Tgid")
    if tgid is not None and tgid.isdigit() and int(tgid) != pid:
        raise ValueError(f"{pid} is a thread of process {tgid}, not a process")
    threads: list[ThreadInfo] = []
    for tid in tids:
        try:
            threads.append(read_thread(kernel, pid, tid))
        except GONE:
            log.debug("thread %d of process %d vanished while reading", tid, pid)
    if status.get("State", "")[:1] in ("Z", "X") and all(t.tid == pid for t in threads):
        raise ProcessGone(pid, "exited (zombie)")
    if not threads and not kernel.tasks.exists(pid):
        raise ProcessGone(pid)
    kthreads = tuple(find_vm_kthreads(kernel, pid, tids=tids)) if with_kthreads else ()
    return Observed(pid=pid, threads=tuple(threads), kthreads=kthreads, memory=memory)
