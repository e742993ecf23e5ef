"""The full check's first question: is a guest still what its last full
observation saw?

Every ``full_check_interval_s`` the daemon re-reads every managed guest to
catch what no event told it (a proc-connector message lost, a tool that
sends no libvirt event).  Re-reading a guest in full — four ``/proc`` files
per thread, the process's status, command line and limits — and then
planning, judging and accounting it again cost ≈ 1.6 ms a guest (B3, 100
paused guests: 162 ms a full check).  Nearly always nothing changed.

So the full check first takes the guest's *marks*: everything a full
observation would judge on, read cheaply — the thread set, each thread's
name, flags, start time and policy and priority (its ``stat``), its cgroup
(its groups' task lists) and affinity (a syscall), the process's memory
facts (``status`` and RLIMIT_MEMLOCK, once), the per-VM kthreads found at
the last scan — and compares them with the marks of the last full
observation (:func:`marks_of`, pure).  The daemon reads them through
descriptors kept open (:func:`read_marks_kept`, kernel/kept.py: one
``pread`` a file, no task listing while the thread count holds);
:func:`read_marks` is the same read by path.  Equal marks mean a full
observation would find the same threads, roles, cgroups, scheduling and
memory facts, so it would plan and judge exactly as last time; anything else
(a thread born, gone, renamed, moved to another cgroup, re-pinned, a TID
reused, a process gone) sends the guest down the full path.  What the marks
leave out is only what no judgement reads: the counters (run time, run
delay, context switches: read at scrape time) and ``VmRSS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ...kernel import Kernel
from ...kernel.errors import GONE
from ...kernel.kept import KeptTasks
from ...kernel.tasks import Look, ProcessMemory
from .observe import Observed, ThreadInfo

__all__ = ["TaskMark", "MemoryMark", "Marks", "marks_of", "read_marks", "read_marks_kept"]


class TaskMark(NamedTuple):
    """One task as a judgement sees it (no counters)."""

    tid: int
    name: str
    flags: int
    start_time: int
    cgroup_cpu: str | None
    policy: str
    priority: int
    cpus: frozenset[int]


class MemoryMark(NamedTuple):
    """The memory facts a judgement reads (verify_memory, the report)."""

    locked: int
    hugetlb: int
    swap: int
    memlock_soft: int | None
    memlock_hard: int | None


class Marks(NamedTuple):
    pid: int
    threads: tuple[TaskMark, ...]  # the process's tasks, by TID
    kthreads: tuple[TaskMark, ...]  # its separate per-VM kthreads (kvm-pit), as last found
    memory: MemoryMark


# -- pure -------------------------------------------------------------------------


def _mark(t: ThreadInfo) -> TaskMark:
    return TaskMark(t.tid, t.name, t.flags, t.start_time, t.cgroup_cpu, t.policy, t.priority, t.cpus)


def _memory_mark(m: ProcessMemory) -> MemoryMark:
    return MemoryMark(m.vm_lck_bytes, m.hugetlb_bytes, m.swap_bytes, m.memlock_soft, m.memlock_hard)


def marks_of(observed: Observed) -> Marks:
    """The marks of a full observation."""
    return Marks(observed.pid, tuple(_mark(t) for t in observed.threads), tuple(_mark(t) for t in observed.kthreads),
                 _memory_mark(observed.memory))


def _look_mark(tid: int, look: Look, group: str | None = None) -> TaskMark:
    st = look.stat
    return TaskMark(tid, st.comm, st.flags, st.starttime, look.cgroup_cpu if group is None else group, st.policy,
                    st.rt_priority, look.cpus)


# -- the read -----------------------------------------------------------------------


def read_marks(kernel: Kernel, pid: int, kthreads: Iterable[int], *, live: bool,
               groups: Mapping[int, str] | None = None) -> Marks | None:
    """The marks of QEMU process ``pid`` now, with the per-VM kthreads
    ``kthreads`` (their PIDs).  None when something is gone or a zombie
    (the full path then says what).  ``live``: :attr:`Kernel.live`.
    ``groups``: TID → cgroup from the groups' task lists
    (:class:`~rtagent.kernel.members.GroupMembers`); a thread not in it has its cgroup file read."""
    tasks = kernel.tasks
    groups = groups or {}
    try:
        status, memory = tasks.process(pid)
        if status.get("State", "")[:1] in ("Z", "X"):
            return None
        threads = tuple(_look_mark(tid, tasks.look(pid, tid, live, cgroup=tid not in groups), groups.get(tid))
                        for tid in tasks.tids(pid))
        separate = tuple(_look_mark(k, tasks.look(k, k, live)) for k in kthreads)
    except GONE:
        return None
    return Marks(pid, threads, separate, _memory_mark(memory))


def read_marks_kept(kept: KeptTasks, owner: str, expected: Marks, *, live: bool,
                    groups: Mapping[int, str] | None = None) -> Marks | None:
    """The marks of ``expected``'s process now, through ``kept``'s
    descriptors (kernel/kept.py): the same answer as :func:`read_marks`
    wherever that is ``expected``, and wherever it is not, anything but
    ``expected`` (None: gone, a zombie, or the thread set changed).
    ``groups``: as for :func:`read_marks`.

    The thread set is not listed: every expected thread still reading
    (its descriptor names that very task, so a TID reused reads ``ESRCH``)
    and the leader's thread count equal to theirs mean no thread was born
    or gone.  Where the count is unknown (a short stat line) or the leader
    is not among them, ``/proc/<pid>/task`` is listed as before."""
    pid, groups = expected.pid, groups or {}
    tids = [t.tid for t in expected.threads]
    try:
        state, memory = kept.process(owner, pid, live)
        if state in ("Z", "X"):
            return None
        facts = [(tid, kept.task(owner, pid, tid, live)) for tid in tids]
        count = next((f.num_threads for tid, f in facts if tid == pid), None)
        if (kept.tasks_of(pid) != tids) if count is None else (count != len(tids)):
            return None
        threads = tuple(TaskMark(tid, f.comm, f.flags, f.starttime,
                                 groups[tid] if tid in groups else kept.cgroup(pid, tid), f.policy, f.priority, f.cpus)
                        for tid, f in facts)
        separate = tuple(_kthread_mark(kept, owner, k.tid, live) for k in expected.kthreads)
    except GONE:
        return None
    return Marks(pid, threads, separate, _memory_mark(memory))


def _kthread_mark(kept: KeptTasks, owner: str, kpid: int, live: bool) -> TaskMark:
    """A separate per-VM kthread (its own process, outside the guest's groups)."""
    f = kept.task(owner, kpid, kpid, live)
    return TaskMark(kpid, f.comm, f.flags, f.starttime, kept.cgroup(kpid, kpid), f.policy, f.priority, f.cpus)
