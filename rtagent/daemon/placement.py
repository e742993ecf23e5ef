"""Keep a live-added iothread where it belongs while libvirt places it.

``virsh iothreadadd --live`` gives no event.  QEMU creates the thread (the
proc connector's FORK, where the daemon tunes it at once: it is born with
the emulator's affinity anyway); then libvirt, 15–50 ms later, makes its
``iothreadN`` cpuset group, moves the thread in and calls
``sched_setaffinity(all CPUs)`` — a realtime CPU included — and says
nothing (docs/benchmarks.md, issue 14; libvirt 9.0's
``qemuProcessSetupPid``, seen with strace).  A fix after that is a window
of exposure, and the thread would be wide for however long the daemon
takes to look again.

The one step that comes first is ``mkdir iothreadN`` with a write of the
parent's CPUs into its ``cpuset.cpus``; the kernel intersects the later
``sched_setaffinity`` with the group's CPUs.  So this watcher (its own
thread, inotify on each managed guest's cpuset directory) writes the
planned CPUs into a new ``iothreadN`` group as soon as libvirt's first
write is there: libvirt's affinity call then lands on the planned CPUs and
the thread is never widened.  It writes nothing else: which CPUs comes from
the main loop's last plan of that guest (:func:`placement_of`, published
with :meth:`PlacementWatch.set_guests`), and the new thread itself is tuned
by the ordinary reconcile.  It acts on its own thread, not through the
loop's queue, because the window between libvirt's two steps (~15 ms) is
shorter than a reconcile on a busy housekeeping CPU.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..cpulist import format_cpulist
from ..kernel import Kernel
from ..kernel import inotify as ino
from ..kernel.cpusets import CPUS
from ..tuning.guest.report import DomainReport
from ..vocab import ThreadKind

log = logging.getLogger(__name__)

__all__ = ["GuestPlacement", "PlacementWatch", "placement_of"]

_IOTHREAD_GROUP = re.compile(r"iothread(\d+)")
# How long after its mkdir a group counts as libvirt's to finish placing:
# libvirt's sequence takes tens of ms; this leaves room for a busy host.
NEW_GROUP_WINDOW_S = 5.0


@dataclass(frozen=True)
class GuestPlacement:
    """Where a managed guest's live-added iothreads go: the plan of its
    emulator threads, or the guest's own ``<iothreadpin>`` for that id."""

    uuid: str
    name: str
    emulator: frozenset[int]
    iothreads: dict[int, frozenset[int]] = field(default_factory=dict)

    def iothread_cpus(self, iothread: int) -> frozenset[int]:
        return self.iothreads.get(iothread) or self.emulator


def placement_of(report: DomainReport) -> GuestPlacement | None:
    """A reconciled guest's placement for new iothreads; None when nothing
    was planned (not realtime, no process, an invalid intent)."""
    if report.pid is None:
        return None
    emulator = next((tp.want.cpus for tp in report.threads
                     if tp.thread.kind == ThreadKind.MAIN and tp.want.cpus), None)
    if not emulator:
        return None
    pins = {t.iothread: t.cpus for t in report.spec.iothreads if t.cpus}
    return GuestPlacement(report.uuid, report.name, frozenset(emulator), pins)


@dataclass
class _Guest:
    placement: GuestPlacement
    dir: str
    dir_wd: int
    new: dict[str, tuple[int, float]] = field(default_factory=dict)  # group -> (wd, created at)


