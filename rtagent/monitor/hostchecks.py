"""Host readiness checks: reported, never silently changed.

The checks are a registry, :data:`REGISTRY`: one :class:`CheckDef` per
check (several names for the kernel command line), in report order, with
the Prometheus gauge of its count where it has one.  **A new host check is
this file only**: its name in :class:`Name`, its function, its registry
entry.  The daemon, ``rtagent check``, ``rtagent status`` and ``/metrics``
all iterate the registry and carry the typed :class:`HostCheck` results.

``severity`` is the severity of *this result*: ``info`` for a passing check
(or a purely informational finding), ``warning`` or ``error`` for a failing
one; only ``error`` makes ``rtagent check`` exit 1.  ``detail`` always says
what was found and, when not ok, what to change.  The check names and what
each looks at are documented in docs/host-partition.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property

from ..config import Partition
from ..cpulist import CpuListError, format_cpulist, parse_cpulist
from ..kernel import Kernel
from ..kernel.irqbalance import detect_irqbalance
from ..kernel.procscan import ScannedProcess, ThreadNames, scan_processes
from ..kernel.tasks import cpus_allowed
from ..tuning.guest import vcpusched
from ..vocab import Severity

__all__ = ["Name", "HostCheck", "CheckMetric", "CheckDef", "REGISTRY", "CHECK_NAMES", "SEVERITIES", "run_host_checks",
           "metric_of", "parse_cmdline", "parse_isolcpus", "find_intruders"]



class Name(StrEnum):
    """Host check names (stable; documented in docs/host-partition.md)."""

    ISOLCPUS = "isolcpus"
    NOHZ_FULL = "nohz_full"
    RCU_NOCBS = "rcu_nocbs"
    IRQAFFINITY = "irqaffinity"
    RT_THROTTLING = "rt_throttling"
    RT_GROUP_SCHED = "rt_group_sched"
    THP = "thp"
    KSM = "ksm"
    DELAYACCT = "delayacct"
    TIMER_MIGRATION = "timer_migration"
    HUGEPAGES = "hugepages"
    INTRUDERS = "intruders"
    IRQBALANCE = "irqbalance"
    # kernel preflight (monitor/preflight.py)
    FAIR_SERVER = "fair_server"
    RT_GROUP_SCHED_BOOT = "rt_group_sched_boot"
    TRACEFS = "tracefs"
    SMT_SIBLINGS = "smt_siblings"
    VHOST_WORKER = "vhost_worker"


SEVERITIES = tuple(Severity)
_NO_RT = ("no realtime CPUs are configured (host.realtime_cpus = \"auto\" and the kernel has no "
          "isolcpus/nohz_full CPUs): set host.realtime_cpus in the config or boot with isolcpus=")


@dataclass(frozen=True)
class HostCheck:
    name: Name | str
    ok: bool
    detail: str
    severity: Severity = Severity.INFO
    value: int | None = None  # the count behind the check where its CheckDef has a metric

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": str(self.name), "ok": self.ok, "detail": self.detail,
                                  "severity": str(self.severity)}
        if self.value is not None:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class CheckMetric:
    """A gauge exported with the check's ``value`` (``rtagent_<name>``)."""

    name: str
    help: str


@dataclass(frozen=True)
class Context:
    kernel: Kernel
    partition: Partition
    exclude_pids: frozenset[int] = frozenset()
    # Defined guests with a realtime <vcpusched> (libvirt applies it at start).
    vcpusched_guests: tuple[str, ...] = ()
    # PID -> {TID: name} of the managed guests' QEMUs as the daemon last
    # observed them: the scan does not list and read their threads again.
    known_threads: Mapping[int, Mapping[int, str]] = field(default_factory=dict)
    # The names earlier runs read (the daemon keeps one): not read again.
    thread_names: ThreadNames | None = None

    @cached_property
    def processes(self) -> tuple[ScannedProcess, ...]:
        """The one /proc scan of this run (kernel/procscan.py), taken by the
        first check that needs it: the intruders, irqbalance and vhost_worker checks."""
        return scan_processes(self.kernel, self.known_threads, self.thread_names)


