"""The full check's re-read of a guest through descriptors kept open.

Every ``full_check_interval_s`` the full check re-reads, for every managed
guest, each thread's ``stat`` and affinity, the process's ``status`` and
``limits`` and its threads' cgroups (tuning/guest/marks.py).  By path that
is an ``open``+``read``+``close`` per file plus a ``/proc/<pid>/task``
listing per guest.  Measured cold (a read one second after the last, as in
the daemon; 400 threads of 100 paused guests): ``stat`` by path 11.0 µs,
by ``pread`` on a kept descriptor 5.8 µs; the process's ``status`` 13.1 µs
by ``pread``; ``limits`` 8.5 µs by ``pread``, ``prlimit`` 2.6 µs; the
task listing 16.8 µs.  A kept descriptor answers ``pread(fd, n, 0)`` with
the file as it is now (``/proc`` files are regenerated at offset 0), and it
names the task it was opened on, not the number: once that task has exited
it reads ``ESRCH``, even if its TID was reused since.  So:

* each thread's ``stat`` and the process's ``status`` through a kept
  descriptor, parsed from bytes for only the fields the marks compare;
* RLIMIT_MEMLOCK by ``prlimit`` (one syscall, not 16 formatted lines),
  except where it is refused: another user's process (QEMU as
  ``libvirt-qemu``) without CAP_SYS_RESOURCE, which the unit does not give,
  has its ``limits`` file read;
* no ``/proc/<pid>/task`` listing when the thread set cannot have changed:
  the leader's ``stat`` says how many threads the process has
  (``num_threads``); when every expected thread still reads (each still the
  task its descriptor was opened on) and that count equals theirs, the set
  is exactly the expected one.

The cgroups still come from the guest's groups' task lists
(kernel/members.py, by path): cgroup v1 ``tasks`` files cannot be kept (a
kept descriptor re-read at offset 0 shows the tasks of when it was opened),
and each thread's own ``cgroup`` file costs 8.7 µs by ``pread`` (every
hierarchy's path written out), more than its share of the groups' lists.

Descriptors are kept up to ``max_fds`` (the endpoints' budget,
monitor/fdlimit.py); beyond it files are read by path, with the same
answers.  They are grouped by owner (a guest) and closed with it, and held
by an integer key (the TID and which file), not by path: ≈ 1,000
descriptors at 100 paused guests, and the daemon's RSS is a goal too.
"""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING, NamedTuple

from ..cpulist import interned
from .tasks import ProcessMemory, _memlock, cpus_allowed, parse_stat, pick_status, policy_name

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["TaskFacts", "KeptTasks"]

_RDONLY = os.O_RDONLY | os.O_CLOEXEC
_STAT_SIZE = 1024  # a stat line is < 400 bytes; comm is ≤ 16
_FILE_SIZE = 8192  # status (≈ 1.5 KiB), limits (≈ 1.3 KiB)
# Which file a key names: (TID or PID) << 2 | one of these.
_STAT, _STATUS, _TASK_STATUS, _LIMITS = range(4)


class TaskFacts(NamedTuple):
    """What the full check's marks need of one task."""

    comm: str
    flags: int
    starttime: int
    policy: str
    priority: int
    num_threads: int | None  # of its process (stat field 20); None where the line is short
    cpus: frozenset[int]


def _stat_fields(data: bytes) -> tuple[str, int, int, str, int, int | None]:
    """(comm, flags, starttime, policy, rt priority, num_threads) of a stat
    line, from bytes: comm runs to the *last* ``)`` (it may hold one)."""
    close = data.rfind(b")")
    rest = data[close + 2:].split()
    if close < 0 or len(rest) < 39:  # an old kernel's short line: the one full parser
        st = parse_stat(data.decode("utf-8", "surrogateescape"))
        return st.comm, st.flags, st.starttime, st.policy, st.rt_priority, None
    comm = data[data.find(b"(") + 1:close].decode("utf-8", "surrogateescape")
    return comm, int(rest[6]), int(rest[19]), policy_name(int(rest[38])), int(rest[37]), int(rest[17])


