"""Watch libvirt lay out a starting guest's cgroups (cgroup v1: the ``cpu``
and ``cpuset`` hierarchies), with inotify.

libvirt starts QEMU with its vCPUs stopped (``-S``), then, per vCPU,
``mkdir``s ``…/<guest>/vcpuN``, writes the thread into ``vcpuN/tasks``, sets
its affinity — and only after every vCPU, iothread and device is set up
sends ``cont``.  The STARTED event comes after that.  libvirt writes the
thread into each controller's ``tasks`` in turn, ``cpu`` before ``cpuset``;
joining ``cpuset``'s ``vcpuN`` gives the thread that group's CPUs as its
affinity — the moment it can be made realtime on its pCPU.  The mkdir and the
write are VFS operations, so inotify reports them the moment they happen:
this module turns them into :class:`StartSignal` records for the daemon
(``daemon/startwatch.py``) — a guest group appeared, vCPU N's group
appeared, vCPU N's thread was placed, the guest group is gone.

The watcher thread only adds watches (it must, before libvirt's next mkdir)
and hands signals on; it decides nothing.  Only v1 is watched: on the
unified hierarchy the daemon keeps tuning at the STARTED event.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import fs
from .inotify import IN_CREATE, IN_DELETE, IN_IGNORED, IN_ISDIR, IN_MODIFY, IN_ONLYDIR, Inotify, InotifyEvent
from ..threadname import name_thread
from .waker import Waker

log = logging.getLogger(__name__)

__all__ = ["Signal", "StartSignal", "GuestDir", "parse_guest_dir", "CgroupWatcher", "read_tasks", "vcpu_dirs"]

# What holds the guests' groups: /machine (libvirt without systemd),
# /machine.slice (systemd's machined).
GUEST_PARENTS = ("machine", "machine.slice")
_VCPU_DIR = re.compile(r"vcpu(\d+)")
# qemu-<id>-<name>.libvirt-qemu, or systemd's machine-qemu\x2d<id>\x2d<name>.scope
_GUEST_DIR = re.compile(r"(?:machine-)?qemu(?:-|\\x2d)(\d+)(?:-|\\x2d)(.+?)(?:\.libvirt-qemu|\.scope)")


class Signal(str, enum.Enum):
    GUEST = "guest"  # a guest's group was created
    VCPU = "vcpu"  # its vcpuN group was created
    PLACED = "placed"  # vcpuN/tasks was written
    GONE = "gone"  # the guest's group was removed


@dataclass(frozen=True)
class GuestDir:
    domain_id: int
    name: str  # as libvirt wrote it in the directory name (escaped, maybe shortened)


@dataclass(frozen=True)
class StartSignal:
    signal: Signal
    group: str  # the guest's group, relative to the hierarchy root ("/machine/qemu-3-a.libvirt-qemu")
    guest: GuestDir
    vcpu: int | None = None
    hierarchy: str = "cpu"  # the controller whose hierarchy saw it ("cpu" | "cpuset")


def parse_guest_dir(name: str) -> GuestDir | None:
    """libvirt's machine name in a cgroup directory name; None for anything
    else.  Pure."""
    m = _GUEST_DIR.fullmatch(name)
    if m is None:
        return None
    return GuestDir(int(m.group(1)), m.group(2).replace("\\x2d", "-"))


def read_tasks(mount: str, group: str) -> list[int]:
    """The thread ids in a v1 group's ``tasks`` ([] when it is gone)."""
    try:
        text = fs.read_text(os.path.join(mount, group.lstrip("/"), "tasks"))
    except OSError:
        return []
    return [int(t) for t in text.split() if t.isdigit()]


def vcpu_dirs(mount: str, group: str) -> list[int]:
    """N of every ``vcpuN`` group a guest group has now."""
    try:
        names = os.listdir(os.path.join(mount, group.lstrip("/")))
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _VCPU_DIR.fullmatch(n)) is not None)


@dataclass
class _Watch:
    kind: str  # "root" | "parent" | "guest" | "tasks"
    group: str
    guest: GuestDir | None = None
    vcpu: int | None = None