@dataclass(frozen=True)
class CheckDef:
    names: tuple[Name, ...]  # what ``run`` returns, in this order
    run: Callable[[Context], list[HostCheck]]
    metric: CheckMetric | None = field(default=None)


def _ok(name: Name, detail: str) -> HostCheck:
    return HostCheck(name, True, detail, Severity.INFO)


def _warn(name: Name, detail: str) -> HostCheck:
    return HostCheck(name, False, detail, Severity.WARNING)


def _error(name: Name, detail: str) -> HostCheck:
    return HostCheck(name, False, detail, Severity.ERROR)


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


def _isolcpus(rt: frozenset[int], params: dict[str, str | None]) -> HostCheck:
    rts = format_cpulist(rt)
    if "isolcpus" not in params:
        return _warn(Name.ISOLCPUS, f"isolcpus= is not on the kernel command line: user tasks and the "
                                    f"scheduler's load balancing can still reach realtime CPUs {rts} "
                                    f"(rtagent moves kernel threads, IRQs and workqueues, never user tasks); "
                                    f"add isolcpus=managed_irq,domain,{rts}")
    try:
        cpus, flags = parse_isolcpus(params["isolcpus"] or "")
    except CpuListError:
        cpus, flags = frozenset(), frozenset()
    missing = rt - cpus
    if missing:
        return _warn(Name.ISOLCPUS, f"isolcpus={params['isolcpus']} does not cover realtime CPU "
                                    f"{format_cpulist(missing)}; use isolcpus=managed_irq,domain,{rts}")
    if "managed_irq" not in flags:
        return _warn(Name.ISOLCPUS, f"isolcpus covers {rts} but without managed_irq: managed IRQs "
                                    f"(which refuse affinity changes) may still land on them; add "
                                    f"the managed_irq flag")
    return _ok(Name.ISOLCPUS, f"isolcpus={params['isolcpus']} covers realtime CPUs {rts}")


def _nohz_and_rcu(p: Partition, params: dict[str, str | None]) -> list[HostCheck]:
    rt, rts = p.realtime, format_cpulist(p.realtime)
    nohz = _cmdline_list(params, "nohz_full", p.online)
    if nohz is None or rt - nohz:
        missing = rt if nohz is None else rt - nohz
        first = _warn(Name.NOHZ_FULL, f"nohz_full does not cover realtime CPU {format_cpulist(missing)}: the "
                                      f"scheduler tick keeps interrupting the vCPUs; add nohz_full={rts}")
    else:
        first = _ok(Name.NOHZ_FULL, f"nohz_full={params['nohz_full']} covers realtime CPUs {rts}")
    nocbs = _cmdline_list(params, "rcu_nocbs", p.online)
    missing = rt - ((nocbs or frozenset()) | (nohz or frozenset()))
    if missing:
        second = _warn(Name.RCU_NOCBS, f"RCU callbacks are not offloaded from realtime CPU "
                                       f"{format_cpulist(missing)}: add rcu_nocbs={rts} (nohz_full= implies it)")
    else:
        how = f"rcu_nocbs={params['rcu_nocbs']}" if nocbs and not rt - nocbs else "nohz_full (implies rcu_nocbs)"
        second = _ok(Name.RCU_NOCBS, f"RCU callbacks offloaded from {rts} by {how}")
    return [first, second]


def _irqaffinity(p: Partition, params: dict[str, str | None]) -> HostCheck:
    hk = format_cpulist(p.housekeeping)
    irqaff = _cmdline_list(params, "irqaffinity", p.online)
    if irqaff is None:
        return _warn(Name.IRQAFFINITY, f"irqaffinity= is not set: IRQs start on every CPU until rtagent "
                                       f"moves them; add irqaffinity={hk}")
    if irqaff & p.realtime or not irqaff:
        return _warn(Name.IRQAFFINITY, f"irqaffinity={params['irqaffinity']} includes realtime CPUs; use "
                                       f"irqaffinity={hk}")
    return _ok(Name.IRQAFFINITY, f"irqaffinity={params['irqaffinity']} keeps IRQs off realtime CPUs "
                                 f"{format_cpulist(p.realtime)}")


