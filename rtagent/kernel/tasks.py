"""Tasks: the one ``/proc/<pid>/stat`` parser, ``status``, task flags, the one
policy table, and the scheduler syscalls.

Two kinds of question, kept apart on purpose:

* **what can drift** — policy, priority, affinity — is :meth:`Tasks.sched`:
  three scheduler syscalls, no text parsed (on a fixture tree, where the
  PIDs are not real, the same values come from the tree's files);
* **identity and counters** — name, flags, start time, cgroup, schedstat,
  context switches — is :meth:`Tasks.read`, the ``/proc`` text, read when
  the thread set may have changed.

Threads come and go while we read: every reader raises ``FileNotFoundError``
or ``ProcessLookupError`` (:data:`~rtagent.kernel.errors.GONE`) for a task
that is gone, and the scans skip such tasks.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..cpulist import CpuListError, interned, parse_cpulist
from ..vocab import REALTIME_POLICIES, Policy
from . import fs
from .errors import GONE

if TYPE_CHECKING:
    from .root import Kernel

__all__ = [
    "PF_IO_WORKER", "PF_USER_WORKER", "PF_KTHREAD", "PF_NO_SETAFFINITY", "KTHREADD_PID",
    "POLICY_BY_NUMBER", "POLICY_NUMBER", "policy_name", "Stat", "parse_stat", "parse_status",
    "cpus_allowed", "Sched", "Task", "Look", "ProcessMemory", "PROCESS_STATUS_KEYS", "Tasks",
]

log = logging.getLogger(__name__)

# include/linux/sched.h task flags, /proc/<pid>/stat field 9.
PF_IO_WORKER = 0x00000010  # io_uring worker (iou-wrk-*, iou-sqp-*)
PF_USER_WORKER = 0x00004000  # kernel worker inside a user process (vhost_task, kvm-nx-lpage on >= 6.x)
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000  # sched_setaffinity() refuses with EINVAL
KTHREADD_PID = 2

# sched(7) policy numbers (stat field 41, sched_getscheduler).
POLICY_BY_NUMBER = {0: Policy.OTHER, 1: Policy.FIFO, 2: Policy.RR, 3: Policy.BATCH, 5: Policy.IDLE,
                    6: Policy.DEADLINE, 7: Policy.EXT}
POLICY_NUMBER = {v: k for k, v in POLICY_BY_NUMBER.items()}
# Policies rtagent may set (deadline needs sched_setattr's runtime/period).
_SETTABLE = frozenset({Policy.OTHER, Policy.FIFO, Policy.RR, Policy.BATCH, Policy.IDLE})


def policy_name(number: int) -> str:
    """The policy's name; a policy this table does not know is ``unknown-N``."""
    return POLICY_BY_NUMBER.get(number) or f"unknown-{number}"


