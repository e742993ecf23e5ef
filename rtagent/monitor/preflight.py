"""Kernel preflight host checks: kernel features that decide whether a
realtime vCPU can be realtime at all, and whether rtagent can prove it.

``preflight_checks(partition, proc_root, sys_root, *, debugfs_root, cmdline)``
→ ``[HostCheck]``, one per name below, in this order.  Each ``detail`` says
what was found and, when not ok, what to change; ``value`` is the number
behind it (exported as ``rtagent_host_check_value{check}``).

``fair_server``
    The fair deadline server (kernels ≥ 6.12:
    ``<debugfs>/sched/fair_server/cpuN/runtime``, ns per ``period``) gives
    SCHED_OTHER tasks a reserved slice that *preempts* SCHED_FIFO tasks and
    keeps the tick on ``nohz_full`` CPUs.  A non-zero runtime on a realtime
    CPU → warning (value: how many realtime CPUs have one).  Absent (older
    kernel) → ok; debugfs not mounted or unreadable → info (cannot tell).
``rt_group_sched_boot``
    ``rt_group_sched=`` on the kernel command line (≥ 6.16: RT group
    scheduling can be switched off at boot) against whether the cgroup v1
    ``cpu.rt_runtime_us`` is exposed.  Exposed → info (rtagent grants the
    budgets; ``rt_group_sched=0`` would make them unnecessary); asked off
    but still exposed → warning (the kernel ignored it).  Value: 1 if RT
    group scheduling is in effect.
``tracefs``
    tracefs mounted with ``instances/`` and the events the interference
    accounting needs → ok (value 1); otherwise warning with the mount or
    kernel option to fix (value 0).
``smt_siblings``
    An SMT sibling of a realtime CPU that is not itself realtime runs
    anything else on the same core (execution units, caches) → warning
    (value: how many such siblings).
``vhost_worker``
    How vhost workers run: threads inside QEMU (≥ 6.4; they follow QEMU's
    cgroups and rtagent pins them as QEMU threads) or ``vhost-<pid>`` kernel
    threads (older; rtagent pins them as per-VM kthreads).  Informational;
    value 1 for threads in QEMU, 0 for kthreads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import Partition
from ..cpulist import CpuListError, format_cpulist, parse_cpulist
from .hostchecks import HostCheck

PREFLIGHT_NAMES = ("fair_server", "rt_group_sched_boot", "tracefs", "smt_siblings", "vhost_worker")
TRACE_EVENTS = ("sched/sched_switch", "irq/irq_handler_entry", "irq/irq_handler_exit",
                "irq/softirq_entry", "irq/softirq_exit")


def _check(name: str, ok: bool, severity: str, detail: str, value: int | None) -> HostCheck:
    return HostCheck(name, ok, detail, severity, value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def kernel_version(osrelease: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", osrelease.strip())
    return (int(m[1]), int(m[2])) if m else (0, 0)


# ---------------------------------------------------------------------------


def check_fair_server(partition: Partition, debugfs_root: str) -> HostCheck:
    name = "fair_server"
    if not partition.realtime:
        return _check(name, True, "info", "no realtime CPUs are configured", 0)
    base = Path(debugfs_root, "sched")
    if not base.is_dir():
        return _check(name, True, "info", f"cannot tell: debugfs is not mounted at {debugfs_root} "
                      f"(mount -t debugfs nodev {debugfs_root}) — kernels ≥ 6.12 have a fair deadline "
                      f"server that can preempt realtime vCPUs", None)
    if not (base / "fair_server").is_dir():
        return _check(name, True, "info", "no fair deadline server in this kernel (< 6.12)", 0)
    busy, unreadable = [], []
    for cpu in sorted(partition.realtime):
        text = _read(base / "fair_server" / f"cpu{cpu}" / "runtime")
        if text is None or not text.strip().lstrip("-").isdigit():
            unreadable.append(cpu)
        elif int(text) > 0:
            period = (_read(base / "fair_server" / f"cpu{cpu}" / "period") or "?").strip()
            busy.append(f"CPU {cpu}: {int(text)} ns per {period} ns")
    rts = format_cpulist(partition.realtime)
    if busy:
        return _check(name, False, "warning",
                      f"the fair deadline server runs on realtime CPUs ({'; '.join(busy)}): it preempts a "
                      f"SCHED_FIFO vCPU whenever a SCHED_OTHER task is runnable there and keeps the tick on "
                      f"nohz_full CPUs; write 0 to {debugfs_root}/sched/fair_server/cpuN/runtime for each of "
                      f"CPU {rts} (at boot, e.g. a oneshot unit)", len(busy))
    if unreadable:
        return _check(name, True, "info", f"cannot read {debugfs_root}/sched/fair_server/cpuN/runtime for CPU "
                      f"{format_cpulist(unreadable)} (debugfs restricted?)", None)
    return _check(name, True, "info", f"the fair deadline server is off (runtime 0) on realtime CPUs {rts}", 0)


def _rt_runtime_exposed(sys_root: str) -> bool:
    return any(Path(sys_root, "fs/cgroup", d, "cpu.rt_runtime_us").exists()
               for d in ("cpu", "cpu,cpuacct", "."))


def check_rt_group_sched_boot(cmdline: dict[str, str | None], sys_root: str) -> HostCheck:
    name = "rt_group_sched_boot"
    exposed = _rt_runtime_exposed(sys_root)
    param = cmdline.get("rt_group_sched", "") if "rt_group_sched" in cmdline else None
    if param is not None and param.strip() in ("0", "off", "n") and exposed:
        return _check(name, False, "warning", f"rt_group_sched={param} is on the command line but "
                      f"cpu.rt_runtime_us is still exposed: this kernel ignores it (< 6.16, or built without "
                      f"CONFIG_RT_GROUP_SCHED_DEFAULT_DISABLED support); vCPU cgroups still need an RT budget "
                      f"(rtagent grants it)", 1)
    if exposed:
        how = f"rt_group_sched={param}" if param is not None else "the kernel's default (no rt_group_sched= on the command line)"
        return _check(name, True, "info", f"RT group scheduling is in effect ({how}, cpu.rt_runtime_us exposed): "
                      f"libvirt's vCPU cgroups start with RT budget 0 and rtagent grants it; on ≥ 6.16 "
                      f"rt_group_sched=0 on the command line removes the need", 1)
    if param is not None:
        return _check(name, True, "info", f"rt_group_sched={param} and no cpu.rt_runtime_us: SCHED_FIFO needs "
                      f"no per-cgroup budget", 0)
    return _check(name, True, "info", "RT group scheduling is not in effect (no cpu.rt_runtime_us): SCHED_FIFO "
                  "needs no per-cgroup budget", 0)


def check_tracefs(mounts_text: str | None, tracefs_candidates: tuple[str, ...]) -> HostCheck:
    name = "tracefs"
    root = None
    for line in (mounts_text or "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            root = Path(parts[1])
            break
    if root is None:
        root = next((Path(c) for c in tracefs_candidates if Path(c, "instances").is_dir()), None)
    if root is None:
        return _check(name, False, "warning", "tracefs is not mounted: the interference accounting (who ran on the "
                      "realtime CPUs) is off; mount -t tracefs nodev /sys/kernel/tracing (systemd does it as "
                      "sys-kernel-tracing.mount)", 0)
    missing = [e for e in TRACE_EVENTS if not Path(root, "events", e, "format").exists()]
    if not Path(root, "instances").is_dir():
        missing.insert(0, "instances/")
    if missing:
        return _check(name, False, "warning", f"tracefs at {root} lacks {', '.join(missing)}: the interference "
                      f"accounting needs a kernel with CONFIG_FTRACE and these trace events", 0)
    return _check(name, True, "info", f"tracefs at {root} has instances and the sched/irq events the "
                  f"interference accounting reads", 1)


def check_smt_siblings(partition: Partition, sys_root: str) -> HostCheck:
    name = "smt_siblings"
    if not partition.realtime:
        return _check(name, True, "info", "no realtime CPUs are configured", 0)
    shared: dict[int, frozenset[int]] = {}
    for cpu in sorted(partition.realtime):
        text = _read(Path(sys_root, f"devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"))
        try:
            siblings = parse_cpulist(text.strip()) if text else frozenset({cpu})
        except CpuListError:
            continue
        others = siblings - partition.realtime
        if others:
            shared[cpu] = others
    if not shared:
        return _check(name, True, "info", f"no realtime CPU shares its core with a non-realtime SMT sibling "
                      f"(realtime CPUs {format_cpulist(partition.realtime)})", 0)
    siblings = frozenset().union(*shared.values())
    pairs = ", ".join(f"{c}↔{format_cpulist(s)}" for c, s in shared.items())
    return _check(name, False, "warning", f"realtime CPUs share their core with SMT siblings that run other work "
                  f"({pairs}): they compete for the core's execution units and caches; make CPU "
                  f"{format_cpulist(siblings)} realtime too and leave it idle, or turn SMT off (nosmt on the "
                  f"command line, or echo off > /sys/devices/system/cpu/smt/control)", len(siblings))


def _vhost_threads(proc_root: str) -> tuple[int, int]:
    """(vhost kernel threads, vhost threads inside processes)."""
    kthreads = tasks = 0
    try:
        pids = [p for p in os.listdir(proc_root) if p.isdigit()]
    except OSError:
        return 0, 0
    for pid in pids:
        comm = (_read(Path(proc_root, pid, "comm")) or "").strip()
        if comm.startswith("vhost-"):
            kthreads += 1     # a vhost worker as its own process is a kthread
            continue
        try:
            tids = [t for t in os.listdir(Path(proc_root, pid, "task")) if t.isdigit() and t != pid]
        except OSError:
            continue
        tasks += sum(1 for t in tids if (_read(Path(proc_root, pid, "task", t, "comm")) or "").startswith("vhost-"))
    return kthreads, tasks


def check_vhost_worker(proc_root: str) -> HostCheck:
    name = "vhost_worker"
    version = kernel_version(_read(Path(proc_root, "sys/kernel/osrelease")) or "")
    kthreads, tasks = _vhost_threads(proc_root)
    if kthreads and not tasks:
        return _check(name, True, "info", f"vhost workers are kernel threads ({kthreads} vhost-<pid> kthreads): "
                      f"rtagent pins them as per-VM kernel threads (they are not in QEMU's cgroups)", 0)
    if tasks:
        return _check(name, True, "info", f"vhost workers are threads inside QEMU ({tasks} seen): they follow "
                      f"QEMU's cgroups and rtagent pins them with the emulator threads", 1)
    in_qemu = version >= (6, 4)
    return _check(name, True, "info", f"no vhost worker running; kernel {version[0]}.{version[1]} runs them as "
                  + ("threads inside QEMU (≥ 6.4)" if in_qemu else "vhost-<pid> kernel threads (< 6.4)"),
                  1 if in_qemu else 0)


def preflight_checks(partition: Partition, proc_root: str = "/proc", sys_root: str = "/sys", *,
                     cmdline: dict[str, str | None], debugfs_root: str | None = None,
                     tracefs_candidates: tuple[str, ...] = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"),
                     ) -> list[HostCheck]:
    debugfs = debugfs_root or str(Path(sys_root, "kernel/debug"))
    mounts = _read(Path(proc_root, "self/mounts"))
    return [
        check_fair_server(partition, debugfs),
        check_rt_group_sched_boot(cmdline, sys_root),
        check_tracefs(mounts, tracefs_candidates),
        check_smt_siblings(partition, sys_root),
        check_vhost_worker(proc_root),
    ]