class PlacementWatch:
    """The watcher thread.  ``set_guests`` is called from the main loop;
    everything else runs on the watcher's thread."""

    def __init__(self, kernel: Kernel, clock: Callable[[], float] = time.monotonic):
        self.kernel = kernel
        self.clamped = 0  # groups whose CPUs were set before libvirt's affinity call
        self._clock = clock
        self._ino = ino.Inotify()
        self._lock = threading.Lock()
        self._guests: dict[int, _Guest] = {}  # QEMU pid -> what is watched
        self._wds: dict[int, tuple[int, str]] = {}  # wd -> (pid, group; "" for the guest's directory)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the main loop's side -------------------------------------------------

    def set_guests(self, placements: dict[int, GuestPlacement]) -> None:
        """The managed guests by QEMU pid: watch the new ones, drop the gone."""
        with self._lock:
            for pid in set(self._guests) - set(placements):
                self._drop(pid)
            for pid, placement in placements.items():
                g = self._guests.get(pid)
                if g is not None:
                    g.placement = placement
                else:
                    self._watch(pid, placement)

    def _watch(self, pid: int, placement: GuestPlacement) -> None:
        try:
            d = self.kernel.cpusets.guest_dir(pid)
            if d is None:
                log.debug("%s: no cpuset groups to watch", placement.name)
                return
            wd = self._ino.add(d, ino.IN_CREATE | ino.IN_ONLYDIR)
        except OSError as err:  # gone meanwhile, or out of watches: the reconcile still places the thread
            log.debug("%s: cpuset directory not watched: %s", placement.name, err)
            return
        self._guests[pid] = _Guest(placement, d, wd)
        self._wds[wd] = (pid, "")

    def _drop(self, pid: int) -> None:
        g = self._guests.pop(pid)
        for wd in [g.dir_wd] + [w for w, _ in g.new.values()]:
            self._wds.pop(wd, None)
            try:
                self._ino.remove(wd)
            except OSError:
                pass

    # -- the watcher's thread ---------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cpuset-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._ino.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._ino], [], [], 0.5)
                events = self._ino.read() if ready else []
            except (OSError, ValueError):  # closed by stop()
                return
            with self._lock:
                for ev in events:
                    try:
                        self._handle(ev)
                    except Exception:  # never let one event end the watch
                        log.exception("cpuset watch: event %s failed", ev)
                self._expire()

    def _handle(self, ev: ino.InotifyEvent) -> None:
        if ev.overflow:
            log.warning("cpuset watch: inotify queue overflowed; new iothreads are placed by the reconcile")
            return
        where = self._wds.get(ev.wd)
        if where is None:
            return
        pid, group = where
        g = self._guests[pid]
        if ev.mask & ino.IN_IGNORED:  # the directory went away (iothreaddel, guest stopped)
            self._wds.pop(ev.wd, None)
            g.new.pop(group, None)
        elif not group and ev.mask & ino.IN_CREATE and _IOTHREAD_GROUP.fullmatch(ev.name):
            self._adopt(pid, g, ev.name)
        elif group in g.new and ev.mask & ino.IN_MODIFY and ev.name == CPUS:
            self._clamp(g, group)

    def _adopt(self, pid: int, g: _Guest, group: str) -> None:
        """A new ``iothreadN`` group: watch its writes, and clamp it if
        libvirt's first write is already there."""
        try:
            wd = self._ino.add(os.path.join(g.dir, group), ino.IN_MODIFY)
        except OSError as err:
            log.debug("%s: group %s not watched: %s", g.placement.name, group, err)
            return
        g.new[group] = (wd, self._clock())
        self._wds[wd] = (pid, group)
        self._clamp(g, group)

    def _clamp(self, g: _Guest, group: str) -> None:
        m = _IOTHREAD_GROUP.fullmatch(group)
        assert m is not None
        want = g.placement.iothread_cpus(int(m.group(1)))
        path = os.path.join(g.dir, group)
        try:
            have = self.kernel.cpusets.cpus(path)
            if have is None or have == want:
                return  # libvirt has not written yet (its write wakes us), or nothing to do
            self.kernel.cpusets.set_cpus(path, want)
        except OSError as err:  # removed meanwhile, or CPUs outside the parent's
            log.debug("%s: %s not clamped: %s", g.placement.name, group, err)
            return
        self.clamped += 1
        log.info("%s: new %s cpuset %s -> %s before libvirt's affinity call", g.placement.name, group,
                 format_cpulist(have), format_cpulist(want))

    def _expire(self) -> None:
        now = self._clock()
        for g in self._guests.values():
            for group, (wd, at) in list(g.new.items()):
                if now - at > NEW_GROUP_WINDOW_S:
                    del g.new[group]
                    self._wds.pop(wd, None)
                    try:
                        self._ino.remove(wd)
                    except OSError:
                        pass
