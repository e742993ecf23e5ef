"""Host readiness checks: reported, never silently changed.

Public API
----------

``run_host_checks(partition, proc_root="/proc", sys_root="/sys", *,
cmdline_path=None, etc_root="/etc", exclude_pids=())
-> list[HostCheck]``
    Every check below, in this order, each exactly once.  ``partition`` is
    the resolved :class:`~rtagent.config.Partition`; its realtime set may be
    empty (``host.realtime_cpus = "auto"`` on a host without
    ``isolcpus``/``nohz_full``), then the checks that depend on it say that
    no realtime CPUs are configured.  ``exclude_pids`` are the guests' QEMU
    PIDs (their threads are not intruders).  ``cmdline_path`` defaults to
    ``<proc_root>/cmdline``.

``HostCheck(name, ok, detail, severity)`` with ``to_json()`` →
``{"name", "ok", "detail", "severity"}``.  ``severity`` is the severity of
*this result*: ``"info"`` for a passing check (or a purely informational
finding), ``"warning"`` or ``"error"`` for a failing one.  Only ``"error"``
should make ``rtagent check`` exit 1.  ``detail`` always says what was found
and, when not ok, what to change.

Check names (stable; also documented in docs/host-partition.md):

``isolcpus``, ``nohz_full``, ``rcu_nocbs``, ``irqaffinity``
    The kernel command line covers the realtime CPUs (``rcu_nocbs`` is also
    satisfied by ``nohz_full``, which implies it).  Missing → warning:
    rtagent moves kernel threads, IRQs and workqueues off the realtime CPUs
    at runtime, but only boot parameters keep the tick, RCU callbacks and
    early IRQs away.
``rt_throttling``
    ``kernel.sched_rt_runtime_us``: ``-1`` (or ≥ the period) ok; throttling
    on → warning (a realtime vCPU that runs flat out is stopped for
    period−runtime every period); ``0`` → error (no FIFO thread can run).
``rt_group_sched``
    ``cpu.rt_runtime_us`` in the cgroup v1 ``cpu`` hierarchy: RT group
    scheduling is on, vCPU cgroups need an RT budget (info: rtagent grants
    it; error if the root group's budget is 0).  Absent (cgroup v2 or kernel
    without ``CONFIG_RT_GROUP_SCHED``) → ok.
``thp``
    ``[always]`` → warning (khugepaged collapses and compaction stall the
    guest); ``madvise``/``never`` ok.
``ksm``
    ``/sys/kernel/mm/ksm/run`` = 1 → warning (ksmd scans and merges guest
    memory; copy-on-write faults on merged pages).
``delayacct``
    ``kernel.task_delayacct`` = 1 → warning (accounting on every context
    switch).
``timer_migration``
    ``kernel.timer_migration`` should be 0 (timers stay on the CPU that
    armed them instead of being pulled onto an idle realtime CPU) → warning.
``hugepages``
    free/total per page size; none reserved → info (realtime guests should
    be backed by hugepages); all reserved pages in use → info.
``intruders``
    user threads (not kernel threads, not the excluded QEMU processes)
    whose affinity allows a realtime CPU: counted, never moved → warning.
``irqbalance``
    running without banning the realtime CPUs → warning (it moves IRQs back
    onto them, fighting rtagent); running and banning them, or not running
    → ok.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import Partition
from ..cpulist import CpuListError, format_cpulist, parse_cpulist
from ..tuning import irqs as irqmod
from ..tuning import kthreads as ktmod

SEVERITIES = ("info", "warning", "error")
CHECK_NAMES = (
    "isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity", "rt_throttling", "rt_group_sched",
    "thp", "ksm", "delayacct", "timer_migration", "hugepages", "intruders", "irqbalance",
)
_NO_RT = ("no realtime CPUs are configured (host.realtime_cpus = \"auto\" and the kernel has no "
          "isolcpus/nohz_full CPUs): set host.realtime_cpus in the config or boot with isolcpus=")


@dataclass(frozen=True)
class HostCheck:
    name: str
    ok: bool
    detail: str
    severity: str = "info"
    # A count behind the check where there is one (intruder threads), for metrics.
    value: int | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "ok": self.ok, "detail": self.detail, "severity": self.severity}
        if self.value is not None:
            out["value"] = self.value
        return out


def _ok(name: str, detail: str) -> HostCheck:
    return HostCheck(name, True, detail, "info")


def _warn(name: str, detail: str) -> HostCheck:
    return HostCheck(name, False, detail, "warning")


def _error(name: str, detail: str) -> HostCheck:
    return HostCheck(name, False, detail, "error")


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _read_int(path: Path | str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# kernel command line


def parse_cmdline(text: str) -> dict[str, str | None]:
    """``key=value`` and bare ``key`` parameters (last one wins; stops at ``--``,
    after which arguments belong to init)."""
    params: dict[str, str | None] = {}
    for token in text.split():
        if token == "--":
            break
        key, sep, value = token.partition("=")
        params[key] = value.strip('"') if sep else None
    return params


_ISOLCPUS_FLAGS = {"nohz", "domain", "managed_irq"}


def parse_isolcpus(value: str) -> tuple[frozenset[int], frozenset[str]]:
    """``isolcpus=[flag,...,]cpu-list`` → (CPUs, flags)."""
    flags: set[str] = set()
    items: list[str] = []
    for token in value.split(","):
        t = token.strip()
        if t and t[0].isalpha():
            flags.add(t)
        else:
            items.append(t)
    cpus = parse_cpulist(",".join(items), allow_empty=True) if items else frozenset()
    return cpus, frozenset(flags)


def _cmdline_list(params: dict[str, str | None], key: str, online: frozenset[int]) -> frozenset[int] | None:
    if key not in params:
        return None
    value = params[key]
    if value is None:
        return frozenset()
    value = value.strip()
    if value == "all":
        return frozenset(online)
    try:
        return parse_cpulist(value, allow_empty=True)
    except CpuListError:
        return frozenset()


def _check_cmdline(partition: Partition, params: dict[str, str | None]) -> list[HostCheck]:
    rt = partition.realtime
    rts = format_cpulist(rt)
    out: list[HostCheck] = []
    if not rt:
        for name in ("isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity"):
            out.append(_warn(name, _NO_RT))
        return out

    # isolcpus
    if "isolcpus" not in params:
        out.append(_warn("isolcpus", f"isolcpus= is not on the kernel command line: user tasks and the "
                                      f"scheduler's load balancing can still reach realtime CPUs {rts} "
                                      f"(rtagent moves kernel threads, IRQs and workqueues, never user tasks); add isolcpus=managed_irq,domain,{rts}"))
    else:
        try:
            cpus, flags = parse_isolcpus(params["isolcpus"] or "")
        except CpuListError:
            cpus, flags = frozenset(), frozenset()
        missing = rt - cpus
        if missing:
            out.append(_warn("isolcpus", f"isolcpus={params['isolcpus']} does not cover realtime CPU "
                                          f"{format_cpulist(missing)}; use isolcpus=managed_irq,domain,{rts}"))
        elif "managed_irq" not in flags:
            out.append(_warn("isolcpus", f"isolcpus covers {rts} but without managed_irq: managed IRQs "
                                          f"(which refuse affinity changes) may still land on them; add "
                                          f"the managed_irq flag"))
        else:
            out.append(_ok("isolcpus", f"isolcpus={params['isolcpus']} covers realtime CPUs {rts}"))

    nohz = _cmdline_list(params, "nohz_full", partition.online)
    if nohz is None or rt - nohz:
        missing = rt if nohz is None else rt - nohz
        out.append(_warn("nohz_full", f"nohz_full does not cover realtime CPU {format_cpulist(missing)}: the "
                                       f"scheduler tick keeps interrupting the vCPUs; add nohz_full={rts}"))
    else:
        out.append(_ok("nohz_full", f"nohz_full={params['nohz_full']} covers realtime CPUs {rts}"))

    nocbs = _cmdline_list(params, "rcu_nocbs", partition.online)
    offloaded = (nocbs or frozenset()) | (nohz or frozenset())
    missing = rt - offloaded
    if missing:
        out.append(_warn("rcu_nocbs", f"RCU callbacks are not offloaded from realtime CPU "
                                       f"{format_cpulist(missing)}: add rcu_nocbs={rts} (nohz_full= implies it)"))
    else:
        how = f"rcu_nocbs={params['rcu_nocbs']}" if nocbs and not rt - nocbs else "nohz_full (implies rcu_nocbs)"
        out.append(_ok("rcu_nocbs", f"RCU callbacks offloaded from {rts} by {how}"))

    irqaff = _cmdline_list(params, "irqaffinity", partition.online)
    if irqaff is None:
        out.append(_warn("irqaffinity", f"irqaffinity= is not set: IRQs start on every CPU until rtagent "
                                         f"moves them; add irqaffinity={format_cpulist(partition.housekeeping)}"))
    elif irqaff & rt or not irqaff:
        out.append(_warn("irqaffinity", f"irqaffinity={params['irqaffinity']} includes realtime CPUs; use "
                                         f"irqaffinity={format_cpulist(partition.housekeeping)}"))
    else:
        out.append(_ok("irqaffinity", f"irqaffinity={params['irqaffinity']} keeps IRQs off realtime CPUs {rts}"))
    return out


# ---------------------------------------------------------------------------
# sysctls and sysfs


def _check_rt_throttling(proc_root: str) -> HostCheck:
    runtime = _read_int(Path(proc_root, "sys/kernel/sched_rt_runtime_us"))
    period = _read_int(Path(proc_root, "sys/kernel/sched_rt_period_us"))
    if runtime is None:
        return _ok("rt_throttling", "kernel.sched_rt_runtime_us not present (no RT throttling in this kernel)")
    if runtime < 0 or (period is not None and runtime >= period):
        return _ok("rt_throttling", f"RT throttling off (kernel.sched_rt_runtime_us = {runtime})")
    if runtime == 0:
        return _error("rt_throttling", "kernel.sched_rt_runtime_us = 0: no SCHED_FIFO thread may run at all; "
                                       "set kernel.sched_rt_runtime_us = -1")
    stall = (period - runtime) / 1000 if period else 0
    return _warn("rt_throttling",
                 f"RT throttling on (kernel.sched_rt_runtime_us = {runtime} of {period}): a realtime vCPU "
                 f"that runs flat out (guest idle=poll, busy DPDK loop) is stopped for {stall:g} ms every "
                 f"period; set kernel.sched_rt_runtime_us = -1 (sysctl.d) once vCPUs are isolated")


def _check_rt_group_sched(sys_root: str, proc_root: str) -> HostCheck:
    v1 = Path(sys_root, "fs/cgroup/cpu/cpu.rt_runtime_us")
    v1_alt = Path(sys_root, "fs/cgroup/cpu,cpuacct/cpu.rt_runtime_us")
    v2 = Path(sys_root, "fs/cgroup/cpu.rt_runtime_us")
    for path, version in ((v1, "v1"), (v1_alt, "v1"), (v2, "v2")):
        runtime = _read_int(path)
        if runtime is None:
            continue
        if runtime == 0:
            return _error("rt_group_sched", f"RT group scheduling is on (cgroup {version}) and the root group's "
                                            f"cpu.rt_runtime_us is 0: no cgroup can get an RT budget; set "
                                            f"kernel.sched_rt_runtime_us to -1 or a positive value")
        return HostCheck("rt_group_sched", True,
                         f"RT group scheduling is on (cgroup {version}, root cpu.rt_runtime_us = {runtime}): "
                         f"libvirt's vCPU cgroups start with budget 0 and every SCHED_FIFO request in them fails "
                         f"until a budget is granted along the path; rtagent grants it (realtime.rt_budget_us)",
                         "info")
    if Path(sys_root, "fs/cgroup/cgroup.controllers").exists() or Path(sys_root, "fs/cgroup/unified").exists():
        return _ok("rt_group_sched", "no cpu.rt_runtime_us (cgroup v2 or no CONFIG_RT_GROUP_SCHED): "
                                     "SCHED_FIFO needs no per-cgroup budget")
    return _ok("rt_group_sched", "no cpu.rt_runtime_us found: RT group scheduling is off, "
                                 "SCHED_FIFO needs no per-cgroup budget")


def _check_thp(sys_root: str) -> HostCheck:
    text = _read(Path(sys_root, "kernel/mm/transparent_hugepage/enabled"))
    if text is None:
        return _ok("thp", "transparent hugepages not available")
    current = text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()
    if current == "always":
        return _warn("thp", "transparent_hugepage = always: khugepaged collapses and direct compaction stall "
                            "guests; set it to madvise or never (transparent_hugepage=never on the command "
                            "line, or echo never > /sys/kernel/mm/transparent_hugepage/enabled) and back "
                            "realtime guests with hugepages")
    return _ok("thp", f"transparent_hugepage = {current}")


def _check_ksm(sys_root: str) -> HostCheck:
    run = _read_int(Path(sys_root, "kernel/mm/ksm/run"))
    if run is None:
        return _ok("ksm", "KSM not available")
    if run == 1:
        return _warn("ksm", "KSM is running (/sys/kernel/mm/ksm/run = 1): ksmd scans and merges guest memory "
                            "and writes to merged pages fault; set it to 0 (or 2 to unmerge), disable ksmtuned, "
                            "or give realtime guests <memoryBacking><nosharepages/>")
    return _ok("ksm", f"KSM not merging (/sys/kernel/mm/ksm/run = {run})")


def _check_delayacct(proc_root: str) -> HostCheck:
    value = _read_int(Path(proc_root, "sys/kernel/task_delayacct"))
    if value is None:
        return _ok("delayacct", "kernel.task_delayacct not present")
    if value:
        return _warn("delayacct", "kernel.task_delayacct = 1: delay accounting runs on every context switch; "
                                  "set kernel.task_delayacct = 0 (and drop delayacct from the command line)")
    return _ok("delayacct", "kernel.task_delayacct = 0")


def _check_timer_migration(proc_root: str) -> HostCheck:
    value = _read_int(Path(proc_root, "sys/kernel/timer_migration"))
    if value is None:
        return _ok("timer_migration", "kernel.timer_migration not present")
    if value:
        return _warn("timer_migration", "kernel.timer_migration = 1: timers can be migrated onto realtime CPUs; "
                                        "set kernel.timer_migration = 0")
    return _ok("timer_migration", "kernel.timer_migration = 0")


def _check_hugepages(sys_root: str) -> HostCheck:
    base = Path(sys_root, "kernel/mm/hugepages")
    try:
        sizes = sorted(os.listdir(base), key=lambda n: int("".join(c for c in n if c.isdigit()) or 0))
    except OSError:
        return HostCheck("hugepages", True, "no hugepage support in this kernel", "info")
    parts = []
    total_any = 0
    exhausted = []
    for name in sizes:
        total = _read_int(base / name / "nr_hugepages") or 0
        free = _read_int(base / name / "free_hugepages") or 0
        size = name.removeprefix("hugepages-")
        parts.append(f"{size}: {free} free of {total}")
        total_any += total
        if total and not free:
            exhausted.append(size)
    summary = "; ".join(parts) or "no sizes"
    if not total_any:
        return HostCheck("hugepages", False, f"no hugepages reserved ({summary}): realtime guests should be "
                                             f"backed by hugepages; reserve them (hugepagesz=1G hugepages=N on "
                                             f"the command line, or vm.nr_hugepages)", "info")
    if exhausted:
        return HostCheck("hugepages", False, f"{summary}: no free pages left of size {', '.join(exhausted)}; "
                                             f"reserve more for new guests", "info")
    return _ok("hugepages", summary)


# ---------------------------------------------------------------------------
# processes


def _allowed(status: str) -> frozenset[int] | None:
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            try:
                return parse_cpulist(line.split(":", 1)[1], allow_empty=True)
            except CpuListError:
                return None
    return None


def find_intruders(realtime: frozenset[int], proc_root: str = "/proc",
                   exclude_pids: Iterable[int] = ()) -> list[tuple[int, int, str]]:
    """User threads allowed on a realtime CPU: ``(tgid, tid, comm)``.  Kernel
    threads and every thread of the ``exclude_pids`` processes are skipped."""
    excluded = set(exclude_pids)
    out: list[tuple[int, int, str]] = []
    try:
        names = os.listdir(proc_root)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        tgid = int(name)
        if tgid in excluded:
            continue
        try:
            st = ktmod.parse_stat(Path(proc_root, name, "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if int(st["flags"]) & ktmod.PF_KTHREAD:
            continue
        task_dir = Path(proc_root, name, "task")
        try:
            tids = [t for t in os.listdir(task_dir) if t.isdigit()]
        except OSError:
            tids = [name]
            task_dir = Path(proc_root)
        for tid in tids:
            status = _read(task_dir / tid / "status")
            if status is None:
                continue
            cpus = _allowed(status)
            if cpus is not None and cpus & realtime:
                comm = (_read(task_dir / tid / "comm") or "?").strip()
                out.append((tgid, int(tid), comm))
    out.sort()
    return out


def _isolated_by_cmdline(partition: Partition, params: dict[str, str | None]) -> bool:
    """``isolcpus=`` (domain isolation, the default flag) covers every realtime CPU."""
    if "isolcpus" not in params:
        return False
    try:
        cpus, flags = parse_isolcpus(params["isolcpus"] or "")
    except CpuListError:
        return False
    return partition.realtime <= cpus and (not flags - {"managed_irq"} or "domain" in flags)


def _intruders_remedy(partition: Partition, proc_root: str, sys_root: str,
                      params: dict[str, str | None]) -> str:
    """What to change.  ``isolcpus=`` only sets the affinity tasks start with:
    on the unified hierarchy, once the cpuset controller is enabled (libvirt
    does it for ``machine.slice`` when the first guest starts) every task of
    the groups below the root gets the group's CPUs, all of them — seen on
    Debian 12 (systemd 252, kernel 6.1) in the node tier.  There the fix is
    systemd's ``AllowedCPUs=`` on the host's own slices, not the command line."""
    rts, hk = format_cpulist(partition.realtime), format_cpulist(partition.housekeeping)
    if not _isolated_by_cmdline(partition, params):
        return f"boot with isolcpus={rts} or set systemd's CPUAffinity={hk} in system.conf"
    pid1 = (_read(Path(proc_root, "1", "comm")) or "").strip()
    if pid1 == "systemd" and Path(sys_root, "fs/cgroup/cgroup.controllers").exists():
        return (f"isolcpus= already covers {rts}, but on cgroup v2 the cpuset controller gives every task of "
                f"a group all of the group's CPUs: confine the host's own groups with "
                f"`systemctl set-property system.slice AllowedCPUs={hk}` (and user.slice, init.scope)")
    return (f"isolcpus= already covers {rts}, but their affinity was widened after boot (a cpuset or a "
            f"tool): confine them to {hk} (taskset, the init system's CPU affinity)")


def _check_intruders(partition: Partition, proc_root: str, exclude_pids: Iterable[int],
                     params: dict[str, str | None] | None = None, sys_root: str = "/sys") -> HostCheck:
    if not partition.realtime:
        return _warn("intruders", _NO_RT)
    found = find_intruders(partition.realtime, proc_root, exclude_pids)
    rts = format_cpulist(partition.realtime)
    if not found:
        return replace(_ok("intruders", f"no user thread outside the guests may run on realtime CPUs {rts}"), value=0)
    procs: dict[int, str] = {}
    for tgid, _tid, comm in found:
        if tgid not in procs:
            procs[tgid] = (_read(Path(proc_root, str(tgid), "comm")) or comm).strip()
    examples = ", ".join(f"{comm}[{pid}]" for pid, comm in list(procs.items())[:5])
    more = f" and {len(procs) - 5} more" if len(procs) > 5 else ""
    return replace(_warn("intruders",
                 f"{len(found)} user threads in {len(procs)} processes may run on realtime CPUs {rts} "
                 f"(e.g. {examples}{more}); rtagent does not move them: "
                 f"{_intruders_remedy(partition, proc_root, sys_root, params or {})}"), value=len(found))


def _check_irqbalance(partition: Partition, proc_root: str, etc_root: str, sys_root: str) -> HostCheck:
    info = irqmod.detect_irqbalance(proc_root, etc_root, sys_root)
    if not info.running:
        return _ok("irqbalance", "irqbalance is not running")
    pids = ",".join(map(str, info.pids))
    if not partition.realtime:
        return _warn("irqbalance", f"irqbalance is running (pid {pids}); " + _NO_RT)
    rts = format_cpulist(partition.realtime)
    if info.bans(partition.realtime):
        return _ok("irqbalance", f"irqbalance (pid {pids}) bans realtime CPUs {rts} "
                                 f"(banned {format_cpulist(info.banned or ())} from {info.source})")
    banned = "nothing" if not info.banned else f"only {format_cpulist(info.banned)} ({info.source})"
    return _warn("irqbalance", f"irqbalance (pid {pids}) is running and bans {banned}: it will move IRQs back "
                               f"onto realtime CPUs {rts}; set IRQBALANCE_BANNED_CPULIST={rts} in "
                               f"/etc/default/irqbalance (or /etc/sysconfig/irqbalance) and restart it, or "
                               f"stop irqbalance")


# ---------------------------------------------------------------------------


def run_host_checks(
    partition: Partition,
    proc_root: str = "/proc",
    sys_root: str = "/sys",
    *,
    cmdline_path: str | None = None,
    etc_root: str = "/etc",
    exclude_pids: Iterable[int] = (),
) -> list[HostCheck]:
    cmdline = _read(cmdline_path or Path(proc_root, "cmdline")) or ""
    params = parse_cmdline(cmdline)
    checks = _check_cmdline(partition, params)
    checks.append(_check_rt_throttling(proc_root))
    checks.append(_check_rt_group_sched(sys_root, proc_root))
    checks.append(_check_thp(sys_root))
    checks.append(_check_ksm(sys_root))
    checks.append(_check_delayacct(proc_root))
    checks.append(_check_timer_migration(proc_root))
    checks.append(_check_hugepages(sys_root))
    checks.append(_check_intruders(partition, proc_root, exclude_pids, params, sys_root))
    checks.append(_check_irqbalance(partition, proc_root, etc_root, sys_root))
    return checks
