"""Kernel features the preflight checks look at (monitor/preflight.py):
the fair deadline server, RT group scheduling's files, tracefs, SMT
topology, vhost workers and the kernel release.  Readers only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..cpulist import CpuListError, parse_cpulist
from . import fs, tracefs
from .procscan import ScannedProcess, scan_processes
from .root import Kernel

DEBUGFS_MOUNT_HINT = "mount -t debugfs nodev /sys/kernel/debug"
FAIR_SERVER_FILE = "/sys/kernel/debug/sched/fair_server/cpuN/runtime"
TRACEFS_MOUNT_HINT = "mount -t tracefs nodev /sys/kernel/tracing"
SMT_OFF_HINT = "echo off > /sys/devices/system/cpu/smt/control"
TRACE_EVENTS = ("sched/sched_switch", "irq/irq_handler_entry", "irq/irq_handler_exit",
                "irq/softirq_entry", "irq/softirq_exit")


@dataclass(frozen=True)
class FairServer:
    debugfs: bool                                 # debugfs mounted (sched/ visible)
    present: bool                                 # the kernel has a fair server (≥ 6.12)
    runtime_ns: dict[int, int | None]             # per asked CPU; None: unreadable
    period_ns: dict[int, int | None]


def fair_server(kernel: Kernel, cpus: frozenset[int]) -> FairServer:
    base = kernel.sys_path("kernel", "debug", "sched")
    if not os.path.isdir(base):
        return FairServer(False, False, {}, {})
    server = os.path.join(base, "fair_server")
    if not os.path.isdir(server):
        return FairServer(True, False, {}, {})
    runtime = {c: fs.read_int(os.path.join(server, f"cpu{c}", "runtime")) for c in sorted(cpus)}
    period = {c: fs.read_int(os.path.join(server, f"cpu{c}", "period")) for c in sorted(cpus)}
    return FairServer(True, True, runtime, period)


def rt_runtime_exposed(kernel: Kernel) -> bool:
    """cgroup v1 (or a v2 built with it) exposes ``cpu.rt_runtime_us``."""
    return any(os.path.exists(kernel.sys_path("fs", "cgroup", d, "cpu.rt_runtime_us"))
               for d in ("cpu", "cpu,cpuacct", "."))


@dataclass(frozen=True)
class TracefsState:
    root: str | None
    missing: tuple[str, ...]     # what the interference accounting needs and is not there


def tracefs_state(kernel: Kernel) -> TracefsState:
    root = tracefs.find_tracefs(kernel.proc_path("self", "mounts"),
                                candidates=(kernel.sys_path("kernel", "tracing"),
                                            kernel.sys_path("kernel", "debug", "tracing")))
    if root is None:
        return TracefsState(None, ())
    missing = [e for e in TRACE_EVENTS if not os.path.exists(os.path.join(root, "events", e, "format"))]
    if not os.path.isdir(os.path.join(root, "instances")):
        missing.insert(0, "instances/")
    return TracefsState(root, tuple(missing))


def thread_siblings(kernel: Kernel, cpu: int) -> frozenset[int] | None:
    try:
        text = fs.read_text(kernel.sys_path("devices", "system", "cpu", f"cpu{cpu}", "topology",
                                            "thread_siblings_list"))
        return parse_cpulist(text.strip())
    except (OSError, CpuListError):
        return None


def vhost_workers(kernel: Kernel, processes: Sequence[ScannedProcess] | None = None) -> tuple[int, int]:
    """(vhost workers that are their own process — kernel threads,
    vhost workers that are threads inside another process — QEMU).
    ``processes``: a scan already taken (kernel/procscan.py)."""
    own = inside = 0
    for proc in scan_processes(kernel) if processes is None else processes:
        if proc.stat.comm.startswith("vhost-"):
            own += 1
        else:
            inside += sum(1 for name in proc.names.values() if name.startswith("vhost-"))
    return own, inside


def osrelease(kernel: Kernel) -> str:
    try:
        return fs.read_text(kernel.proc_path("sys", "kernel", "osrelease")).strip()
    except OSError:
        return ""
