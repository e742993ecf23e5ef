"""cgroupfs, v1 and v2: where the hierarchies are, libvirt's layout of a
guest's groups, the RT group scheduling budget files, moving a thread.

libvirt lays a guest out as (v1, ``cpu`` controller)
``/machine/qemu-1-NAME.libvirt-qemu/{emulator,vcpuN,iothreadN}`` or, under
systemd, ``/machine.slice/machine-qemu\\x2d1\\x2dNAME.scope/{emulator,vcpuN}``;
on the unified hierarchy (v2) the thread groups sit one level further down,
``/machine.slice/machine-qemu\\x2d1\\x2dNAME.scope/libvirt/{emulator,vcpuN}``.
Group paths here are always relative to the hierarchy's mount point,
``/``-separated with a leading ``/`` (what ``/proc/<pid>/cgroup`` shows).

RT group scheduling (``CONFIG_RT_GROUP_SCHED``) shows as
``cpu.rt_runtime_us`` in the groups of the hierarchy with the ``cpu``
controller; :meth:`Cgroups.rt_tree` is the one answer to "is it on, and
where".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import fs

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["RUNTIME", "PERIOD", "RtTree", "Cgroups", "parent", "ancestors", "vcpu_of", "guest_group",
           "guests_parent"]

RUNTIME = "cpu.rt_runtime_us"
PERIOD = "cpu.rt_period_us"

_VCPU_RE = re.compile(r"vcpu(\d+)")
_V2_THREADS = "libvirt"  # libvirt's sub-group for the guest's thread groups on v2


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def ancestors(path: str) -> list[str]:
    """Ancestors of a group, excluding the root, nearest last."""
    out = []
    p = parent(path)
    while p != "/":
        out.append(p)
        p = parent(p)
    return list(reversed(out))


def vcpu_of(path: str | None) -> int | None:
    """N when ``path`` is libvirt's group of vCPU N (``…/vcpuN``), else None."""
    if not path:
        return None
    m = _VCPU_RE.fullmatch(path.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def guest_group(path: str) -> str:
    """The guest's own group for one of its thread groups: the parent of
    ``vcpuN``/``emulator``, and one more up past v2's ``libvirt`` level."""
    g = parent(path.rstrip("/"))
    if g.rsplit("/", 1)[-1] == _V2_THREADS:
        g = parent(g)
    return g


def guests_parent(path: str) -> str | None:
    """The group holding all guests' groups (``/machine``, ``/machine.slice``)
    for one of a guest's thread groups; None for a path too short to be one."""
    g = guest_group(path)
    return None if g == "/" else parent(g)


@dataclass(frozen=True)
class RtTree:
    """The hierarchy with RT group scheduling: its mount and version, and the
    budget files of its groups."""

    mount: str
    version: str  # "v1" | "v2"

    def _dir(self, group: str) -> str:
        return os.path.join(self.mount, group.lstrip("/"))

    def file(self, group: str, name: str = RUNTIME) -> str:
        """The path of a group's knob (for messages and permission checks)."""
        return os.path.join(self._dir(group), name)

    def exists(self, group: str) -> bool:
        return os.path.exists(self.file(group))

    def runtime(self, group: str) -> int:
        """``cpu.rt_runtime_us`` (raises FileNotFoundError if the group is gone)."""
        return int(fs.read_text(self.file(group)).strip())

    def held(self, group: str) -> int | None:
        """``cpu.rt_runtime_us``, None when the group is gone (or has no such file)."""
        return fs.read_int(self.file(group))

    def period(self, group: str) -> int:
        return int(fs.read_text(self.file(group, PERIOD)).strip())

    def set_runtime(self, group: str, us: int) -> None:
        fs.write_once(self.file(group), str(us))

    def children(self, group: str) -> list[str]:
        """Child groups that have the budget files."""
        d = self._dir(group)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = group.rstrip("/")
        return [f"{base}/{e.name}" for e in entries
                if e.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(e.path, RUNTIME))]

    def children_hold(self, group: str, *, besides: str | None = None) -> int:
        """What ``group``'s child groups hold between them (but ``besides``):
        the least ``group`` may keep, since the kernel refuses a budget below
        its children's.  A child gone since the listing holds nothing."""
        return sum(max(self.held(c) or 0, 0) for c in self.children(group) if c != besides)

    def guest_groups(self, group: str) -> list[str]:
        """Children of ``group`` that are libvirt guests' groups (``qemu`` in the name)."""
        d = self._dir(group)
        try:
            names = sorted(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False) and "qemu" in e.name)
        except OSError:
            return []
        return [f"{group.rstrip('/')}/{n}" for n in names]

    def _has_tasks(self, d: str) -> bool:
        for name in ("tasks", "cgroup.threads", "cgroup.procs"):
            try:
                return bool(fs.read_text(os.path.join(d, name)).strip())
            except OSError:
                continue
        return False

    def subtree(self, group: str) -> Iterator[tuple[str, bool, int | None]]:
        """``(group, has tasks, rt_runtime_us or None)`` for ``group`` and every
        group below it."""
        for d, _dirs, _files in os.walk(self._dir(group)):
            rel = os.path.relpath(d, self.mount).replace(os.sep, "/")
            rel = "/" if rel == "." else "/" + rel
            yield rel, self._has_tasks(d), fs.read_int(os.path.join(d, RUNTIME))


