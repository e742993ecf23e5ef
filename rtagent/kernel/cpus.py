"""CPU topology and the boot-time/runtime knobs that shape it: online,
isolated and nohz_full CPUs, the kernel command line, the scheduler's
sysctls, THP, KSM and the hugepage pools."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cpulist import CpuListError, parse_cpulist
from . import fs

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["HugepagePool", "Cpus"]

_CPU_DIR = ("devices", "system", "cpu")


@dataclass(frozen=True)
class HugepagePool:
    size: str  # "2048kB", "1048576kB"
    total: int
    free: int


def _size_key(name: str) -> int:
    return int("".join(c for c in name if c.isdigit()) or 0)


class Cpus:
    def __init__(self, kernel: Kernel):
        self._k = kernel

    def _cpu_file(self, name: str) -> str:
        return self._k.sys_path(*_CPU_DIR, name)

    def online(self) -> frozenset[int]:
        """Online CPUs (raises OSError/CpuListError: without it nothing can be planned)."""
        return parse_cpulist(fs.read_text(self._cpu_file("online")))

    def _optional_list(self, name: str) -> frozenset[int]:
        try:
            text = fs.read_text(self._cpu_file(name)).strip()
        except FileNotFoundError:
            return frozenset()
        # nohz_full reads "(null)" when the feature is compiled in but unused.
        if not text or text == "(null)":
            return frozenset()
        return parse_cpulist(text)

    def isolated(self) -> frozenset[int]:
        return self._optional_list("isolated")

    def nohz_full(self) -> frozenset[int]:
        return self._optional_list("nohz_full")

    def kernel_isolated(self) -> frozenset[int]:
        """isolated ∪ nohz_full, ignoring unreadable or malformed files."""
        out: frozenset[int] = frozenset()
        for name in ("isolated", "nohz_full"):
            try:
                out |= self._optional_list(name)
            except (OSError, CpuListError):
                continue
        return out

    def cmdline(self) -> str:
        """The kernel command line ("" if unreadable)."""
        try:
            return fs.read_text(self._k.proc_path("cmdline"))
        except OSError:
            return ""

    def sysctl(self, name: str) -> int | None:
        """An integer sysctl by its dotted name (``kernel.sched_rt_runtime_us``);
        None when absent."""
        return fs.read_int(self._k.proc_path("sys", *name.split(".")))

    def thp_enabled(self) -> str | None:
        """The selected transparent hugepage mode (``always``/``madvise``/``never``)."""
        try:
            text = fs.read_text(self._k.sys_path("kernel", "mm", "transparent_hugepage", "enabled"))
        except OSError:
            return None
        return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()

    def ksm_run(self) -> int | None:
        return fs.read_int(self._k.sys_path("kernel", "mm", "ksm", "run"))

    def hugepage_pools(self) -> list[HugepagePool] | None:
        """Pools by page size, smallest first; None without hugepage support."""
        base = self._k.sys_path("kernel", "mm", "hugepages")
        try:
            names = sorted(os.listdir(base), key=_size_key)
        except OSError:
            return None
        return [HugepagePool(n.removeprefix("hugepages-"),
                             fs.read_int(os.path.join(base, n, "nr_hugepages")) or 0,
                             fs.read_int(os.path.join(base, n, "free_hugepages")) or 0) for n in names]
