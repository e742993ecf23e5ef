"""One pass over ``/proc`` shared by the host checks that need every process.

The intruder check (user threads allowed on a realtime CPU), the irqbalance
check and the vhost-worker check each used to walk all of ``/proc`` on their
own, every host-check interval: three listings, three ``stat``/``comm`` reads
per process, two thread listings per process and two ``comm`` reads per
thread.  :func:`scan_processes` reads what all three need once: every
process's ``stat`` (name, flags), and for every user process its thread IDs
and each non-main thread's ``comm`` — except for the processes whose threads
the caller already knows (a managed guest's QEMU: at 100 guests its thread
listings and names were most of the scan's growth with the guests).  Kernel threads have one thread, the
process itself, so their ``task/`` is not listed.

A process or thread that vanishes while it is read is skipped, as every
other scan does (docs/design.md, "Vanishing is normal").

The daemon runs the scan every host-check interval (30 s) and keeps the
names it read (:class:`ThreadNames`): a later scan reads ``comm`` only for
the threads it has not seen in that process (same PID and start time).
The per-thread ``comm`` reads were ≈ 40 % of the host checks (one open of
/proc/<pid>/task/<tid>/comm, ≈ 13 µs here, for every thread on the host).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import fs
from .tasks import Stat, shared

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["ScannedProcess", "ThreadNames", "scan_processes"]


@dataclass(frozen=True)
class ScannedProcess:
    stat: Stat
    # Thread IDs (the main thread included); () for a kernel thread or a
    # process whose thread list could not be read (it exited meanwhile).
    tids: tuple[int, ...] = ()
    # ``comm`` of each thread but the main one (whose name is ``stat.comm``);
    # a thread that exited before its name was read is missing here.
    names: dict[int, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.stat.pid

    def name_of(self, tid: int) -> str | None:
        """The thread's name, None when it was not read (the thread exited)."""
        return self.stat.comm if tid == self.stat.pid else self.names.get(tid)


class ThreadNames:
    """The thread names earlier scans read, per process (PID and start
    time): what a scan need not read again.  A name a thread gives itself
    later (``prctl``) is not seen until that thread is gone; the names serve
    the vhost-worker count (the kernel names those workers at their birth)
    and the intruder list (the check reports processes by their ``stat``,
    read on every scan)."""

    def __init__(self) -> None:
        self._procs: dict[int, tuple[int, dict[int, str]]] = {}

    def names(self, task: str, st: Stat, tids: tuple[int, ...]) -> dict[int, str]:
        """``comm`` of each of ``tids`` but the main thread, read only where
        the process's last scan did not have it."""
        entry = self._procs.get(st.pid)
        seen = entry[1] if entry is not None and entry[0] == st.starttime else {}
        names = _read_names(task, st.pid, tids, seen)
        self._procs[st.pid] = (st.starttime, names)
        return names

    def keep_only(self, pids: set[int]) -> None:
        """Forget the processes a scan did not find (exited)."""
        for pid in self._procs.keys() - pids:
            del self._procs[pid]

    def __len__(self) -> int:
        return len(self._procs)


def _read_names(task: str, pid: int, tids: tuple[int, ...], seen: Mapping[int, str]) -> dict[int, str]:
    names = {}
    for tid in tids:
        if tid == pid:
            continue
        name = seen.get(tid)
        if name is None:
            try:
                # Shared: thousands of threads share a few dozen names.
                name = shared(fs.read_text(f"{task}/{tid}/comm").rstrip("\n"))
            except OSError:
                continue
        names[tid] = name
    return names


def _process(root: str, st: Stat, known: Mapping[int, Mapping[int, str]],
             cache: ThreadNames | None = None) -> ScannedProcess:
    if st.kthread:
        return ScannedProcess(st)
    threads = known.get(st.pid)
    if threads is not None:
        # A managed guest's QEMU: the daemon observed its threads (and
        # re-observes them on every thread event); not read again here.
        return ScannedProcess(st, tuple(sorted(threads)), {t: n for t, n in threads.items() if t != st.pid})
    # Paths by hand, not os.path.join: a host with 200 guests has ~1,500
    # threads, and the joins cost more than the reads.
    task = f"{root}/{st.pid}/task"
    try:
        tids = tuple(sorted(int(n) for n in os.listdir(task) if n.isdigit()))
    except OSError:
        return ScannedProcess(st)
    names = _read_names(task, st.pid, tids, {}) if cache is None else cache.names(task, st, tids)
    return ScannedProcess(st, tids, names)


def scan_processes(kernel: Kernel, known: Mapping[int, Mapping[int, str]] | None = None,
                   cache: ThreadNames | None = None) -> tuple[ScannedProcess, ...]:
    """Every process now, in PID order, with its threads' names.  ``known``:
    PID → {TID: name} of processes whose threads the caller already knows
    (the daemon's managed QEMUs): only their ``stat`` is read.  ``cache``:
    the names earlier scans read (the daemon keeps one), updated here."""
    root = kernel.proc_path().rstrip("/")
    out = tuple(_process(root, st, known or {}, cache) for st in kernel.tasks.scan())
    if cache is not None:
        cache.keep_only({p.pid for p in out})
    return out
