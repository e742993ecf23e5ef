"""IRQ affinity on the host partition, irqbalance detection, conflict detection.

Public API
----------

``read_irqs(proc_root="/proc") -> list[Irq]``
    Every ``/proc/irq/<n>/smp_affinity_list`` with its effective affinity
    (when the kernel exposes it) and its action names (the sub-directories
    of ``/proc/irq/<n>``, e.g. ``virtio3-rx``).

``read_default_affinity(proc_root="/proc") -> (text, cpus)``
    ``/proc/irq/default_smp_affinity`` (a hex mask): where new IRQs start.

``irq_target(cpus, partition) -> frozenset | None``
    Pure: where an IRQ allowed on ``cpus`` should go (its housekeeping part,
    or all housekeeping CPUs), or None when it is already off the realtime
    CPUs.

``write_irq_affinity(irq, cpus, proc_root)`` / ``write_default_affinity(cpus,
proc_root)`` / ``write_raw(path, text)``
    The writes.  They raise ``OSError``: a managed IRQ (kernel-assigned
    affinity, e.g. NVMe/virtio multiqueue) refuses with EIO, some with
    EPERM/EINVAL — callers report those as *refused*, not as failures
    (:func:`is_refusal`).

``detect_irqbalance(proc_root="/proc", etc_root="/etc", sys_root="/sys") ->
IrqbalanceInfo``
    Is an ``irqbalance`` process running, and which CPUs does it keep IRQs
    off: ``IRQBALANCE_BANNED_CPULIST`` (irqbalance ≥ 1.8, wins) or
    ``IRQBALANCE_BANNED_CPUS`` (hex mask) from the running process's
    environment, else from ``/etc/default/irqbalance`` /
    ``/etc/sysconfig/irqbalance``; with neither set, irqbalance ≥ 1.8 bans
    the ``isolcpus``/``nohz_full`` CPUs by itself.
    ``IrqbalanceInfo.bans(cpus)`` says whether all of ``cpus`` are banned.

``IrqConflictDetector(threshold=5, window_s=60.0)``
    ``record(irq, now) -> bool``: note one correction of ``irq``; True when
    it was corrected more than ``threshold`` times within ``window_s`` —
    someone else (irqbalance, a tuned profile, a driver) keeps moving it back.
"""

from __future__ import annotations

import errno
import os
import shlex
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Partition
from ..cpulist import CpuListError, format_cpulist, format_hexmask, parse_cpulist, parse_hexmask

REFUSAL_ERRNOS = frozenset({errno.EIO, errno.EPERM, errno.EINVAL, errno.EACCES, errno.EROFS})


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


def read_irqs(proc_root: str = "/proc") -> list[Irq]:
    base = Path(proc_root, "irq")
    out: list[Irq] = []
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        d = base / name
        try:
            text = (d / "smp_affinity_list").read_text().strip()
            cpus = parse_cpulist(text, allow_empty=True)
        except (FileNotFoundError, NotADirectoryError, CpuListError):
            continue
        effective = None
        try:
            effective = parse_cpulist((d / "effective_affinity_list").read_text(), allow_empty=True)
        except (OSError, CpuListError):
            pass
        try:
            actions = tuple(sorted(e.name for e in os.scandir(d) if e.is_dir()))
        except OSError:
            actions = ()
        out.append(Irq(int(name), cpus, text, effective, actions))
    out.sort(key=lambda i: i.irq)
    return out


def read_default_affinity(proc_root: str = "/proc") -> tuple[str, frozenset[int]] | None:
    path = Path(proc_root, "irq", "default_smp_affinity")
    try:
        text = path.read_text().strip()
        return text, parse_hexmask(text)
    except (FileNotFoundError, CpuListError):
        return None


def irq_target(cpus: frozenset[int], partition: Partition) -> frozenset[int] | None:
    if not cpus & partition.realtime:
        return None
    return frozenset(cpus & partition.housekeeping) or partition.housekeeping