_CMDLINE = (Name.ISOLCPUS, Name.NOHZ_FULL, Name.RCU_NOCBS, Name.IRQAFFINITY)


def _check_cmdline(ctx: Context) -> list[HostCheck]:
    if not ctx.partition.realtime:
        return [_warn(name, _NO_RT) for name in _CMDLINE]
    params = parse_cmdline(ctx.kernel.cpus.cmdline())
    return [_isolcpus(ctx.partition.realtime, params), *_nohz_and_rcu(ctx.partition, params),
            _irqaffinity(ctx.partition, params)]


# ---------------------------------------------------------------------------
# sysctls, cgroupfs and sysfs


def _check_rt_throttling(ctx: Context) -> list[HostCheck]:
    runtime = ctx.kernel.cpus.sysctl("kernel.sched_rt_runtime_us")
    period = ctx.kernel.cpus.sysctl("kernel.sched_rt_period_us")
    name = Name.RT_THROTTLING
    if runtime is None:
        return [_ok(name, "kernel.sched_rt_runtime_us not present (no RT throttling in this kernel)")]
    if runtime < 0 or (period is not None and runtime >= period):
        return [_ok(name, f"RT throttling off (kernel.sched_rt_runtime_us = {runtime})")]
    if runtime == 0:
        return [_error(name, "kernel.sched_rt_runtime_us = 0: no SCHED_FIFO thread may run at all; "
                             "set kernel.sched_rt_runtime_us = -1")]
    stall = (period - runtime) / 1000 if period else 0
    return [_warn(name, f"RT throttling on (kernel.sched_rt_runtime_us = {runtime} of {period}): a realtime vCPU "
                        f"that runs flat out (guest idle=poll, busy DPDK loop) is stopped for {stall:g} ms every "
                        f"period; set kernel.sched_rt_runtime_us = -1 (sysctl.d) once vCPUs are isolated")]


def _check_rt_group_sched(ctx: Context) -> list[HostCheck]:
    name = Name.RT_GROUP_SCHED
    tree = ctx.kernel.cgroups.rt_tree()
    runtime = None
    if tree is not None:
        try:
            runtime = tree.runtime("/")
        except (OSError, ValueError):
            runtime = None
    if tree is None or runtime is None:
        if ctx.kernel.cgroups.unified():
            return [_ok(name, "no cpu.rt_runtime_us (cgroup v2 or no CONFIG_RT_GROUP_SCHED): "
                              "SCHED_FIFO needs no per-cgroup budget")]
        return [_ok(name, "no cpu.rt_runtime_us found: RT group scheduling is off, "
                          "SCHED_FIFO needs no per-cgroup budget")]
    if runtime == 0:
        return [_error(name, f"RT group scheduling is on (cgroup {tree.version}) and the root group's "
                             f"cpu.rt_runtime_us is 0: no cgroup can get an RT budget; set "
                             f"kernel.sched_rt_runtime_us to -1 or a positive value")]
    refused = vcpusched.host_refuses(ctx.kernel)
    if refused and ctx.vcpusched_guests:
        return [_warn(name, f"libvirt's own <vcpusched> of guest(s) {', '.join(sorted(ctx.vcpusched_guests))} "
                            f"will be refused ({refused}): `virsh start` fails with 'Cannot set scheduler "
                            f"parameters … Operation not permitted'. Fix: {vcpusched.FIXES}")]
    return [_ok(name, f"RT group scheduling is on (cgroup {tree.version}, root cpu.rt_runtime_us = {runtime}): "
                      f"libvirt's vCPU cgroups start with budget 0 and every SCHED_FIFO request in them fails "
                      f"until a budget is granted along the path; rtagent grants it (realtime.rt_budget_us)")]


