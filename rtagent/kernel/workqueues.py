"""Workqueue cpumasks.

Unbound workqueue workers (``kworker/uN:M``) run where the workqueue cpumask
allows; bound kworkers cannot be moved at all.  The global mask is
``/sys/devices/virtual/workqueue/cpumask`` (a hex bitmap); workqueues created
with ``WQ_SYSFS`` (``writeback``, ``blkcg_punt_bio``, …) have their own
``<name>/cpumask`` — writable only for unbound ones.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cpulist import CpuListError, parse_hexmask
from . import fs

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["WqMask", "Workqueues"]

WQ_DIR = ("devices", "virtual", "workqueue")


@dataclass(frozen=True)
class WqMask:
    name: str  # "" for the global mask, else the workqueue's name
    path: str  # the knob's path: an identity (saved-originals key), never built above the floor
    text: str
    cpus: frozenset[int]

    @property
    def label(self) -> str:
        return "workqueue cpumask (global)" if not self.name else f"workqueue {self.name} cpumask"


class Workqueues:
    def __init__(self, kernel: Kernel):
        self._k = kernel

    def _dir(self) -> str:
        return self._k.sys_path(*WQ_DIR)

    def path_of(self, name: str) -> str:
        return os.path.join(self._dir(), name, "cpumask") if name else os.path.join(self._dir(), "cpumask")

    def name_of(self, path: str) -> str:
        """The workqueue a saved knob path names ("" = global).  Raises
        ValueError for a path that is not a workqueue cpumask of this kernel."""
        rel = os.path.relpath(os.path.normpath(path), self._dir()).split(os.sep)
        if rel == ["cpumask"]:
            return ""
        if len(rel) == 2 and rel[1] == "cpumask" and rel[0] not in ("..", "."):
            return rel[0]
        raise ValueError(f"{path} is not a workqueue cpumask under {self._dir()}")

    def _read(self, name: str) -> WqMask | None:
        path = self.path_of(name)
        try:
            text = fs.read_text(path).strip()
            return WqMask(name, path, text, parse_hexmask(text))
        except (OSError, CpuListError):
            return None

    def read(self, name: str) -> WqMask | None:
        return self._read(name)

    def all(self) -> list[WqMask]:
        """The global mask first, then every per-workqueue mask that is
        writable (mode bit ``w``; per-CPU workqueues have none)."""
        out: list[WqMask] = []
        top = self._read("")
        if top is not None:
            out.append(top)
        try:
            entries = sorted(os.scandir(self._dir()), key=lambda e: e.name)
        except FileNotFoundError:
            return out
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or entry.name == "power":
                continue
            try:
                mode = os.stat(os.path.join(entry.path, "cpumask")).st_mode
            except OSError:
                continue
            if mode & stat.S_IWUSR:
                m = self._read(entry.name)
                if m is not None:
                    out.append(m)
        return out

    def set_mask_text(self, name: str, text: str) -> None:
        """Write a hex mask; raises OSError (EINVAL when the kernel rejects it)."""
        fs.write_once(self.path_of(name), text.strip() + "\n")
