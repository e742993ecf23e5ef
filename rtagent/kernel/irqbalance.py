"""Is irqbalance running, and which CPUs does it keep IRQs off?

``IRQBALANCE_BANNED_CPULIST`` (irqbalance ≥ 1.8, wins) or
``IRQBALANCE_BANNED_CPUS`` (hex mask) from the running process's
environment, else from ``/etc/default/irqbalance`` /
``/etc/sysconfig/irqbalance``; with neither set, irqbalance ≥ 1.8 bans the
``isolcpus``/``nohz_full`` CPUs by itself.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cpulist import CpuListError, format_cpulist, parse_cpulist, parse_hexmask
from . import fs

if TYPE_CHECKING:
    from .procscan import ScannedProcess
    from .root import Kernel

__all__ = ["IrqbalanceInfo", "parse_shell_vars", "detect_irqbalance"]


@dataclass(frozen=True)
class IrqbalanceInfo:
    running: bool
    pids: tuple[int, ...] = ()
    banned: frozenset[int] | None = None  # None = unknown / nothing banned explicitly
    source: str = ""  # where ``banned`` came from

    def bans(self, cpus: frozenset[int]) -> bool:
        return self.banned is not None and cpus <= self.banned

    def to_json(self) -> dict:
        return {
            "running": self.running,
            "pids": list(self.pids),
            "banned_cpus": None if self.banned is None else format_cpulist(self.banned),
            "source": self.source,
        }


def _banned_from_vars(env: dict[str, str]) -> frozenset[int] | None:
    try:
        if env.get("IRQBALANCE_BANNED_CPULIST", "").strip():
            return parse_cpulist(env["IRQBALANCE_BANNED_CPULIST"], allow_empty=True)
        if env.get("IRQBALANCE_BANNED_CPUS", "").strip():
            return parse_hexmask(env["IRQBALANCE_BANNED_CPUS"])
    except CpuListError:
        return None
    return None


def parse_shell_vars(text: str) -> dict[str, str]:
    """``KEY=value`` lines of /etc/default/irqbalance (shell syntax, comments)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            continue
        try:
            parts = shlex.split(value, comments=True)
        except ValueError:
            continue
        env[key.strip()] = parts[0] if parts else ""
    return env


def _from_processes(kernel: Kernel, pids: list[int]) -> IrqbalanceInfo | None:
    for pid in pids:
        try:
            banned = _banned_from_vars(kernel.tasks.environ(pid))
        except OSError:
            continue
        if banned is not None:
            return IrqbalanceInfo(True, tuple(pids), banned, f"/proc/{pid}/environ")
    return None


def _from_defaults(kernel: Kernel, pids: list[int]) -> IrqbalanceInfo | None:
    for name in ("default/irqbalance", "sysconfig/irqbalance"):
        try:
            env = parse_shell_vars(fs.read_text(kernel.etc_path(name)))
        except OSError:
            continue
        banned = _banned_from_vars(env)
        if banned is not None:
            return IrqbalanceInfo(bool(pids), tuple(pids), banned, f"/etc/{name}")
    return None


def detect_irqbalance(kernel: Kernel, processes: Sequence[ScannedProcess] | None = None) -> IrqbalanceInfo:
    """``processes``: a /proc scan already taken (the host checks share one)."""
    stats = kernel.tasks.scan() if processes is None else (p.stat for p in processes)
    pids = sorted(st.pid for st in stats if st.comm == "irqbalance" and not st.kthread)
    found = _from_processes(kernel, pids) or _from_defaults(kernel, pids)
    if found is not None:
        return found
    implicit = kernel.cpus.kernel_isolated()
    if implicit:
        return IrqbalanceInfo(bool(pids), tuple(pids), implicit,
                              "isolcpus/nohz_full (irqbalance >= 1.8 bans them by default)")
    return IrqbalanceInfo(bool(pids), tuple(pids), None, "")