def _check_thp(ctx: Context) -> list[HostCheck]:
    current = ctx.kernel.cpus.thp_enabled()
    if current is None:
        return [_ok(Name.THP, "transparent hugepages not available")]
    if current == "always":
        return [_warn(Name.THP, "transparent_hugepage = always: khugepaged collapses and direct compaction stall "
                                "guests; set it to madvise or never (transparent_hugepage=never on the command "
                                "line, or echo never > /sys/kernel/mm/transparent_hugepage/enabled) and back "
                                "realtime guests with hugepages")]
    return [_ok(Name.THP, f"transparent_hugepage = {current}")]


def _check_ksm(ctx: Context) -> list[HostCheck]:
    run = ctx.kernel.cpus.ksm_run()
    if run is None:
        return [_ok(Name.KSM, "KSM not available")]
    if run == 1:
        return [_warn(Name.KSM, "KSM is running (/sys/kernel/mm/ksm/run = 1): ksmd scans and merges guest memory "
                                "and writes to merged pages fault; set it to 0 (or 2 to unmerge), disable "
                                "ksmtuned, or give realtime guests <memoryBacking><nosharepages/>")]
    return [_ok(Name.KSM, f"KSM not merging (/sys/kernel/mm/ksm/run = {run})")]


def _flag_sysctl(name: Name, sysctl: str, why: str) -> Callable[[Context], list[HostCheck]]:
    """A sysctl that should be 0."""
    def check(ctx: Context) -> list[HostCheck]:
        value = ctx.kernel.cpus.sysctl(sysctl)
        if value is None:
            return [_ok(name, f"{sysctl} not present")]
        if value:
            return [_warn(name, f"{sysctl} = 1: {why}; set {sysctl} = 0")]
        return [_ok(name, f"{sysctl} = 0")]
    return check


def _check_hugepages(ctx: Context) -> list[HostCheck]:
    name = Name.HUGEPAGES
    pools = ctx.kernel.cpus.hugepage_pools()
    if pools is None:
        return [_ok(name, "no hugepage support in this kernel")]
    summary = "; ".join(f"{p.size}: {p.free} free of {p.total}" for p in pools) or "no sizes"
    exhausted = [p.size for p in pools if p.total and not p.free]
    if not any(p.total for p in pools):
        return [HostCheck(name, False, f"no hugepages reserved ({summary}): realtime guests should be "
                                       f"backed by hugepages; reserve them (hugepagesz=1G hugepages=N on "
                                       f"the command line, or vm.nr_hugepages)", Severity.INFO)]
    if exhausted:
        return [HostCheck(name, False, f"{summary}: no free pages left of size {', '.join(exhausted)}; "
                                       f"reserve more for new guests", Severity.INFO)]
    return [_ok(name, summary)]


# ---------------------------------------------------------------------------
# processes


def find_intruders(kernel: Kernel, realtime: frozenset[int], exclude_pids: Iterable[int] = (),
                   processes: Sequence[ScannedProcess] | None = None) -> list[tuple[int, int, str]]:
    """User threads allowed on a realtime CPU: ``(tgid, tid, comm)``.  Kernel
    threads and every thread of the ``exclude_pids`` processes are skipped.
    ``processes``: a scan already taken (the host checks share one)."""
    excluded = set(exclude_pids)
    out: list[tuple[int, int, str]] = []
    live = kernel.live
    for proc in scan_processes(kernel) if processes is None else processes:
        if proc.pid in excluded or proc.stat.kthread:
            continue
        for tid in proc.tids:
            try:
                # On the live kernel the affinity syscall (≈ 1 µs) instead of
                # reading and parsing status (≈ 10 µs): every thread on the
                # host is asked, every host-check interval.
                cpus = kernel.tasks.affinity(tid) if live else cpus_allowed(kernel.tasks.status(proc.pid, tid))
            except OSError:
                continue
            name = proc.name_of(tid)
            if cpus is not None and cpus & realtime and name is not None:
                out.append((proc.pid, tid, name.strip()))
    out.sort()
    return out