@dataclass(frozen=True, slots=True)  # one per thread: no instance dict (daemon RSS)
class Stat:
    """The fields of ``/proc/<pid>/stat`` rtagent uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    starttime: int
    rt_priority: int
    policy: str
    blkio_ticks: int = 0

    @property
    def kthread(self) -> bool:
        """A kernel thread: PF_KTHREAD, or (older kernels) a child of kthreadd."""
        return bool(self.flags & PF_KTHREAD) or self.ppid == KTHREADD_PID

    @property
    def no_setaffinity(self) -> bool:
        """The kernel refuses affinity changes (sched_setaffinity gives EINVAL)."""
        return bool(self.flags & PF_NO_SETAFFINITY)


def _field(rest: list[str], n: int) -> int:
    """proc(5) field ``n`` (1-based, n >= 3); 0 where an old kernel has fewer."""
    i = n - 3
    return int(rest[i]) if i < len(rest) else 0


# Values many records hold (thread names, cgroup paths), one object each.
# Not sys.intern: the interpreter's table of interned strings also holds
# every identifier of every module (tens of thousands), and a guest's
# cgroup paths are new strings at every start; their deletions fill that
# table's entries until it resizes, and a grown table never shrinks
# (measured: +0.94 MiB in one block after 50 guests had come and gone).
# This table is the daemon's own and small: emptied at every full check
# (:func:`forget_shared`), which re-reads every value, and when it reaches
# SHARED_MAX (a host-wide scan on a node of many threads).
_SHARED: dict[str, str] = {}
SHARED_MAX = 8192


def shared(text: str) -> str:
    """The one object of this value: a thread's name and cgroup path are
    re-read at every full check and kept in several records per thread —
    ≈ 1,000 copies of a few hundred values at 100 guests (issue 14's RSS goal)."""
    s = _SHARED.get(text)
    if s is None:
        if len(_SHARED) >= SHARED_MAX:
            _SHARED.clear()
        _SHARED[text] = s = text
    return s


def forget_shared() -> None:
    """Drop the table (a full check begins: what it reads is shared anew,
    and the values of gone threads and guests are not kept)."""
    _SHARED.clear()



def parse_stat(text: str) -> Stat:
    """Parse a ``stat`` line.  comm sits in parentheses and may itself contain
    spaces and ``)``, so it runs from the first ``(`` to the *last* ``)``.
    Raises ValueError for a malformed line."""
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError(f"malformed stat line: {text[:80]!r}")
    rest = text[close_paren + 1:].split()
    if len(rest) >= 40:  # every kernel since 2.6.18: the fields by index (the full check parses one a thread)
        return Stat(pid=int(text[:open_paren]), comm=shared(text[open_paren + 1:close_paren]), state=rest[0],
                    ppid=int(rest[1]), flags=int(rest[6]), starttime=int(rest[19]), rt_priority=int(rest[37]),
                    policy=policy_name(int(rest[38])), blkio_ticks=int(rest[39]))
    if len(rest) < 20:
        raise ValueError(f"short stat line: {text[:80]!r}")
    return Stat(
        pid=int(text[:open_paren]), comm=shared(text[open_paren + 1:close_paren]), state=rest[0],
        ppid=_field(rest, 4), flags=_field(rest, 9), starttime=_field(rest, 22),
        rt_priority=_field(rest, 40), policy=policy_name(_field(rest, 41)), blkio_ticks=_field(rest, 42),
    )


def parse_status(text: str) -> dict[str, str]:
    """``/proc/<pid>/status`` as key → value (values stripped)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


# The fields of a thread's status a Task carries (its affinity and the
# context-switch counters): picked by position, not parsed whole — the full
# parse was a quarter of the full check's CPU (≈ 55 lines per thread).
TASK_STATUS_KEYS = ("Cpus_allowed_list", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")


def pick_status(text: str, keys: Iterable[str] = TASK_STATUS_KEYS) -> dict[str, str]:
    """Only ``keys`` of a status text (the values :func:`parse_status` gives)."""
    out = {}
    for key in keys:
        at = text.find(f"\n{key}:") + 1
        if at == 0:
            if not text.startswith(f"{key}:"):
                continue
        end = text.find("\n", at)
        out[key] = text[at + len(key) + 1:end if end >= 0 else len(text)].strip()
    return out


# The fields of a process's status its memory facts (and the process checks:
# zombie, a thread's TID given as a PID) need.
PROCESS_STATUS_KEYS = ("State", "Tgid", "VmLck", "VmRSS", "HugetlbPages", "VmSwap")


def cpus_allowed(status: Mapping[str, str]) -> frozenset[int] | None:
    """``Cpus_allowed_list`` of a parsed status; None if missing or unparsable."""
    text = status.get("Cpus_allowed_list")
    if text is None:
        return None
    try:
        return parse_cpulist(text, allow_empty=True)
    except CpuListError:
        return None


def _kb(value: str | None) -> int:
    """``"  1234 kB"`` → bytes; missing → 0 (kernel threads have no Vm* lines)."""
    if not value:
        return 0
    number, _, unit = value.partition(" ")
    n = int(number)
    return n * 1024 if unit.strip().lower() == "kb" else n


@dataclass(frozen=True)
class Sched:
    """What can drift: policy, rt priority, allowed CPUs."""

    policy: str
    priority: int
    cpus: frozenset[int]

    @property
    def realtime(self) -> bool:
        return self.policy in REALTIME_POLICIES


@dataclass(frozen=True)
class Task:
    """One task read from its ``/proc`` text at one moment."""

    pid: int  # the process (tgid) it was read under
    tid: int
    stat: Stat
    cpus: frozenset[int]
    status: Mapping[str, str]
    cgroup_cpu: str | None = None  # v1 "cpu" controller path, else the v2 "0::" path
    schedstat: tuple[int, int, int] | None = None  # run time ns, run delay ns, timeslices

    @property
    def sched(self) -> Sched:
        return Sched(self.stat.policy, self.stat.rt_priority, self.cpus)

    def status_int(self, key: str) -> int:
        value = self.status.get(key, "")
        return int(value) if value.isdigit() else 0


class Look(NamedTuple):
    """What a task is and how it is scheduled, without its counters: its
    stat, its cgroup (v1 ``cpu`` path, else v2) and its affinity — the
    full check's cheap re-read (two files and a syscall, not four files)."""

    stat: Stat
    cgroup_cpu: str | None
    cpus: frozenset[int]


@dataclass(frozen=True)
class ProcessMemory:
    """Memory facts from ``/proc/<pid>/status`` and ``/proc/<pid>/limits``;
    sizes in bytes, ``None`` limits mean unlimited."""

    vm_lck_bytes: int = 0
    vm_rss_bytes: int = 0
    hugetlb_bytes: int = 0
    memlock_soft: int | None = None
    memlock_hard: int | None = None
    swap_bytes: int = 0


# A v1 line whose controllers include "cpu" ("4:cpu,cpuacct:/machine/…").
_V1_CPU_LINE = re.compile(r"^[^:\n]*:(?:[^:\n]*,)?cpu(?:,[^:\n]*)?:(.*)$", re.M)


def _cgroup_cpu(text: str) -> str | None:
    """The v1 ``cpu`` controller's path, else the unified (v2) path."""
    m = _V1_CPU_LINE.search(text)  # one search, not a split of every line (a file per thread)
    if m is not None:
        return shared(m.group(1))
    for line in text.splitlines():
        hier, sep, rest = line.partition(":")
        if sep and hier == "0" and rest.startswith(":"):
            return shared(rest[1:])
    return None


def _parse_limit(value: str) -> int | None:
    return None if value == "unlimited" else int(value)


def _memlock(limits: str) -> tuple[int | None, int | None]:
    for line in limits.splitlines():
        if line.startswith("Max locked memory"):
            parts = line[len("Max locked memory"):].split()
            if len(parts) >= 2:
                return _parse_limit(parts[0]), _parse_limit(parts[1])
    return None, None


class Tasks:
    """Reader (and the syscalls) for the tasks of one :class:`Kernel`."""

    def __init__(self, kernel: Kernel):
        self._k = kernel

    def _path(self, pid: int, tid: int | None, name: str) -> str:
        # By hand, not os.path.join: the host checks build one per process on
        # the host every 30 s, the full check several per managed thread.
        root = self._k.proc_root.rstrip("/")
        if tid is None:
            return f"{root}/{pid}/{name}"
        return f"{root}/{pid}/task/{tid}/{name}"

    # -- listing --------------------------------------------------------------

    def pids(self) -> list[int]:
        """Every process (tgid) now."""
        return fs.listdir_ints(self._k.proc_path())

    def tids(self, pid: int) -> list[int]:
        """The threads of process ``pid``; raises FileNotFoundError if it is gone."""
        return sorted(int(n) for n in os.listdir(self._k.proc_path(str(pid), "task")) if n.isdigit())

    def tids_of_self(self) -> list[int]:
        """The threads of the calling process."""
        return fs.listdir_ints(self._k.proc_path("self", "task"))

    def exists(self, pid: int, tid: int | None = None) -> bool:
        base = self._k.proc_path(str(pid)) if tid is None else self._k.proc_path(str(pid), "task", str(tid))
        return os.path.isdir(base)

    def scan(self) -> Iterator[Stat]:
        """One pass over ``/proc``: the stat of every process (tasks that vanish
        or have a malformed line are skipped).  The one full scan every
        "find the processes that…" question goes through."""
        for pid in self.pids():
            try:
                yield self.stat(pid)
            except (OSError, ValueError):
                continue

    # -- identity (text) ------------------------------------------------------

    def stat(self, pid: int, tid: int | None = None) -> Stat:
        return parse_stat(fs.read_text(self._path(pid, tid, "stat")))

    def status(self, pid: int, tid: int | None = None) -> dict[str, str]:
        return parse_status(fs.read_text(self._path(pid, tid, "status")))

    def cgroup(self, pid: int, tid: int) -> str | None:
        """Task ``tid``'s cgroup (v1 ``cpu`` path, else v2); raises a GONE error when it is gone."""
        return _cgroup_cpu(fs.read_text(self._path(pid, tid, "cgroup")))

    def comm(self, pid: int, tid: int | None = None) -> str:
        return fs.read_text(self._path(pid, tid, "comm")).rstrip("\n")

    def cmdline_raw(self, pid: int) -> bytes:
        """``/proc/<pid>/cmdline`` as the kernel gives it (NUL-separated)."""
        return fs.read_bytes(self._path(pid, None, "cmdline"))

    def cmdline(self, pid: int) -> list[str]:
        raw = self.cmdline_raw(pid)
        if not raw:
            return []
        return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]

    def environ(self, pid: int) -> dict[str, str]:
        env = {}
        for item in fs.read_bytes(self._path(pid, None, "environ")).split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode(errors="replace")] = value.decode(errors="replace")
        return env

    def memory(self, pid: int) -> ProcessMemory:
        """Memory facts of process ``pid`` (raises a GONE error if it exited)."""
        return self.process(pid)[1]

    def process(self, pid: int) -> tuple[dict[str, str], ProcessMemory]:
        """The :data:`PROCESS_STATUS_KEYS` of process ``pid``'s status and its
        memory facts, from one read of ``status`` (and ``limits``); raises a
        GONE error if it exited."""
        status = pick_status(fs.read_text(self._path(pid, None, "status")), PROCESS_STATUS_KEYS)
        soft, hard = _memlock(fs.read_text(self._path(pid, None, "limits")))
        return status, ProcessMemory(
            vm_lck_bytes=_kb(status.get("VmLck")), vm_rss_bytes=_kb(status.get("VmRSS")),
            hugetlb_bytes=_kb(status.get("HugetlbPages")), memlock_soft=soft, memlock_hard=hard,
            swap_bytes=_kb(status.get("VmSwap")),
        )

    def look(self, pid: int, tid: int, live: bool, *, cgroup: bool = True) -> Look:
        """Task ``tid`` of ``pid`` without its counters (:class:`Look`).
        ``live`` (:attr:`Kernel.live`, decided once by the caller): the
        affinity by syscall, else from the tree's status file.  ``cgroup``
        False: the caller knows the task's group (``cgroup_cpu`` is None).
        Raises a GONE error when the task is gone."""
        base = f"{self._k.proc_root}/{pid}/task/{tid}/"  # not os.path.join: a quarter of the cost
        stat = parse_stat(fs.read_text(base + "stat"))
        group = None
        try:
            if cgroup:
                group = _cgroup_cpu(fs.read_text(base + "cgroup"))
        except GONE:
            if not os.path.isdir(base):
                raise
        if live:
            cpus = interned(os.sched_getaffinity(tid))
        else:
            cpus = cpus_allowed(pick_status(fs.read_text(base + "status"))) or frozenset()
        return Look(stat, group, cpus)

    def _optional(self, pid: int, tid: int, name: str) -> str | None:
        """A file some kernels lack (schedstat without CONFIG_SCHED_INFO): None
        when it is missing but the task is there, GONE when the task is gone."""
        try:
            return fs.read_text(self._path(pid, tid, name))
        except GONE:
            if not self.exists(pid, tid):
                raise
            return None

    def read(self, pid: int, tid: int) -> Task:
        """Task ``tid`` of process ``pid``, from its stat, status, cgroup and
        schedstat.  Raises a GONE error when the task is gone."""
        stat = self.stat(pid, tid)
        status = pick_status(fs.read_text(self._path(pid, tid, "status")))
        cgroup = self._optional(pid, tid, "cgroup")
        sched_text = self._optional(pid, tid, "schedstat")
        sched = [int(x) for x in sched_text.split()[:3]] if sched_text else []
        cpus = cpus_allowed(status)
        if cpus is None:
            log.debug("task %d/%d: no parsable Cpus_allowed_list", pid, tid)
        return Task(
            pid=pid, tid=tid, stat=stat, cpus=cpus or frozenset(), status=status,
            cgroup_cpu=None if cgroup is None else _cgroup_cpu(cgroup),
            schedstat=(sched[0], sched[1], sched[2]) if len(sched) == 3 else None,
        )

    def kthread(self, pid: int) -> Task | None:
        """Kernel thread ``pid`` (PF_KTHREAD), or None: not one, PID 0/1, gone,
        or unreadable.  Kernel threads are single-threaded: ``/proc/<pid>`` is it."""
        if pid <= 1:
            return None
        try:
            stat = self.stat(pid)
            if not stat.flags & PF_KTHREAD:
                return None
            status = self.status(pid)
        except (OSError, ValueError):
            return None
        cpus = cpus_allowed(status)
        if cpus is None:
            return None
        return Task(pid=pid, tid=pid, stat=stat, cpus=cpus, status=status)

    def kthreads(self) -> list[Task]:
        """Every kernel thread (never a user process, never PID 1), by PID."""
        out = []
        for st in self.scan():
            if st.flags & PF_KTHREAD:
                kt = self.kthread(st.pid)
                if kt is not None:
                    out.append(kt)
        return out

    # -- what drifts (syscalls) ----------------------------------------------

    def sched(self, tid: int, pid: int | None = None) -> Sched:
        """Policy, priority and affinity of ``tid`` through the scheduler
        syscalls (raises ProcessLookupError when it is gone).  Over a fixture
        tree, from the tree's files of task ``tid`` of ``pid``."""
        if not self._k.live:
            return self.read(pid if pid is not None else tid, tid).sched
        policy = os.sched_getscheduler(tid) & 0xFF  # SCHED_RESET_ON_FORK is bit 30
        priority = os.sched_getparam(tid).sched_priority
        return Sched(policy_name(policy), priority, interned(os.sched_getaffinity(tid)))

    def affinity(self, tid: int) -> frozenset[int]:
        return interned(os.sched_getaffinity(tid))

    def run_time_ns(self, tid: int) -> int | None:
        """Time on CPU so far (``schedstat`` field 1); None when the thread
        is gone or the kernel has no CONFIG_SCHED_INFO."""
        try:
            return int(fs.read_text(self._k.proc_path(str(tid), "schedstat")).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def set_affinity(self, tid: int, cpus: frozenset[int]) -> None:
        os.sched_setaffinity(tid, cpus)

    def set_scheduler(self, tid: int, policy: str, priority: int) -> None:
        """Set a policy by name; the priority only counts for fifo/rr.  Raises
        OSError(EINVAL) for a policy rtagent cannot set."""
        if policy not in _SETTABLE:
            raise OSError(errno.EINVAL, f"cannot set policy {policy!r}")
        prio = priority if policy in REALTIME_POLICIES else 0
        os.sched_setscheduler(tid, POLICY_NUMBER[policy], os.sched_param(prio))

    def confine_self(self, cpus: frozenset[int]) -> None:
        """The calling process onto ``cpus`` and SCHED_OTHER (the agent never
        competes with what it protects)."""
        os.sched_setaffinity(0, cpus)
        if os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
