"""Kernel preflight host checks: kernel features that decide whether a
realtime vCPU can be realtime at all, and whether rtagent can prove it.

``preflight_checks(partition, kernel, cmdline)`` → ``[HostCheck]``, one per
name below, in this order (the kernel is read through
``rtagent/kernel/features.py``; this module only judges).  Each ``detail`` says
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

import re
from collections.abc import Sequence

from ..config import Partition
from ..cpulist import format_cpulist
from ..kernel import Kernel
from ..kernel import features as kf
from ..kernel.procscan import ScannedProcess
from ..vocab import Severity
from .hostchecks import HostCheck

PREFLIGHT_NAMES = ("fair_server", "rt_group_sched_boot", "tracefs", "smt_siblings", "vhost_worker")


def _check(name: str, ok: bool, severity: str, detail: str, value: int | None) -> HostCheck:
    return HostCheck(name, ok, detail, Severity(severity), value)


def kernel_version(osrelease: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", osrelease.strip())
    return (int(m[1]), int(m[2])) if m else (0, 0)


def check_fair_server(partition: Partition, kernel: Kernel) -> HostCheck:
    name = "fair_server"
    if not partition.realtime:
        return _check(name, True, "info", "no realtime CPUs are configured", 0)
    fsv = kf.fair_server(kernel, partition.realtime)
    if not fsv.debugfs:
        return _check(name, True, "info", f"cannot tell: debugfs is not mounted ({kf.DEBUGFS_MOUNT_HINT}); "
                      f"kernels ≥ 6.12 have a fair deadline server that can preempt realtime vCPUs", None)
    if not fsv.present:
        return _check(name, True, "info", "no fair deadline server in this kernel (< 6.12)", 0)
    busy = [f"CPU {c}: {ns} ns per {fsv.period_ns.get(c) or '?'} ns" for c, ns in fsv.runtime_ns.items() if ns]
    unreadable = [c for c, ns in fsv.runtime_ns.items() if ns is None]
    rts = format_cpulist(partition.realtime)
    if busy:
        return _check(name, False, "warning",
                      f"the fair deadline server runs on realtime CPUs ({'; '.join(busy)}): it preempts a "
                      f"SCHED_FIFO vCPU whenever a SCHED_OTHER task is runnable there and keeps the tick on "
                      f"nohz_full CPUs; write 0 to {kf.FAIR_SERVER_FILE} for each of CPU {rts} (at boot, "
                      f"e.g. a oneshot unit)", len(busy))
    if unreadable:
        return _check(name, True, "info", f"cannot read {kf.FAIR_SERVER_FILE} for CPU "
                      f"{format_cpulist(unreadable)} (debugfs restricted?)", None)
    return _check(name, True, "info", f"the fair deadline server is off (runtime 0) on realtime CPUs {rts}", 0)


def check_rt_group_sched_boot(cmdline: dict[str, str | None], kernel: Kernel) -> HostCheck:
    name = "rt_group_sched_boot"
    exposed = kf.rt_runtime_exposed(kernel)
    param = (cmdline.get("rt_group_sched") or "") if "rt_group_sched" in cmdline else None
    if param is not None and param.strip() in ("0", "off", "n") and exposed:
        return _check(name, False, "warning", f"rt_group_sched={param} is on the command line but "
                      f"cpu.rt_runtime_us is still exposed: this kernel ignores it (< 6.16, or built without "
                      f"boot-time control of RT group scheduling); vCPU cgroups still need an RT budget "
                      f"(rtagent grants it)", 1)
    if exposed:
        how = f"rt_group_sched={param}" if param is not None else "the kernel's default, no rt_group_sched="
        return _check(name, True, "info", f"RT group scheduling is in effect ({how}; cpu.rt_runtime_us exposed): "
                      f"libvirt's vCPU cgroups start with RT budget 0 and rtagent grants it; on ≥ 6.16 "
                      f"rt_group_sched=0 on the command line removes the need", 1)
    if param is not None:
        return _check(name, True, "info", f"rt_group_sched={param} and no cpu.rt_runtime_us: SCHED_FIFO needs "
                      f"no per-cgroup budget", 0)
    return _check(name, True, "info", "RT group scheduling is not in effect (no cpu.rt_runtime_us): SCHED_FIFO "
                  "needs no per-cgroup budget", 0)


def check_tracefs(kernel: Kernel) -> HostCheck:
    name = "tracefs"
    st = kf.tracefs_state(kernel)
    if st.root is None:
        return _check(name, False, "warning", f"tracefs is not mounted: the interference accounting (who ran on "
                      f"the realtime CPUs) is off; {kf.TRACEFS_MOUNT_HINT} (systemd does it as "
                      f"sys-kernel-tracing.mount)", 0)
    if st.missing:
        return _check(name, False, "warning", f"tracefs at {st.root} lacks {', '.join(st.missing)}: the "
                      f"interference accounting needs a kernel with CONFIG_FTRACE and these trace events", 0)
    return _check(name, True, "info", f"tracefs at {st.root} has instances and the sched/irq events the "
                  f"interference accounting reads", 1)


def check_smt_siblings(partition: Partition, kernel: Kernel) -> HostCheck:
    name = "smt_siblings"
    if not partition.realtime:
        return _check(name, True, "info", "no realtime CPUs are configured", 0)
    shared: dict[int, frozenset[int]] = {}
    for cpu in sorted(partition.realtime):
        others = (kf.thread_siblings(kernel, cpu) or frozenset({cpu})) - partition.realtime
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
                  f"command line, or {kf.SMT_OFF_HINT})", len(siblings))


def check_vhost_worker(kernel: Kernel, processes: Sequence[ScannedProcess] | None = None) -> HostCheck:
    """``processes``: a /proc scan already taken (the host checks share one)."""
    name = "vhost_worker"
    version = kernel_version(kf.osrelease(kernel))
    kthreads, inside = kf.vhost_workers(kernel, processes)
    if kthreads and not inside:
        return _check(name, True, "info", f"vhost workers are kernel threads ({kthreads} vhost-<pid> kthreads): "
                      f"rtagent pins them as per-VM kernel threads (they are not in QEMU's cgroups)", 0)
    if inside:
        return _check(name, True, "info", f"vhost workers are threads inside QEMU ({inside} seen): they follow "
                      f"QEMU's cgroups and rtagent pins them with the emulator threads", 1)
    in_qemu = version >= (6, 4)
    return _check(name, True, "info", f"no vhost worker running; kernel {version[0]}.{version[1]} runs them as "
                  + ("threads inside QEMU (≥ 6.4)" if in_qemu else "vhost-<pid> kernel threads (< 6.4)"),
                  1 if in_qemu else 0)


def preflight_checks(partition: Partition, kernel: Kernel, cmdline: dict[str, str | None]) -> list[HostCheck]:
    return [
        check_fair_server(partition, kernel),
        check_rt_group_sched_boot(cmdline, kernel),
        check_tracefs(kernel),
        check_smt_siblings(partition, kernel),
        check_vhost_worker(kernel),
    ]