def _isolated_by_cmdline(realtime: frozenset[int], params: dict[str, str | None]) -> bool:
    """``isolcpus=`` (domain isolation, the default flag) covers every realtime CPU."""
    if "isolcpus" not in params:
        return False
    try:
        cpus, flags = parse_isolcpus(params["isolcpus"] or "")
    except CpuListError:
        return False
    return realtime <= cpus and (not flags - {"managed_irq"} or "domain" in flags)


def _intruders_remedy(ctx: Context) -> str:
    """What to change.  ``isolcpus=`` only sets the affinity tasks start with:
    on the unified hierarchy, once the cpuset controller is enabled (libvirt
    does it for ``machine.slice`` when the first guest starts) every task of
    the groups below the root gets the group's CPUs, all of them — seen on
    Debian 12 (systemd 252, kernel 6.1) in the node tier.  There the fix is
    systemd's ``AllowedCPUs=`` on the host's own slices, not the command line."""
    p = ctx.partition
    rts, hk = format_cpulist(p.realtime), format_cpulist(p.housekeeping)
    if not _isolated_by_cmdline(p.realtime, parse_cmdline(ctx.kernel.cpus.cmdline())):
        return f"boot with isolcpus={rts} or set systemd's CPUAffinity={hk} in system.conf"
    try:
        pid1 = ctx.kernel.tasks.comm(1).strip()
    except OSError:
        pid1 = ""
    if pid1 == "systemd" and ctx.kernel.cgroups.unified():
        return (f"isolcpus= already covers {rts}, but on cgroup v2 the cpuset controller gives every task of "
                f"a group all of the group's CPUs: confine the host's own groups with "
                f"`systemctl set-property system.slice AllowedCPUs={hk}` (and user.slice, init.scope)")
    return (f"isolcpus= already covers {rts}, but their affinity was widened after boot (a cpuset or a "
            f"tool): confine them to {hk} (taskset, the init system's CPU affinity)")


def _check_intruders(ctx: Context) -> list[HostCheck]:
    p, name = ctx.partition, Name.INTRUDERS
    if not p.realtime:
        return [_warn(name, _NO_RT)]
    scan = ctx.processes
    found = find_intruders(ctx.kernel, p.realtime, ctx.exclude_pids, scan)
    rts = format_cpulist(p.realtime)
    if not found:
        return [replace(_ok(name, f"no user thread outside the guests may run on realtime CPUs {rts}"), value=0)]
    by_pid = {proc.pid: proc.stat.comm.strip() for proc in scan}
    procs: dict[int, str] = {}
    for tgid, _tid, comm in found:
        procs.setdefault(tgid, by_pid.get(tgid, comm))
    examples = ", ".join(f"{comm}[{pid}]" for pid, comm in list(procs.items())[:5])
    more = f" and {len(procs) - 5} more" if len(procs) > 5 else ""
    return [replace(_warn(name, f"{len(found)} user threads in {len(procs)} processes may run on realtime CPUs "
                                f"{rts} (e.g. {examples}{more}); rtagent does not move them: "
                                f"{_intruders_remedy(ctx)}"), value=len(found))]


def _check_irqbalance(ctx: Context) -> list[HostCheck]:
    name = Name.IRQBALANCE
    info = detect_irqbalance(ctx.kernel, ctx.processes)
    if not info.running:
        return [_ok(name, "irqbalance is not running")]
    pids = ",".join(map(str, info.pids))
    if not ctx.partition.realtime:
        return [_warn(name, f"irqbalance is running (pid {pids}); " + _NO_RT)]
    rts = format_cpulist(ctx.partition.realtime)
    if info.bans(ctx.partition.realtime):
        return [_ok(name, f"irqbalance (pid {pids}) bans realtime CPUs {rts} "
                          f"(banned {format_cpulist(info.banned or ())} from {info.source})")]
    banned = "nothing" if not info.banned else f"only {format_cpulist(info.banned)} ({info.source})"
    return [_warn(name, f"irqbalance (pid {pids}) is running and bans {banned}: it will move IRQs back "
                        f"onto realtime CPUs {rts}; set IRQBALANCE_BANNED_CPULIST={rts} in "
                        f"/etc/default/irqbalance (or /etc/sysconfig/irqbalance) and restart it, or "
                        f"stop irqbalance")]