def write_raw(path: str | os.PathLike, text: str) -> None:
    """One ``write(2)`` of ``text`` (sysfs/procfs want the whole value at once)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_irq_affinity(irq: int, cpus: frozenset[int], proc_root: str = "/proc") -> None:
    path = Path(proc_root, "irq", str(irq), "smp_affinity_list")
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"IRQ {irq} is gone", str(path))
    write_raw(path, format_cpulist(cpus) + "\n")


def write_default_affinity(cpus: frozenset[int], proc_root: str = "/proc") -> None:
    write_raw(Path(proc_root, "irq", "default_smp_affinity"), format_hexmask(cpus) + "\n")


def is_refusal(err: OSError) -> bool:
    return err.errno in REFUSAL_ERRNOS


def refusal_reason(err: OSError) -> str:
    if err.errno == errno.EIO:
        return "kernel refused (EIO): managed IRQ, its affinity is set by the kernel"
    return f"kernel refused ({errno.errorcode.get(err.errno or 0, err.errno)}): {err.strerror}"


# ---------------------------------------------------------------------------
# irqbalance


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
    if env.get("IRQBALANCE_BANNED_CPULIST", "").strip():
        return parse_cpulist(env["IRQBALANCE_BANNED_CPULIST"], allow_empty=True)
    if env.get("IRQBALANCE_BANNED_CPUS", "").strip():
        return parse_hexmask(env["IRQBALANCE_BANNED_CPUS"])
    return None


def parse_environ(data: bytes) -> dict[str, str]:
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


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


def find_processes(comm: str, proc_root: str = "/proc") -> list[int]:
    pids = []
    try:
        names = os.listdir(proc_root)
    except FileNotFoundError:
        return pids
    for name in names:
        if not name.isdigit():
            continue
        try:
            if Path(proc_root, name, "comm").read_text().strip() == comm:
                pids.append(int(name))
        except OSError:
            continue
    return sorted(pids)


def _kernel_isolated(sys_root: str) -> frozenset[int]:
    cpus: set[int] = set()
    for name in ("isolated", "nohz_full"):
        try:
            text = Path(sys_root, "devices/system/cpu", name).read_text().strip()
        except OSError:
            continue
        if text and text != "(null)":
            try:
                cpus |= parse_cpulist(text)
            except CpuListError:
                pass
    return frozenset(cpus)


def detect_irqbalance(proc_root: str = "/proc", etc_root: str = "/etc", sys_root: str = "/sys") -> IrqbalanceInfo:
    pids = find_processes("irqbalance", proc_root)
    for pid in pids:
        try:
            env = parse_environ(Path(proc_root, str(pid), "environ").read_bytes())
        except OSError:
            continue
        try:
            banned = _banned_from_vars(env)
        except CpuListError:
            banned = None
        if banned is not None:
            return IrqbalanceInfo(True, tuple(pids), banned, f"/proc/{pid}/environ")
    for name in ("default/irqbalance", "sysconfig/irqbalance"):
        path = Path(etc_root, name)
        try:
            env = parse_shell_vars(path.read_text())
        except OSError:
            continue
        try:
            banned = _banned_from_vars(env)
        except CpuListError:
            banned = None
        if banned is not None:
            return IrqbalanceInfo(bool(pids), tuple(pids), banned, f"/etc/{name}")
    implicit = _kernel_isolated(sys_root)
    if implicit:
        return IrqbalanceInfo(bool(pids), tuple(pids), implicit,
                              "isolcpus/nohz_full (irqbalance >= 1.8 bans them by default)")
    return IrqbalanceInfo(bool(pids), tuple(pids), None, "")


# ---------------------------------------------------------------------------
# conflicts


@dataclass
class IrqConflictDetector:
    """Counts corrections per IRQ in a sliding window (simple in-memory state)."""

    threshold: int = 5
    window_s: float = 60.0
    _events: dict[int, deque] = field(default_factory=dict)

    def record(self, irq: int, now: float) -> bool:
        q = self._events.setdefault(irq, deque())
        q.append(now)
        self._trim(q, now)
        return len(q) > max(1, self.threshold)

    def count(self, irq: int, now: float) -> int:
        q = self._events.get(irq)
        if not q:
            return 0
        self._trim(q, now)
        return len(q)

    def _trim(self, q: deque, now: float) -> None:
        while q and q[0] < now - self.window_s:
            q.popleft()