class Cgroups:
    """cgroupfs of one :class:`Kernel`, read through its ``/proc/self/mounts``."""

    def __init__(self, kernel: Kernel):
        self._k = kernel

    def _mounts(self) -> list[tuple[str, str, list[str]]]:
        """``(mount point, fstype, options)`` of every cgroup/cgroup2 mount."""
        try:
            lines = fs.read_text(self._k.proc_path("self", "mounts")).splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[1], parts[2], parts[3].split(",")))
        return out

    def v1_mounts(self) -> dict[str, str]:
        """controller → mount point of each cgroup v1 hierarchy."""
        out = {}
        for mount, fstype, opts in self._mounts():
            if fstype == "cgroup":
                for opt in opts:
                    if opt in ("cpu", "cpuset", "cpuacct"):
                        out[opt] = mount
        return out

    def v2_mount(self) -> str | None:
        for mount, fstype, _opts in self._mounts():
            if fstype == "cgroup2":
                return mount
        return None

    def rt_tree(self) -> RtTree | None:
        """Where RT group scheduling's budget files are, or None when it is
        off (no ``CONFIG_RT_GROUP_SCHED``; FIFO then needs no budget)."""
        for mount, fstype, opts in self._mounts():
            if fstype == "cgroup" and "cpu" in opts and os.path.exists(os.path.join(mount, RUNTIME)):
                return RtTree(mount, "v1")
        v2 = self.v2_mount()
        if v2 is not None and os.path.exists(os.path.join(v2, RUNTIME)):
            return RtTree(v2, "v2")
        return None

    def unified(self) -> bool:
        """The host runs the unified hierarchy (a cgroup2 mount exists)."""
        return self.v2_mount() is not None

    def join_groups_of(self, pid: int, tid: int) -> None:
        """Move thread ``tid`` into the cpu/cpuset groups of process ``pid``'s
        main thread (libvirt's emulator groups): where a per-VM kernel worker
        born in a realtime vCPU's group belongs.  Raises OSError."""
        main: dict[str, str] = {}
        text = fs.read_text(self._k.proc_path(str(pid), "task", str(pid), "cgroup"))
        for line in text.splitlines():
            hier, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                main[c] = path
            if hier == "0" and not controllers:
                main[""] = path
        done = set()
        for controller, mount in self.v1_mounts().items():
            # cpu and cpuacct share one hierarchy: one write per mount.
            if controller in main and mount not in done:
                fs.write_once(os.path.join(mount, main[controller].lstrip("/"), "tasks"), str(tid))
                done.add(mount)
        v2 = self.v2_mount()
        if v2 is not None and "" in main and not self.v1_mounts():
            fs.write_once(os.path.join(v2, main[""].lstrip("/"), "cgroup.threads"), str(tid))