# ---------------------------------------------------------------------------
# the registry


REGISTRY: tuple[CheckDef, ...] = (
    CheckDef(_CMDLINE, _check_cmdline),
    CheckDef((Name.RT_THROTTLING,), _check_rt_throttling),
    CheckDef((Name.RT_GROUP_SCHED,), _check_rt_group_sched),
    CheckDef((Name.THP,), _check_thp),
    CheckDef((Name.KSM,), _check_ksm),
    CheckDef((Name.DELAYACCT,), _flag_sysctl(Name.DELAYACCT, "kernel.task_delayacct",
                                             "delay accounting runs on every context switch (drop delayacct "
                                             "from the command line too)")),
    CheckDef((Name.TIMER_MIGRATION,), _flag_sysctl(Name.TIMER_MIGRATION, "kernel.timer_migration",
                                                   "timers can be migrated onto realtime CPUs")),
    CheckDef((Name.HUGEPAGES,), _check_hugepages),
    CheckDef((Name.INTRUDERS,), _check_intruders,
             CheckMetric("host_intruder_threads",
                         "User threads outside the guests whose affinity allows a realtime CPU.")),
    CheckDef((Name.IRQBALANCE,), _check_irqbalance),
    CheckDef((Name.FAIR_SERVER,), lambda ctx: [_preflight().check_fair_server(ctx.partition, ctx.kernel)]),
    CheckDef((Name.RT_GROUP_SCHED_BOOT,), lambda ctx: [_preflight().check_rt_group_sched_boot(
        parse_cmdline(ctx.kernel.cpus.cmdline()), ctx.kernel)]),
    CheckDef((Name.TRACEFS,), lambda ctx: [_preflight().check_tracefs(ctx.kernel)]),
    CheckDef((Name.SMT_SIBLINGS,), lambda ctx: [_preflight().check_smt_siblings(ctx.partition, ctx.kernel)]),
    CheckDef((Name.VHOST_WORKER,), lambda ctx: [_preflight().check_vhost_worker(ctx.kernel, ctx.processes)]),
)

def _preflight():
    # monitor/preflight.py imports HostCheck from here: import it late.
    from . import preflight
    return preflight


CHECK_NAMES: tuple[Name, ...] = tuple(n for d in REGISTRY for n in d.names)
_METRICS = {n: d.metric for d in REGISTRY if d.metric is not None for n in d.names}


def metric_of(name: str) -> CheckMetric | None:
    """The gauge a check's ``value`` is exported as, if it has one."""
    return _METRICS.get(name)


def run_host_checks(partition: Partition, kernel: Kernel | None = None, *,
                    exclude_pids: Iterable[int] = (), vcpusched_guests: Iterable[str] = (),
                    known_threads: Mapping[int, Mapping[int, str]] | None = None,
                    thread_names: ThreadNames | None = None) -> list[HostCheck]:
    """Every check of the registry, in its order, each exactly once.
    ``exclude_pids`` are the guests' QEMU PIDs (their threads are not
    intruders); ``known_threads`` their threads' names as the daemon knows
    them (not read again); ``thread_names`` the other threads' names as
    earlier runs read them (kernel/procscan.py).  ``partition``'s realtime set may be empty; the
    checks that depend on it then say that no realtime CPUs are configured."""
    ctx = Context(kernel or Kernel(), partition, frozenset(exclude_pids), tuple(vcpusched_guests),
                  dict(known_threads or {}), thread_names)
    out: list[HostCheck] = []
    for d in REGISTRY:
        results = d.run(ctx)
        assert tuple(r.name for r in results) == d.names, f"check {d.names} returned {results}"
        out += results
    return out
