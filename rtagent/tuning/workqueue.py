"""Workqueue cpumasks on the host partition.

Unbound workqueue workers (``kworker/uN:M``) run where the workqueue cpumask
allows; bound kworkers cannot be moved at all.  The global mask is
``/sys/devices/virtual/workqueue/cpumask`` (a hex bitmap); workqueues created
with ``WQ_SYSFS`` (``writeback``, ``blkcg_punt_bio``, …) have their own
``<name>/cpumask``.

Public API
----------

``read_workqueue_masks(sys_root="/sys") -> list[WqMask]``
    The global mask first, then every per-workqueue ``cpumask`` that is
    writable (mode bit ``w``; per-CPU workqueues have none).

``wq_target(cpus, partition) -> frozenset | None``
    Pure: the housekeeping part of ``cpus`` (or every housekeeping CPU), or
    None when the mask already avoids the realtime CPUs.

``write_mask(path, cpus)`` / ``write_mask_text(path, text)``
    The write; raises ``OSError`` (EINVAL when the kernel rejects the mask).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..config import Partition
from ..cpulist import CpuListError, format_hexmask, parse_hexmask
from .irqs import write_raw

WQ_DIR = "devices/virtual/workqueue"


@dataclass(frozen=True)
class WqMask:
    name: str  # "" for the global mask, else the workqueue's name
    path: str
    text: str
    cpus: frozenset[int]

    @property
    def label(self) -> str:
        return "workqueue cpumask (global)" if not self.name else f"workqueue {self.name} cpumask"


def _read(path: Path, name: str) -> WqMask | None:
    try:
        text = path.read_text().strip()
        return WqMask(name, str(path), text, parse_hexmask(text))
    except (OSError, CpuListError):
        return None


def read_workqueue_masks(sys_root: str = "/sys") -> list[WqMask]:
    base = Path(sys_root, WQ_DIR)
    out: list[WqMask] = []
    top = _read(base / "cpumask", "")
    if top is not None:
        out.append(top)
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name in ("power",):
            continue
        path = Path(entry.path, "cpumask")
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if not mode & stat.S_IWUSR:
            continue
        m = _read(path, entry.name)
        if m is not None:
            out.append(m)
    return out


def wq_target(cpus: frozenset[int], partition: Partition) -> frozenset[int] | None:
    if not cpus & partition.realtime:
        return None
    return frozenset(cpus & partition.housekeeping) or partition.housekeeping


def write_mask_text(path: str, text: str) -> None:
    write_raw(path, text.strip() + "\n")


def write_mask(path: str, cpus: frozenset[int]) -> None:
    write_mask_text(path, format_hexmask(cpus))
