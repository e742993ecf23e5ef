"""Finding a guest's QEMU process and its separate per-VM kernel threads.

libvirt's pid file names the process, checked against its command line (a
stale pid file may point at a reused pid); else one scan of ``/proc`` for
``-uuid <uuid>``.  A guest's separate kernel threads (``kvm-pit/<qemu
pid>``, before 6.4 ``vhost-<owner tid>``) are found by one scan.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import fs

if TYPE_CHECKING:
    from .root import Kernel

__all__ = ["parse_qemu_name", "qemu_uuid", "QemuProcesses"]

log = logging.getLogger(__name__)


def _qemu_opts(value: str) -> list[str]:
    """Split a QEMU option string at single commas (``,,`` is an escaped comma)."""
    parts, cur, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == ",":
            if value[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_qemu_name(cmdline: list[str]) -> str | None:
    """The guest name from ``-name guest=NAME,...`` (or the old ``-name NAME``)."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg in ("-name", "--name"):
            opts = _qemu_opts(cmdline[i + 1])
            for j, opt in enumerate(opts):
                key, eq, val = opt.partition("=")
                if eq and key == "guest":
                    return val
                if not eq and j == 0:  # implied first key is "guest"
                    return opt
            return None
    return None


def qemu_uuid(cmdline: list[str]) -> str | None:
    for i, arg in enumerate(cmdline[:-1]):
        if arg in ("-uuid", "--uuid"):
            return cmdline[i + 1].lower()
    return None


class QemuProcesses:
    def __init__(self, kernel: Kernel):
        self._k = kernel

    def _looks_like_qemu(self, pid: int, cmdline: list[str]) -> bool:
        """argv[0] or the process name says QEMU (qemu-system-*, qemu-kvm, kvm)."""
        if not cmdline:  # kernel thread or zombie
            return False
        exe = os.path.basename(cmdline[0])
        if "qemu" in exe or exe == "kvm":
            return True
        try:
            comm = self._k.tasks.comm(pid).strip()
        except OSError:
            return False
        return comm.startswith("qemu") or comm == "kvm"

    def _pidfile(self, name: str) -> int | None:
        try:
            text = fs.read_text(os.path.join(self._k.run_root, f"{name}.pid")).strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def find(self, name: str, uuid: str | None) -> int | None:
        """The QEMU process of guest ``name`` (see the module docstring)."""
        want_uuid = uuid.lower() if uuid else None
        pid = self._pidfile(name)
        if pid is not None:
            try:
                cmdline = self._k.tasks.cmdline(pid)
            except OSError:  # gone, or not readable: not ours to trust
                cmdline = []
            if self._looks_like_qemu(pid, cmdline) and (
                    parse_qemu_name(cmdline) == name or (want_uuid is not None and qemu_uuid(cmdline) == want_uuid)):
                return pid
            log.debug("pid file of %s names %d, which is not its QEMU", name, pid)
        if want_uuid:
            for qpid, quuid in self.all().items():
                if quuid == want_uuid:
                    return qpid
        return None

    def all(self) -> dict[int, str]:
        """pid → uuid (lower case, from ``-uuid``) of every QEMU process."""
        out: dict[int, str] = {}
        for pid in self._k.tasks.pids():
            try:
                cmdline = self._k.tasks.cmdline(pid)
            except OSError:
                continue
            uuid = qemu_uuid(cmdline)
            if uuid and self._looks_like_qemu(pid, cmdline):
                out[pid] = uuid
        return out

    def kthreads_matching(self, kind_of: Callable[[str], str | None]) -> list[tuple[int, str]]:
        """``(pid, kind)`` of every kernel thread whose name ``kind_of`` gives
        a kind (one scan of ``/proc``).  Only kernel threads qualify: a user
        process that happens to be called ``vhost-123`` is not one.  What
        the names mean is the caller's table (the guest pipeline's)."""
        found = []
        for st in self._k.tasks.scan():
            kind = kind_of(st.comm)
            if kind is not None and st.kthread:
                found.append((st.pid, kind))
        return found
