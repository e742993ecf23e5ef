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

A live re-pin (``virsh vcpupin/emulatorpin/iothreadpin --live``) starts the
same way: libvirt writes the group's ``cpuset.cpus``, then calls
``sched_setaffinity``, then saves its status file (an fsync) and only then
sends TUNABLE — 20–80 ms later on a busy host.  The watcher sees the write
of a group that no longer holds its plan:

* a widening (the new CPUs include the plan's, e.g. ``0-1``): it writes the
  plan back at once, so libvirt's affinity call lands on the planned CPUs
  (or, if it came first, the write moves the threads back), and hands the
  guest to the loop (``EventKind.CPUSET``, "clamped"), which counts the
  drift and makes libvirt's own pin call so its live XML agrees;
* anything else (the plan's CPUs not all in it): writing the plan back
  could leave libvirt's call an empty intersection and fail the operator's
  command, so it writes nothing, waits (≤ 5 ms) until libvirt's affinity
  call has landed on one of the group's threads and hands the guest to the
  loop as a re-pin, corrected like the TUNABLE event would correct it.
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
from ..kernel.waker import Waker
from ..threadname import name_thread
from ..libvirt_host import DomainEvent, EventKind
from ..tuning.guest.report import DomainReport
from ..vocab import ThreadKind

log = logging.getLogger(__name__)

__all__ = ["CLAMPED", "MOVED", "GuestPlacement", "PlacementWatch", "placement_of"]

_IOTHREAD_GROUP = re.compile(r"iothread(\d+)")
_THREAD_GROUP = re.compile(r"emulator|vcpu\d+|iothread\d+")  # libvirt's per-thread groups
# After a foreign write of a group's CPUs, how long to wait for libvirt's
# sched_setaffinity that follows it (µs apart in libvirt; a busy host).
AFFINITY_WAIT_S = 0.005
# The second key of an EventKind.CPUSET event: what the watch did.
CLAMPED = "clamped"  # wrote the plan back (a widening)
MOVED = "moved"  # wrote nothing: the loop corrects it
# How long after its mkdir a group counts as libvirt's to finish placing:
# libvirt's sequence takes tens of ms; this leaves room for a busy host.
NEW_GROUP_WINDOW_S = 5.0


@dataclass(frozen=True)
class GuestPlacement:
    """Where a managed guest's live-added iothreads go (the plan of its
    emulator threads, or the guest's own ``<iothreadpin>`` for that id),
    and the plan of its existing thread groups."""

    uuid: str
    name: str
    emulator: frozenset[int]
    iothreads: dict[int, frozenset[int]] = field(default_factory=dict)
    # The planned CPUs of each existing thread group (by its name), where
    # every thread in it has the same plan.
    groups: dict[str, frozenset[int]] = field(default_factory=dict)

    def iothread_cpus(self, iothread: int) -> frozenset[int]:
        return self.iothreads.get(iothread) or self.emulator


def placement_of(report: DomainReport) -> GuestPlacement | None:
    """Where a reconciled guest's new iothreads go and what each of its
    thread groups holds by plan; None when nothing was planned (not
    realtime, no process, an invalid intent)."""
    if report.pid is None:
        return None
    emulator = next((tp.want.cpus for tp in report.threads
                     if tp.thread.kind == ThreadKind.MAIN and tp.want.cpus), None)
    if not emulator:
        return None
    pins = {t.iothread: t.cpus for t in report.spec.iothreads if t.cpus}
    return GuestPlacement(report.uuid, report.name, frozenset(emulator), pins, _group_plans(report))


def _group_plans(report: DomainReport) -> dict[str, frozenset[int]]:
    """Group name (libvirt lays out the cpu and cpuset hierarchies alike)
    → the one planned CPU set of the threads in it."""
    wants: dict[str, set[frozenset[int]]] = {}
    for tp in report.threads:
        group = (tp.thread.cgroup_cpu or "").rstrip("/").rsplit("/", 1)[-1]
        if _THREAD_GROUP.fullmatch(group) and tp.want.cpus:
            wants.setdefault(group, set()).add(frozenset(tp.want.cpus))
    return {g: next(iter(w)) for g, w in wants.items() if len(w) == 1}


@dataclass
class _Guest:
    placement: GuestPlacement
    dir: str
    dir_wd: int
    new: dict[str, tuple[int, float]] = field(default_factory=dict)  # group -> (wd, created at)
    groups: dict[str, int] = field(default_factory=dict)  # existing group -> wd


@dataclass(frozen=True)
class _Repin:
    """A foreign write of a group's CPUs: wait for libvirt's affinity call."""

    placement: GuestPlacement
    group_dir: str
    want: frozenset[int]
    at: float
    clamped: bool  # the plan was written back already


class PlacementWatch:
    """The watcher thread.  ``set_guests`` is called from the main loop;
    everything else runs on the watcher's thread."""

    def __init__(self, kernel: Kernel, on_repin: Callable[[DomainEvent, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``on_repin(event, at)``: a re-pin seen in cgroupfs (called on the
        watcher's thread; must only enqueue)."""
        self.kernel = kernel
        self.on_repin = on_repin
        self.clamped = 0  # groups whose CPUs were set before libvirt's affinity call
        self.repins = 0  # re-pins handed to the loop
        self._clock = clock
        self._ino = ino.Inotify()
        self._lock = threading.Lock()
        self._guests: dict[int, _Guest] = {}  # QEMU pid -> what is watched
        self._wds: dict[int, tuple[int, str]] = {}  # wd -> (pid, group; "" for the guest's directory)
        self._stop = threading.Event()
        # stop() wakes the blocked select through this pipe: no timeout, so
        # an idle watch costs nothing (the idle daemon's budget, issue 14).
        self._waker = Waker()
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
        g = self._guests[pid] = _Guest(placement, d, wd)
        self._wds[wd] = (pid, "")
        if self.on_repin is not None:
            for group in self.kernel.cpusets.groups(d):
                if _THREAD_GROUP.fullmatch(group):
                    self._watch_group(pid, g, group)

    def _watch_group(self, pid: int, g: _Guest, group: str) -> None:
        try:
            wd = self._ino.add(os.path.join(g.dir, group), ino.IN_MODIFY)
        except OSError as err:
            log.debug("%s: group %s not watched: %s", g.placement.name, group, err)
            return
        g.groups[group] = wd
        self._wds[wd] = (pid, group)

    def _drop(self, pid: int) -> None:
        g = self._guests.pop(pid)
        for wd in [g.dir_wd] + [w for w, _ in g.new.values()] + list(g.groups.values()):
            self._wds.pop(wd, None)
            try:
                self._ino.remove(wd)
            except OSError:
                pass

    # -- the watcher's thread ---------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cpuset-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._ino.close()
        self._waker.close()

    def _timeout(self) -> float | None:
        """Until the next new group's window ends; None (block) when none is open."""
        with self._lock:
            ends = [at + NEW_GROUP_WINDOW_S for g in self._guests.values() for _, at in g.new.values()]
        return None if not ends else max(0.0, min(ends) - self._clock()) + 0.01

    def _run(self) -> None:
        name_thread("cpuset-watch")
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._ino, self._waker], [], [], self._timeout())
                events = self._ino.read() if self._ino in ready else []
            except (OSError, ValueError):  # closed by stop()
                return
            repins: list[_Repin] = []
            with self._lock:
                for ev in events:
                    try:
                        repins += self._handle(ev)
                    except Exception:  # never let one event end the watch
                        log.exception("cpuset watch: event %s failed", ev)
                self._expire()
            for r in {r.group_dir: r for r in repins}.values():
                self._hand_over(r)

    def _handle(self, ev: ino.InotifyEvent) -> list[_Repin]:
        if ev.overflow:
            log.warning("cpuset watch: inotify queue overflowed; the events and the resync catch up")
            return []
        where = self._wds.get(ev.wd)
        if where is None:
            return []
        pid, group = where
        g = self._guests[pid]
        if ev.mask & ino.IN_IGNORED:  # the directory went away (iothreaddel, guest stopped)
            self._wds.pop(ev.wd, None)
            g.new.pop(group, None)
            g.groups.pop(group, None)
        elif not group and ev.mask & ino.IN_CREATE and _IOTHREAD_GROUP.fullmatch(ev.name):
            self._adopt(pid, g, ev.name)
        elif group in g.new and ev.mask & ino.IN_MODIFY and ev.name == CPUS:
            self._clamp(g, group)
        elif group in g.groups and ev.mask & ino.IN_MODIFY and ev.name == CPUS:
            return self._foreign(g, group)
        return []

    def _foreign(self, g: _Guest, group: str) -> list[_Repin]:
        """A write of an existing group's CPUs: a re-pin if they are no
        longer the plan (our own pin calls write the plan)."""
        want = g.placement.groups.get(group)
        path = os.path.join(g.dir, group)
        try:
            have = self.kernel.cpusets.cpus(path)
        except OSError:
            return []
        if want is None or have is None or have == want:
            return []
        at = self._clock()
        if not have >= want:
            return [_Repin(g.placement, path, want, at, clamped=False)]
        try:
            self.kernel.cpusets.set_cpus(path, want)
        except OSError as err:
            log.debug("%s: %s not put back: %s", g.placement.name, group, err)
            return [_Repin(g.placement, path, want, at, clamped=False)]
        self.clamped += 1
        return [_Repin(g.placement, path, want, at, clamped=True)]

    def _hand_over(self, r: _Repin) -> None:
        """Wait (outside the lock, ≤ AFFINITY_WAIT_S) for libvirt's affinity
        call to land on one of the group's threads, then hand the guest to
        the loop; if it never lands, the loop looks anyway (cheaply)."""
        if not r.clamped:
            end = r.at + AFFINITY_WAIT_S
            tids = self.kernel.cpusets.tasks(r.group_dir)
            while tids and self._clock() < end and not self._moved(tids, r.want):
                time.sleep(0.0002)
        self.repins += 1
        assert self.on_repin is not None
        self.on_repin(DomainEvent(uuid=r.placement.uuid, name=r.placement.name, event=EventKind.CPUSET,
                                  keys=(os.path.basename(r.group_dir), CLAMPED if r.clamped else MOVED)), r.at)

    def _moved(self, tids: list[int], want: frozenset[int]) -> bool:
        for tid in tids:
            try:
                if self.kernel.tasks.affinity(tid) != want:
                    return True
            except OSError:
                continue
        return False

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
        """A new group past its window is an existing group from then on
        (re-pins of it are watched), or unwatched without a re-pin callback."""
        now = self._clock()
        for g in self._guests.values():
            for group, (wd, at) in list(g.new.items()):
                if now - at <= NEW_GROUP_WINDOW_S:
                    continue
                del g.new[group]
                if self.on_repin is not None:
                    g.groups[group] = wd
                    continue
                self._wds.pop(wd, None)
                try:
                    self._ino.remove(wd)
                except OSError:
                    pass