def _limit(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value


def _memlock_now(pid: int) -> tuple[int | None, int | None]:
    """RLIMIT_MEMLOCK of ``pid`` (soft, hard; None = unlimited) by one
    syscall: ``/proc/<pid>/limits`` is 16 lines formatted for it (8.5 µs a
    read against 2.6 µs, cold)."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_MEMLOCK)
    return _limit(soft), _limit(hard)


def _kb(data: bytes, key: bytes) -> int:
    """``key`` ("\\nVmLck:") of a status text in bytes; 0 when absent."""
    i = data.find(key)
    if i < 0:
        return 0
    number, _, unit = data[i + len(key):data.find(b"\n", i + 1)].strip().partition(b" ")
    n = int(number)
    return n * 1024 if unit.strip().lower() == b"kb" else n


class KeptTasks:
    """``/proc`` files of the managed guests through kept descriptors."""

    def __init__(self, kernel: Kernel, max_fds: int = 0):
        self._k = kernel
        self.max_fds = max(0, max_fds)
        self._fds: dict[int, int] = {}  # key (see _STAT) -> descriptor
        self._owned: dict[str, list[int]] = {}  # owner -> its keys
        self._no_prlimit: set[int] = set()  # processes prlimit may not read (another user's)

    @property
    def open_fds(self) -> int:
        return len(self._fds)

    def _read(self, owner: str, key: int, path: str, size: int) -> bytes:
        """``path`` (kept as ``key``) now: through its kept descriptor, one
        opened and kept while the budget allows, else by path.  A failed
        read closes the kept one (the next read opens the path afresh) and
        raises."""
        fd = self._fds.get(key)
        if fd is None:
            fd = os.open(path, _RDONLY)
            if len(self._fds) >= self.max_fds:
                try:
                    return os.read(fd, size)
                finally:
                    os.close(fd)
            self._fds[key] = fd
            self._owned.setdefault(owner, []).append(key)
        try:
            return os.pread(fd, size, 0)
        except OSError:
            self._close(key)
            raise

    def _close(self, key: int) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def task(self, owner: str, pid: int, tid: int, live: bool) -> TaskFacts:
        """Task ``tid`` of ``pid`` (raises a GONE error when it is gone, or a
        ValueError for a malformed line).  ``live``: :attr:`Kernel.live`
        (affinity by syscall, else from the tree's status file)."""
        base = f"{self._k.proc_root}/{pid}/task/{tid}/"
        stat = self._read(owner, tid << 2 | _STAT, base + "stat", _STAT_SIZE)
        comm, flags, start, policy, prio, nthreads = _stat_fields(stat)
        if live:
            cpus = interned(os.sched_getaffinity(tid))
        else:
            cpus = cpus_allowed(pick_status(self._read(owner, tid << 2 | _TASK_STATUS, base + "status",
                                                        _FILE_SIZE).decode())) or frozenset()
        return TaskFacts(comm, flags, start, policy, prio, nthreads, cpus)

    def cgroup(self, pid: int, tid: int) -> str | None:
        """Task ``tid``'s cgroup from its own file, by path (a thread its
        groups' task lists did not show: rare, so nothing is kept)."""
        return self._k.tasks.cgroup(pid, tid)

    def process(self, owner: str, pid: int, live: bool) -> tuple[str, ProcessMemory]:
        """(state letter, memory facts) of process ``pid`` from its
        ``status``, and RLIMIT_MEMLOCK by ``prlimit`` (``live``; a fixture
        tree: its ``limits`` file).  Raises a GONE error when it is gone."""
        base = f"{self._k.proc_root}/{pid}/"
        status = self._read(owner, pid << 2 | _STATUS, base + "status", _FILE_SIZE)
        i = status.find(b"State:")
        state = status[i + 6:i + 16].strip()[:1].decode() if i >= 0 else ""
        soft, hard = self._memlock(owner, pid, base, live)
        return state, ProcessMemory(
            vm_lck_bytes=_kb(status, b"\nVmLck:"), hugetlb_bytes=_kb(status, b"\nHugetlbPages:"),
            memlock_soft=soft, memlock_hard=hard, swap_bytes=_kb(status, b"\nVmSwap:"))

    def _memlock(self, owner: str, pid: int, base: str, live: bool) -> tuple[int | None, int | None]:
        """By ``prlimit`` (``live``); else, or where it is refused, from the
        ``limits`` file: reading another user's limits needs CAP_SYS_RESOURCE,
        which the shipped unit does not give, and a distribution's libvirt
        runs QEMU as ``libvirt-qemu`` (the file is world-readable)."""
        if live and pid not in self._no_prlimit:
            try:
                return _memlock_now(pid)
            except PermissionError:
                if len(self._no_prlimit) >= 4096:  # dead guests' PIDs: bounded, not pruned one by one
                    self._no_prlimit.clear()
                self._no_prlimit.add(pid)
        return _memlock(self._read(owner, pid << 2 | _LIMITS, base + "limits", _FILE_SIZE).decode())

    def tasks_of(self, pid: int) -> list[int]:
        """The listing, where the thread count cannot answer (by path)."""
        return self._k.tasks.tids(pid)

    def drop(self, owner: str) -> None:
        """Close ``owner``'s descriptors (its guest is gone, or observed anew)."""
        for key in self._owned.pop(owner, ()):
            self._close(key)

    def close(self) -> None:
        for owner in list(self._owned):
            self.drop(owner)
