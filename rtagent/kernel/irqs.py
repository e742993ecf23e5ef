"""IRQs: ``/proc/irq/<n>/smp_affinity_list``, their effective affinity and
action names, ``default_smp_affinity``, and the writes.

A managed IRQ (kernel-assigned affinity, e.g. NVMe/virtio multiqueue)
refuses a write with EIO, some with EPERM/EINVAL:
:func:`~rtagent.kernel.errors.outcome_of` calls those *refused*.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cpulist import (
    CpuListError,
    format_cpulist,
    format_kernel_hexmask,
    parse_cpulist,
    parse_hexmask,
)
from . import fs

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["Irq", "Irqs"]


@dataclass(frozen=True)
class Irq:
    irq: int
    affinity: frozenset[int]
    affinity_text: str
    effective: frozenset[int] | None = None
    actions: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        names = ",".join(self.actions)
        return f"irq {self.irq}" + (f" ({names})" if names else "")


class Irqs:
    def __init__(self, kernel: Kernel):
        self._k = kernel

    def _path(self, *parts: str) -> str:
        return self._k.proc_path("irq", *parts)

    def read(self, irq: int) -> Irq | None:
        """One IRQ, or None if it is gone or its affinity is unreadable."""
        d = self._path(str(irq))
        try:
            text = fs.read_text(os.path.join(d, "smp_affinity_list")).strip()
            cpus = parse_cpulist(text, allow_empty=True)
        except (FileNotFoundError, NotADirectoryError, CpuListError):
            return None
        effective = None
        try:
            effective = parse_cpulist(fs.read_text(os.path.join(d, "effective_affinity_list")), allow_empty=True)
        except (OSError, CpuListError):
            pass
        try:
            actions = tuple(sorted(e.name for e in os.scandir(d) if e.is_dir()))
        except OSError:
            actions = ()
        return Irq(irq, cpus, text, effective, actions)

    def all(self) -> list[Irq]:
        """Every IRQ, by number."""
        out = []
        for n in fs.listdir_ints(self._path()):
            irq = self.read(n)
            if irq is not None:
                out.append(irq)
        return out

    def default_affinity(self) -> tuple[str, frozenset[int]] | None:
        """``default_smp_affinity`` (a hex mask: where new IRQs start) as (text, CPUs)."""
        try:
            text = fs.read_text(self._path("default_smp_affinity")).strip()
            return text, parse_hexmask(text)
        except (FileNotFoundError, CpuListError):
            return None

    def default_affinity_path(self) -> str:
        """The knob's path, for privilege checks and messages."""
        return self._path("default_smp_affinity")

    def set_affinity(self, irq: int, cpus: frozenset[int]) -> None:
        path = self._path(str(irq), "smp_affinity_list")
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, f"IRQ {irq} is gone", path)
        fs.write_once(path, format_cpulist(cpus) + "\n")

    def set_affinity_text(self, irq: int, text: str) -> None:
        """Write a saved ``smp_affinity_list`` value back as it was."""
        fs.write_once(self._path(str(irq), "smp_affinity_list"), text.strip() + "\n")

    def set_default_affinity(self, cpus: frozenset[int]) -> None:
        self.set_default_affinity_text(format_kernel_hexmask(cpus))

    def set_default_affinity_text(self, text: str) -> None:
        fs.write_once(self._path("default_smp_affinity"), text.strip() + "\n")
