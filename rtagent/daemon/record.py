"""Which guests rtagent made realtime, kept across daemon restarts.

A guest's realtime intent can be withdrawn while the daemon is down (its
metadata removed, a ``[[rule]]`` gone).  The next daemon then sees a guest
with SCHED_FIFO vCPUs and no intent — which is also what a guest looks like
whose FIFO came from libvirt's own ``<vcpusched>`` or from another tool.
Only this record tells them apart: an entry says that rtagent made *this
QEMU process* realtime (its PID and its start time, so a reused PID or a
restarted guest never matches) and which cgroups it granted RT budget to.

The file is JSON next to the instance lock (``[daemon] lock_file`` with the
extension ``.realtime.json``; by default ``/run/rtagent/rtagent.realtime.json``,
on tmpfs: after a reboot no thread of it exists any more).  It belongs to
the daemon holding that lock, so it has one writer.  An entry is written
before a guest's first thread is made realtime, by whichever path gets there
first: the start window while libvirt still starts the guest
(:meth:`RealtimeRecord.note_start`) or a reconcile (:meth:`RealtimeRecord.note`).
A crash in between leaves an entry for a guest with nothing to undo (its
withdrawal finds no realtime thread and drops it), never the other way
round.  It is removed when the guest stops, its start fails, it leaves
management, or its withdrawal is done.  A stopping daemon keeps it: it
leaves its tuning in place, and the next daemon takes both over.
The writes are the host ledger's (atomic: temp file, fsync, rename).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..tuning.guest.plan import REALTIME
from ..tuning.guest.report import DomainReport
from ..tuning.host.ledger import Ledger

log = logging.getLogger(__name__)

__all__ = ["RealtimeRecord", "Tuned", "record_path"]


def record_path(lock_file: str) -> str:
    return os.path.splitext(lock_file)[0] + ".realtime.json"


@dataclass(frozen=True)
class Tuned:
    """One guest process rtagent made realtime."""

    uuid: str
    name: str
    pid: int
    started: int  # the process's start time, clock ticks since boot (/proc/PID/stat)
    cgroups: frozenset[str]

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.pid, "started": self.started, "cgroups": sorted(self.cgroups)}


def still_realtime(report: DomainReport) -> bool:
    """Any thread of the guest (vCPU, kvm-pit, …) is FIFO/RR in the kernel."""
    obs = report.observed
    return obs is not None and any(t.policy in REALTIME for t in (*obs.threads, *obs.kthreads))


class RealtimeRecord:
    def __init__(self, path: str, started_of: Callable[[int], int | None]):
        self.path = path
        self._started_of = started_of  # pid -> start time, None when gone
        self._ledger = Ledger(path)
        self.entries: dict[str, Tuned] = self._load()

    def _load(self) -> dict[str, Tuned]:
        try:
            raw = self._ledger.entries()
        except OSError as err:  # malformed: nothing can be inherited from it
            log.warning("%s; starting without it (a guest withdrawn meanwhile stays as it is)", err)
            self._ledger.set_entries({})
            return {}
        out = {}
        for uuid, e in raw.items():
            try:
                out[uuid] = Tuned(uuid, str(e["name"]), int(e["pid"]), int(e["started"]),
                                  frozenset(str(c) for c in e.get("cgroups", [])))
            except (KeyError, TypeError, ValueError):
                log.warning("%s: entry %s unreadable, ignored", self.path, uuid)
        return out

    def matches(self, uuid: str, pid: int | None) -> Tuned | None:
        """The entry of ``uuid`` if it is about this very QEMU process."""
        e = self.entries.get(uuid)
        if e is None or pid is None or e.pid != pid or self._started_of(pid) != e.started:
            return None
        return e

    def note(self, report: DomainReport) -> None:
        """Follow one reconcile: an entry for a guest rtagent makes realtime;
        none once a withdrawn guest has no realtime thread left.  Never
        raises: enforcement goes on without the record."""
        try:
            self._note(report)
        except Exception:
            log.exception("realtime record: %s not noted", report.name)

    def _note(self, report: DomainReport) -> None:
        if report.withdrawn and not still_realtime(report):
            self.done(report.uuid)
            return
        if not (report.realtime and report.spec.valid and report.pid is not None):
            return
        self._put(report.uuid, report.name, report.pid, report.realtime_cgroups)

    def note_start(self, uuid: str, name: str, pid: int, cgroups: set[str] | frozenset[str]) -> None:
        """The start window, before its first FIFO or affinity write for a
        starting guest (daemon/startwatch.py): the same write-ahead as the
        reconcile's, with the vcpuN groups it granted budget to.  A daemon
        killed right after leaves an entry whose undo finds nothing
        realtime (a no-op, then dropped).  Never raises, like :meth:`note`."""
        try:
            self._put(uuid, name, pid, frozenset(cgroups))
        except Exception:
            log.exception("realtime record: starting guest %s not noted", name)

    def _put(self, uuid: str, name: str, pid: int, cgroups: frozenset[str]) -> None:
        """The entry of this QEMU process, with every cgroup noted for it so
        far (a new process of the guest starts over); written when it changed."""
        started = self._started_of(pid)
        if started is None:
            return
        old = self.entries.get(uuid)
        same = old is not None and old.pid == pid and old.started == started
        entry = Tuned(uuid, name, pid, started, cgroups | (old.cgroups if same else frozenset()))
        if entry != old:
            self.entries[uuid] = entry
            self._save()

    def done(self, uuid: str) -> None:
        if self.entries.pop(uuid, None) is not None:
            self._save()

    def _save(self) -> None:
        self._ledger.set_entries({u: e.to_json() for u, e in self.entries.items()})
        try:
            self._ledger.save()
        except OSError as err:  # enforcement goes on; only a restart's undo is at stake
            log.warning("cannot write %s: %s", self.path, err)
