"""The cpuset groups libvirt keeps per guest thread (``emulator``,
``vcpuN``, ``iothreadN``): where a guest's are, and their ``cpuset.cpus``.

libvirt places a thread it creates live (``virsh iothreadadd``) in three
steps, seen with strace on libvirt 9.0: ``mkdir iothreadN`` and write the
parent's CPUs into its ``cpuset.cpus``; move the thread in (``tasks``,
``cgroup.threads``; ~15 ms here, the unified hierarchy's write waits for
an RCU grace period); then ``sched_setaffinity(all CPUs)``.  The kernel
intersects that last call with the group's ``cpuset.cpus``, so a group
whose CPUs are already the planned ones keeps the thread where it belongs:
that is what :meth:`Cpusets.set_cpus` is for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..cpulist import format_cpulist, parse_cpulist
from . import fs

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["CPUS", "Cpusets"]

CPUS = "cpuset.cpus"
_EMULATOR = "emulator"


class Cpusets:
    def __init__(self, kernel: Kernel):
        self._k = kernel

    def guest_dir(self, pid: int) -> str | None:
        """The directory holding QEMU ``pid``'s thread groups in the
        hierarchy with the cpuset controller (the parent of its main
        thread's ``emulator`` group); None when the process is not laid
        out that way or no hierarchy has cpusets.  Raises OSError when the
        process is gone."""
        text = fs.read_text(self._k.proc_path(str(pid), "task", str(pid), "cgroup"))
        v1 = self._k.cgroups.v1_mounts().get("cpuset")
        v2 = self._k.cgroups.v2_mount()
        for line in text.splitlines():
            hier, controllers, path = line.split(":", 2)
            if v1 is not None and "cpuset" in controllers.split(","):
                mount = v1
            elif v1 is None and v2 is not None and hier == "0" and not controllers:
                mount = v2
            else:
                continue
            group = path.rstrip("/")
            if group.rsplit("/", 1)[-1] != _EMULATOR:
                return None
            d = os.path.join(mount, group.lstrip("/"))
            parent = os.path.dirname(d)
            return parent if os.path.exists(os.path.join(d, CPUS)) else None
        return None

    @staticmethod
    def cpus(group_dir: str) -> frozenset[int] | None:
        """A group's ``cpuset.cpus``; None while it is empty (just created,
        before libvirt's first write).  Raises OSError (the group is gone)."""
        text = fs.read_text(os.path.join(group_dir, CPUS)).strip()
        return parse_cpulist(text) if text else None

    @staticmethod
    def groups(guest_dir: str) -> list[str]:
        """The sub-groups of a guest's directory ([] when it is gone)."""
        try:
            return sorted(e.name for e in os.scandir(guest_dir) if e.is_dir())
        except FileNotFoundError:
            return []

    @staticmethod
    def tasks(group_dir: str) -> list[int]:
        """The thread ids in a group (v1 ``tasks``, v2 ``cgroup.threads``);
        [] when it is gone."""
        for name in ("tasks", "cgroup.threads"):
            try:
                return [int(x) for x in fs.read_text(os.path.join(group_dir, name)).split()]
            except FileNotFoundError:
                continue
        return []

    @staticmethod
    def set_cpus(group_dir: str, cpus: frozenset[int]) -> None:
        """Write a group's ``cpuset.cpus``; the kernel moves its tasks at
        once.  Raises OSError (EINVAL: not within the parent's CPUs)."""
        fs.write_once(os.path.join(group_dir, CPUS), format_cpulist(cpus))
