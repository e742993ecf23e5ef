"""The root object: where this kernel's filesystems are, made once.

Like node_exporter's ``procfs.NewFS(mountPoint)`` or prometheus_client's
``ProcessCollector(proc=…)``: the daemon and each command make one
``Kernel()`` and pass it down; tests make one over a fixture tree.  Paths
are built here and in the floor's modules only.
"""

from __future__ import annotations

import os
from functools import cached_property

from .cgroups import Cgroups
from .cpusets import Cpusets
from .cpus import Cpus
from .irqs import Irqs
from .qemu import QemuProcesses
from .tasks import Tasks
from .workqueues import Workqueues

__all__ = ["Kernel"]


class Kernel:
    """``proc``/``sys`` are the procfs and sysfs mount points; ``etc`` where
    irqbalance's defaults live; ``run`` libvirt's QEMU pid-file directory."""

    def __init__(self, proc: str = "/proc", sys: str = "/sys", *, etc: str = "/etc",
                 run: str = "/run/libvirt/qemu"):
        self.proc_root = proc
        self.sys_root = sys
        self.etc_root = etc
        self.run_root = run

    def __repr__(self) -> str:
        return f"Kernel(proc={self.proc_root!r}, sys={self.sys_root!r})"

    @property
    def live(self) -> bool:
        """The host's own /proc: PIDs read here are the ones syscalls act on."""
        return os.path.realpath(self.proc_root) == "/proc"

    def proc_path(self, *parts: str) -> str:
        return os.path.join(self.proc_root, *parts)

    def sys_path(self, *parts: str) -> str:
        return os.path.join(self.sys_root, *parts)

    def etc_path(self, *parts: str) -> str:
        return os.path.join(self.etc_root, *parts)

    @cached_property
    def tasks(self) -> Tasks:
        return Tasks(self)

    @cached_property
    def cgroups(self) -> Cgroups:
        return Cgroups(self)

    @cached_property
    def cpusets(self) -> Cpusets:
        return Cpusets(self)

    @cached_property
    def irqs(self) -> Irqs:
        return Irqs(self)

    @cached_property
    def workqueues(self) -> Workqueues:
        return Workqueues(self)

    @cached_property
    def cpus(self) -> Cpus:
        return Cpus(self)

    @cached_property
    def qemu(self) -> QemuProcesses:
        return QemuProcesses(self)