class CgroupWatcher:
    """One inotify descriptor and its thread over a v1 hierarchy (``mount``).
    ``on_signal`` runs on the watcher thread and must only enqueue."""

    def __init__(self, mount: str, on_signal: Callable[[StartSignal], None], hierarchy: str = "cpu"):
        self.mount = mount
        self.hierarchy = hierarchy
        self.on_signal = on_signal
        self.overflows = 0
        self._ino = Inotify()
        self._lock = threading.Lock()
        self._watches: dict[int, _Watch] = {}
        self._stop = threading.Event()
        # stop() wakes the blocked select through this pipe, so the watcher
        # needs no timeout: an idle host costs it no wake-ups.
        self._waker = Waker()
        self._thread: threading.Thread | None = None

    def _dir(self, group: str) -> str:
        return os.path.join(self.mount, group.lstrip("/"))

    def _add(self, group: str, mask: int, watch: _Watch) -> bool:
        try:
            wd = self._ino.add(self._dir(group), mask)
        except OSError as err:
            log.debug("no watch on %s: %s", group, err)
            return False
        with self._lock:
            self._watches[wd] = watch
        return True

    def start(self) -> None:
        """Watch the hierarchy's root and the guests' parents; raises OSError."""
        self._add("/", IN_CREATE | IN_ONLYDIR, _Watch("root", "/"))
        for parent in GUEST_PARENTS:
            if os.path.isdir(self._dir(parent)):
                self._add("/" + parent, IN_CREATE | IN_DELETE | IN_ONLYDIR, _Watch("parent", "/" + parent))
        self._thread = threading.Thread(target=self._run, name="cgroup-watch", daemon=True)
        self._thread.start()

    def forget(self, group: str) -> None:
        """Stop watching a guest's groups (thread-safe; the daemon is done with it)."""
        with self._lock:
            wds = [wd for wd, w in self._watches.items() if w.kind in ("guest", "tasks") and w.group == group]
            for wd in wds:
                del self._watches[wd]
        for wd in wds:
            try:
                self._ino.remove(wd)
            except OSError as err:
                log.debug("inotify watch %d not removed: %s", wd, err)

    def watched_guests(self) -> int:
        with self._lock:
            return sum(1 for w in self._watches.values() if w.kind == "guest")

    def _run(self) -> None:
        name_thread(f"cgwatch-{self.hierarchy}")
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._ino, self._waker], [], [])
                if self._ino in ready and not self._stop.is_set():
                    for ev in self._ino.read():
                        self._handle(ev)
            except Exception:  # never let the watcher die silently; the STARTED path remains
                if self._stop.is_set():
                    return
                log.exception("cgroup watcher failed; guests are tuned at their STARTED event")
                return

    def _handle(self, ev: InotifyEvent) -> None:
        if ev.overflow:
            self.overflows += 1
            log.warning("cgroup watch overflow: a start may be tuned at its STARTED event only")
            return
        with self._lock:
            w = self._watches.get(ev.wd)
            if ev.mask & IN_IGNORED:
                self._watches.pop(ev.wd, None)
        if w is None or ev.mask & IN_IGNORED:
            return
        if w.kind == "root" and (ev.mask & IN_ISDIR) and ev.name in GUEST_PARENTS:
            parent = "/" + ev.name
            if self._add(parent, IN_CREATE | IN_DELETE | IN_ONLYDIR, _Watch("parent", parent)):
                # A parent created just now holds only starts (libvirt makes
                # it for the first guest since boot): any made before our watch.
                for entry in self._entries(parent):
                    self._guest_dir(parent, InotifyEvent(-1, IN_CREATE | IN_ISDIR, entry))
        elif w.kind == "parent" and (ev.mask & IN_ISDIR):
            self._guest_dir(w.group, ev)
        elif w.kind == "guest" and (ev.mask & IN_ISDIR) and ev.mask & IN_CREATE:
            m = _VCPU_DIR.fullmatch(ev.name)
            if m is not None and w.guest is not None:
                self._vcpu_dir(w.group, w.guest, int(m.group(1)))
        elif w.kind == "tasks" and w.guest is not None and ev.name == "tasks":
            self.on_signal(StartSignal(Signal.PLACED, w.group, w.guest, w.vcpu, self.hierarchy))

    def _guest_dir(self, parent: str, ev: InotifyEvent) -> None:
        guest = parse_guest_dir(ev.name)
        if guest is None:
            return
        group = f"{parent}/{ev.name}"
        if ev.mask & IN_DELETE:
            self.forget(group)
            self.on_signal(StartSignal(Signal.GONE, group, guest, None, self.hierarchy))
            return
        if not self._add(group, IN_CREATE | IN_ONLYDIR, _Watch("guest", group, guest)):
            return
        self.on_signal(StartSignal(Signal.GUEST, group, guest, None, self.hierarchy))
        # A vcpuN made before the watch existed (never seen: libvirt makes
        # them long after the guest group, once QEMU's monitor is up).
        for entry in self._entries(group):
            if (m := _VCPU_DIR.fullmatch(entry)) is not None:
                self._vcpu_dir(group, guest, int(m.group(1)))

    def _entries(self, group: str) -> list[str]:
        try:
            return sorted(os.listdir(self._dir(group)))
        except OSError:
            return []  # removed already: its GONE follows

    def _vcpu_dir(self, group: str, guest: GuestDir, vcpu: int) -> None:
        vgroup = f"{group}/vcpu{vcpu}"
        # The directory, not the file: a write to a file is reported to a
        # watch on its directory too, with the file's name.
        self._add(vgroup, IN_MODIFY, _Watch("tasks", group, guest, vcpu))
        self.on_signal(StartSignal(Signal.VCPU, group, guest, vcpu, self.hierarchy))
        if read_tasks(self.mount, vgroup):  # written before our watch
            self.on_signal(StartSignal(Signal.PLACED, group, guest, vcpu, self.hierarchy))

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._ino.close()
        self._waker.close()
