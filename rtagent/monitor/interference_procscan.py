"""Owners and guests for the one-shot ``rtagent interference`` (no daemon,
no libvirt): found in /proc.

An *owner* of a realtime CPU is a user thread with SCHED_FIFO/SCHED_RR whose
affinity is exactly that CPU (what rtagent makes a realtime vCPU); a *guest*
is a process started by libvirt's QEMU driver (``-name guest=NAME,...``).
"""

from __future__ import annotations

from ..kernel import Kernel
from ..vocab import REALTIME_POLICIES
from .interference_sampler import guest_name_from_cmdline


def scan(cpus: frozenset[int], kernel: Kernel | None = None) -> tuple[dict[int, dict[int, tuple[str, int]]], dict[int, str]]:
    """``(owners, guests)``: ``{cpu: {tid: (process, index)}}`` and ``{pid: domain}``."""
    tasks = (kernel or Kernel()).tasks
    owners: dict[int, dict[int, tuple[str, int]]] = {}
    guests: dict[int, str] = {}
    for st in tasks.scan():
        if st.kthread:
            continue
        try:
            domain = guest_name_from_cmdline(tasks.cmdline_raw(st.pid))
            tids = tasks.tids(st.pid)
            label = domain if domain is not None else tasks.comm(st.pid).strip()
        except (OSError, ValueError):
            continue
        if domain is not None:
            guests[st.pid] = domain
        for index, tid in enumerate(tids):
            cpu = _rt_pinned_cpu(tasks, st.pid, tid)
            if cpu is not None and cpu in cpus:
                owners.setdefault(cpu, {})[tid] = (label, index)
    return owners, guests


def _rt_pinned_cpu(tasks, pid: int, tid: int) -> int | None:
    """The one CPU a realtime thread is pinned to, else None."""
    try:
        now = tasks.sched(tid, pid)
    except OSError:
        return None
    if now.policy not in REALTIME_POLICIES or len(now.cpus) != 1:
        return None
    return next(iter(now.cpus))
