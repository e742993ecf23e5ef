"""Owners and guests for the one-shot ``rtagent interference`` (no daemon,
no libvirt): found in /proc.

An *owner* of a realtime CPU is a user thread with SCHED_FIFO/SCHED_RR whose
affinity is exactly that CPU (what rtagent makes a realtime vCPU); a *guest*
is a process started by libvirt's QEMU driver (``-name guest=NAME,...``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..cpulist import CpuListError, parse_cpulist
from ..tuning import kthreads as ktmod
from .interference_sampler import guest_name_from_cmdline

_RT_POLICIES = (os.SCHED_FIFO, os.SCHED_RR)


def scan(cpus: frozenset[int], proc_root: str = "/proc") -> tuple[dict[int, dict[int, tuple[str, int]]], dict[int, str]]:
    """``(owners, guests)``: ``{cpu: {tid: (process, index)}}`` and ``{pid: domain}``."""
    owners: dict[int, dict[int, tuple[str, int]]] = {}
    guests: dict[int, str] = {}
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        base = Path(proc_root, name)
        try:
            st = ktmod.parse_stat((base / "stat").read_text())
            if int(st["flags"]) & ktmod.PF_KTHREAD:
                continue
            domain = guest_name_from_cmdline((base / "cmdline").read_bytes())
            tids = [t for t in os.listdir(base / "task") if t.isdigit()]
        except (OSError, ValueError, IndexError, KeyError):
            continue
        if domain is not None:
            guests[int(name)] = domain
        try:
            label = domain if domain is not None else (base / "comm").read_text().strip()
        except OSError:
            continue
        for index, tid in enumerate(sorted(tids, key=int)):
            cpu = _rt_pinned_cpu(int(tid), base / "task" / tid)
            if cpu is not None and cpu in cpus:
                owners.setdefault(cpu, {})[int(tid)] = (label, index)
    return owners, guests


def _rt_pinned_cpu(tid: int, task_dir: Path) -> int | None:
    try:
        if os.sched_getscheduler(tid) not in _RT_POLICIES:
            return None
        for line in (task_dir / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                allowed = parse_cpulist(line.split(":", 1)[1].strip())
                return next(iter(allowed)) if len(allowed) == 1 else None
    except (OSError, CpuListError):
        return None
    return None
