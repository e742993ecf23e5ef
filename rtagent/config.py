"""rtagent's TOML configuration, validated into frozen dataclasses.

Validation is strict on purpose: an unknown key is almost always a typo that
would otherwise silently leave a default in force on a realtime host.  Every
failure is a :class:`~rtagent.errors.ConfigError` naming the key and value.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any

from . import cpulist
from .errors import MISSING, ConfigError
from .kernel import Kernel
from .vocab import WatchMode

DEFAULT_PATH = "/etc/rtagent/rtagent.toml"
# 9847 is not in the Prometheus "default port allocations" list we checked;
# documented in config/rtagent.toml and docs/metrics.md.
DEFAULT_METRICS_PORT = 9847
POLICIES = ("fifo", "rr")
KVM_PIT_MODES = ("vcpu", "housekeeping", "off")
DRIFT_WATCH_MODES = tuple(m.value for m in WatchMode)


@dataclass(frozen=True)
class LibvirtConfig:
    uri: str = "qemu:///system"
    reconnect_max_backoff_s: float = 30.0
    # The longest the daemon's loop waits for one libvirt call; past it
    # libvirt counts as unresponsive and known guests are enforced from the
    # kernel side until it answers again.
    call_timeout_s: float = 5.0


@dataclass(frozen=True)
class HostConfig:
    realtime_cpus: str = "auto"
    housekeeping_cpus: str = "auto"


@dataclass(frozen=True)
class RealtimeConfig:
    default_priority: int = 1
    max_priority: int = 10
    default_policy: str = "fifo"
    # RT group scheduling budget per realtime vCPU cgroup (µs per second), or
    # "auto" = share the root group's budget equally among realtime vCPUs.
    rt_budget_us: int | str = "auto"
    # Placement of the per-VM kvm-pit kthread: "vcpu" = KubeVirt's choice (FIFO
    # one above the vCPUs, on the first non-realtime vCPU's CPUs).
    kvm_pit: str = "vcpu"


@dataclass(frozen=True)
class HostTuningConfig:
    kthreads: bool = True
    kthread_priorities: bool = True
    irqs: bool = True
    workqueues: bool = True
    # Original values of everything the host partition enforcer changed, saved
    # the first time it changes them; `rtagent host restore` puts them back.
    state_file: str = "/var/lib/rtagent/host-saved.json"
    # An IRQ corrected more than this many times within the window is reported
    # as a conflict (irqbalance or another tool keeps moving it back).
    irq_conflict_threshold: int = 5
    irq_conflict_window_s: float = 60.0


@dataclass(frozen=True)
class DaemonConfig:
    resync_interval_s: float = 1.0
    # The slow full check: every this many seconds the resync re-lists the
    # guests through libvirt and re-reads each one's identity from /proc
    # (threads, roles, cgroups, memory, per-VM kthreads), catching an event
    # that was missed.  Between full checks the resync asks the kernel only
    # what can drift (policy, priority, affinity) by syscall.
    full_check_interval_s: float = 30.0
    # The host readiness checks (a scan of every thread on the host: ≈ 15 µs
    # each); also at start, for the first guest, at SIGHUP (daemon/hostside.py).
    host_check_interval_s: float = 300.0
    proc_connector: bool = True
    # Make realtime vCPUs realtime while libvirt still holds a starting
    # guest's CPUs stopped (daemon/startwatch.py), not at its STARTED event.
    start_window_early: bool = True
    # Watch each managed guest's cpuset groups (inotify): give a live-added
    # iothread's new group its planned CPUs before libvirt's affinity call
    # lands, and see a live re-pin at libvirt's cpuset write, before its
    # TUNABLE event (daemon/placement.py).
    cpuset_watch: bool = True
    # The drift watch (daemon/driftwatch.py): see a sched_set* syscall or a
    # cgroup move of a managed thread through trace events and correct it at
    # once.  "auto" (the default): when tracefs and the events are there,
    # else polling, said in the log and status; "on": missing is a start-up
    # error; "off": poll every resync_interval_s.  Costs every syscall on
    # the host ~24 ns while on (docs/design.md, "The drift watch").
    drift_watch: str = "auto"
    # The timed steady resync's interval while the drift watch runs (the
    # host partition, if enforced, keeps resync_interval_s).
    watched_resync_interval_s: float = 10.0
    # One daemon per host: held with flock(2) for the daemon's lifetime.
    lock_file: str = "/run/rtagent/rtagent.lock"
    # The guest selector (rtagent/selector.py): which guests this daemon
    # manages.  Name globs, exclusions applied after, and whether rtagent's
    # own metadata element is required.
    guest_names: tuple[str, ...] = ("*",)
    guest_names_exclude: tuple[str, ...] = ()
    guest_require_metadata: bool = False


@dataclass(frozen=True)
class StatusConfig:
    socket: str = "/run/rtagent/rtagent.sock"
    group: str = "root"
    # Clients answered at once (the rest wait in the listen backlog) and the
    # time a client gets to take its answer (docs/security.md).
    max_clients: int = 64
    timeout_s: float = 5.0


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    listen: str = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Open connections at most; seconds without a byte while the request is
    # incomplete; seconds for the whole request, and again for the answer.
    max_connections: int = 64
    idle_timeout_s: float = 5.0
    request_timeout_s: float = 10.0

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = _split_listen(self.listen)
        return host, port


@dataclass(frozen=True)
class InterferenceConfig:
    """Who ran on the realtime CPUs (docs/interference.md)."""

    enabled: bool = True
    # tracefs instance (instances/<name>), created at start and removed at
    # stop; a leftover of the same name (a killed daemon's) is replaced.
    instance: str = "rtagent"
    # Sources exported per realtime CPU (the rest are "other").
    top_n: int = 10
    poll_interval_s: float = 0.5
    buffer_kb: int = 1024
    # `rtagent status` shows the foreign share over this last window.
    window_s: float = 60.0
    # Foreign share of a realtime CPU above which RtagentCpuInterferenceHigh
    # fires (exported as rtagent_cpu_interference_alert_share for the rule).
    alert_share: float = 0.01


@dataclass(frozen=True)
class Rule:
    """Intent for guests whose XML carries none (Nova flavor semantics)."""

    match_name: str | None = None
    match_flavor: str | None = None
    realtime_mask: str | None = None
    priority: int | None = None
    policy: str | None = None

    def matches(self, name: str, flavor: str | None) -> bool:
        if self.match_name is not None and not fnmatch.fnmatchcase(name, self.match_name):
            return False
        if self.match_flavor is not None:
            if flavor is None or not fnmatch.fnmatchcase(flavor, self.match_flavor):
                return False
        return True


@dataclass(frozen=True)
class Partition:
    """The resolved host partition: where realtime vCPUs live, where the rest goes."""

    online: frozenset[int]
    realtime: frozenset[int]
    housekeeping: frozenset[int]

    def to_json(self) -> dict[str, str]:
        return {
            "online_cpus": cpulist.format_cpulist(self.online),
            "realtime_cpus": cpulist.format_cpulist(self.realtime),
            "housekeeping_cpus": cpulist.format_cpulist(self.housekeeping),
        }


@dataclass(frozen=True)
class Config:
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    host: HostConfig = field(default_factory=HostConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    host_tuning: HostTuningConfig = field(default_factory=HostTuningConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    interference: InterferenceConfig = field(default_factory=InterferenceConfig)
    rules: tuple[Rule, ...] = ()
    partition: Partition | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        out: dict[str, Any] = {}
        for name in ("libvirt", "host", "realtime", "host_tuning", "daemon", "status", "metrics", "interference"):
            out[name] = asdict(getattr(self, name))
        out["rule"] = [{k: v for k, v in asdict(r).items() if v is not None} for r in self.rules]
        if self.partition is not None:
            out["partition"] = self.partition.to_json()
        return out


# ---------------------------------------------------------------------------
# validation

_SECTIONS: dict[str, type] = {
    "libvirt": LibvirtConfig,
    "host": HostConfig,
    "realtime": RealtimeConfig,
    "host_tuning": HostTuningConfig,
    "daemon": DaemonConfig,
    "status": StatusConfig,
    "metrics": MetricsConfig,
    "interference": InterferenceConfig,
}


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be in 1..65535")
    return host.strip("[]"), port


class _Checker:
    def __init__(self, path: str | None):
        self.path = path

    def fail(self, key: str, value: object, reason: str) -> ConfigError:
        return ConfigError(key, value, reason, path=self.path)

    def typed(self, key: str, value: object, default: object) -> object:
        """Check ``value`` against the type of the dataclass default."""
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise self.fail(key, value, "must be true or false")
        elif isinstance(default, int) and not isinstance(default, bool) and not key.endswith("rt_budget_us"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, value, "must be an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(key, value, "must be a number")
            value = float(value)
        elif isinstance(default, str) and not key.endswith("rt_budget_us"):
            if not isinstance(value, str):
                raise self.fail(key, value, "must be a string")
        return value

    def section(self, name: str, raw: object, cls: type) -> Any:
        if not isinstance(raw, dict):
            raise self.fail(f"[{name}]", raw, "must be a table")
        defaults = cls()
        known = {f for f in cls.__dataclass_fields__}
        values = {}
        for key, value in raw.items():
            if key not in known:
                raise self.fail(f"{name}.{key}", value, f"unknown key (known: {', '.join(sorted(known))})")
            values[key] = self.typed(f"{name}.{key}", value, getattr(defaults, key))
        return cls(**values)


def _check_priority(chk: _Checker, key: str, value: int, ceiling: int) -> None:
    if not 1 <= value <= 99:
        raise chk.fail(key, value, "priority must be in 1..99")
    if value > ceiling:
        raise chk.fail(key, value, f"priority above realtime.max_priority ({ceiling})")


def _check_cpulist(chk: _Checker, key: str, value: str) -> frozenset[int]:
    try:
        return cpulist.parse_cpulist(value)
    except cpulist.CpuListError as err:
        raise chk.fail(key, value, f"{err.reason} at {err.token!r}") from None


def _check_client_limits(chk: _Checker, status: StatusConfig, metrics: MetricsConfig) -> None:
    for key, value in (("status.max_clients", status.max_clients), ("metrics.max_connections", metrics.max_connections)):
        if not 1 <= value <= 10000:
            raise chk.fail(key, value, "must be in 1..10000")
    for key, value in (("status.timeout_s", status.timeout_s), ("metrics.idle_timeout_s", metrics.idle_timeout_s),
                       ("metrics.request_timeout_s", metrics.request_timeout_s)):
        if not 0.1 <= value <= 300:
            raise chk.fail(key, value, "must be in 0.1..300 seconds")


def resolve_partition(chk: _Checker, host: HostConfig, kernel: Kernel) -> Partition:
    online = kernel.cpus.online()
    if host.realtime_cpus == "auto":
        # ``auto``: the kernel's isolated ∪ nohz_full sets.
        realtime = (kernel.cpus.isolated() | kernel.cpus.nohz_full()) & online
    else:
        realtime = _check_cpulist(chk, "host.realtime_cpus", host.realtime_cpus)
        offline = realtime - online
        if offline:
            raise chk.fail("host.realtime_cpus", host.realtime_cpus,
                           f"CPU {cpulist.format_cpulist(offline)} not online (online: {cpulist.format_cpulist(online)})")
    if host.housekeeping_cpus == "auto":
        housekeeping = online - realtime
        if not housekeeping:
            raise chk.fail("host.realtime_cpus", host.realtime_cpus,
                           "leaves no housekeeping CPU (every online CPU would be realtime)")
    else:
        housekeeping = _check_cpulist(chk, "host.housekeeping_cpus", host.housekeeping_cpus)
        offline = housekeeping - online
        if offline:
            raise chk.fail("host.housekeeping_cpus", host.housekeeping_cpus,
                           f"CPU {cpulist.format_cpulist(offline)} not online (online: {cpulist.format_cpulist(online)})")
        overlap = housekeeping & realtime
        if overlap:
            raise chk.fail("host.housekeeping_cpus", host.housekeeping_cpus,
                           f"overlaps host.realtime_cpus on CPU {cpulist.format_cpulist(overlap)}")
    return Partition(online=online, realtime=frozenset(realtime), housekeeping=frozenset(housekeeping))


def partition_warning(cfg: Config) -> str | None:
    """The start-up warning for a host partition without realtime CPUs.

    A warning, not a refusal (docs/host-partition.md): the daemon still
    observes and reports every guest, and keeps emulator threads off the
    vCPUs' cores, but makes no vCPU SCHED_FIFO/RR on a CPU outside the
    realtime set (tuning/plan.py), so it cannot starve housekeeping work.
    """
    p = cfg.partition
    if p is None or p.realtime:
        return None
    if cfg.host.realtime_cpus == "auto":
        why = ('host.realtime_cpus = "auto" found no isolated CPU (/sys/devices/system/cpu/isolated and '
               'nohz_full are empty)')
    else:
        why = f"host.realtime_cpus = {cfg.host.realtime_cpus!r} is empty"
    return (f"{why}: no vCPU will be made realtime (guests report a partition violation); set "
            f"host.realtime_cpus to a CPU list, e.g. \"{max(p.online)}\", or boot with isolcpus=/nohz_full=")


def _sections(chk: _Checker, data: dict[str, Any]) -> tuple[dict[str, Any], object]:
    """Each known section checked against its dataclass; the raw rules."""
    sections: dict[str, Any] = {}
    rules_raw: object = []
    for key, value in data.items():
        if key in _SECTIONS:
            sections[key] = chk.section(key, value, _SECTIONS[key])
        elif key == "rule":
            rules_raw = value
        else:
            known = ", ".join(sorted([*_SECTIONS, "rule"]))
            raise chk.fail(key, value, f"unknown section (known: {known})")
    return sections, rules_raw


def _check_realtime(chk: _Checker, cfg_rt: RealtimeConfig) -> RealtimeConfig:
    _check_priority(chk, "realtime.max_priority", cfg_rt.max_priority, 99)
    _check_priority(chk, "realtime.default_priority", cfg_rt.default_priority, cfg_rt.max_priority)
    if cfg_rt.default_policy not in POLICIES:
        raise chk.fail("realtime.default_policy", cfg_rt.default_policy, "must be one of: fifo, rr")
    if cfg_rt.kvm_pit not in KVM_PIT_MODES:
        raise chk.fail("realtime.kvm_pit", cfg_rt.kvm_pit, f"must be one of: {', '.join(KVM_PIT_MODES)}")
    budget = cfg_rt.rt_budget_us
    if budget != "auto" and (isinstance(budget, bool) or not isinstance(budget, int) or not 1000 <= budget <= 1_000_000):
        raise chk.fail("realtime.rt_budget_us", budget, "must be \"auto\" or an integer in 1000..1000000 (µs per 1 s period)")
    return cfg_rt


def _check_daemon(chk: _Checker, daemon: DaemonConfig) -> DaemonConfig:
    daemon = _check_selector(chk, daemon)
    if not 0.05 <= daemon.resync_interval_s <= 3600:
        raise chk.fail("daemon.resync_interval_s", daemon.resync_interval_s, "must be in 0.05..3600 seconds")
    fc = daemon.full_check_interval_s
    if isinstance(fc, bool) or not isinstance(fc, (int, float)) or not 0.05 <= fc <= 86400:
        raise chk.fail("daemon.full_check_interval_s", fc, "must be in 0.05..86400 seconds")
    hc = daemon.host_check_interval_s
    if isinstance(hc, bool) or not isinstance(hc, (int, float)) or not 0.05 <= hc <= 86400:
        raise chk.fail("daemon.host_check_interval_s", hc, "must be in 0.05..86400 seconds")
    if daemon.drift_watch not in DRIFT_WATCH_MODES:
        raise chk.fail("daemon.drift_watch", daemon.drift_watch, f"must be one of: {', '.join(DRIFT_WATCH_MODES)}")
    wi = daemon.watched_resync_interval_s
    # At or below resync_interval_s the watch changes no cadence (daemon/cadence.py).
    if isinstance(wi, bool) or not isinstance(wi, (int, float)) or not 0.05 <= wi <= 3600:
        raise chk.fail("daemon.watched_resync_interval_s", wi, "must be in 0.05..3600 seconds")
    if not os.path.isabs(daemon.lock_file):
        raise chk.fail("daemon.lock_file", daemon.lock_file, "must be an absolute path")
    return daemon


def _check_libvirt(chk: _Checker, lv: LibvirtConfig) -> LibvirtConfig:
    if not lv.uri:
        raise chk.fail("libvirt.uri", lv.uri, "must not be empty")
    if not 0.1 <= lv.reconnect_max_backoff_s <= 3600:
        raise chk.fail("libvirt.reconnect_max_backoff_s", lv.reconnect_max_backoff_s, "must be in 0.1..3600 seconds")
    if not 0.1 <= lv.call_timeout_s <= 300:
        raise chk.fail("libvirt.call_timeout_s", lv.call_timeout_s, "must be in 0.1..300 seconds")
    return lv


def _check_endpoints(chk: _Checker, status: StatusConfig, metrics: MetricsConfig) -> None:
    if not os.path.isabs(status.socket):
        raise chk.fail("status.socket", status.socket, "must be an absolute path")
    _check_client_limits(chk, status, metrics)
    try:
        _split_listen(metrics.listen)
    except ValueError as err:
        raise chk.fail("metrics.listen", metrics.listen, str(err)) from None
    if bool(metrics.tls_cert) != bool(metrics.tls_key):
        key = "metrics.tls_key" if metrics.tls_cert else "metrics.tls_cert"
        raise chk.fail(key, getattr(metrics, key.split(".")[1]), "tls_cert and tls_key must be set together")
    if metrics.tls_client_ca and not metrics.tls_cert:
        raise chk.fail("metrics.tls_client_ca", metrics.tls_client_ca, "client-certificate auth needs tls_cert and tls_key")


def parse_config(data: dict[str, Any], *, path: str | None = None, kernel: Kernel | None = None,
                 resolve: bool = True) -> Config:
    """Validate a decoded TOML document.  ``resolve=False`` skips resolving the
    host partition (for tools that only inspect XML, like ``rtagent plan``)."""
    chk = _Checker(path)
    sections, rules_raw = _sections(chk, data)
    cfg_rt = _check_realtime(chk, sections.get("realtime", RealtimeConfig()))
    daemon = _check_daemon(chk, sections.get("daemon", DaemonConfig()))
    lv = _check_libvirt(chk, sections.get("libvirt", LibvirtConfig()))
    status: StatusConfig = sections.get("status", StatusConfig())
    metrics: MetricsConfig = sections.get("metrics", MetricsConfig())
    _check_endpoints(chk, status, metrics)
    interference = _check_interference(chk, sections.get("interference", InterferenceConfig()))

    host: HostConfig = sections.get("host", HostConfig())
    for key in ("realtime_cpus", "housekeeping_cpus"):
        value = getattr(host, key)
        if value != "auto":
            _check_cpulist(chk, f"host.{key}", value)
    partition = resolve_partition(chk, host, kernel or Kernel()) if resolve else None

    rules = tuple(_parse_rules(chk, rules_raw, cfg_rt))
    return Config(
        libvirt=lv, host=host, realtime=cfg_rt,
        host_tuning=sections.get("host_tuning", HostTuningConfig()),
        daemon=daemon, status=status, metrics=metrics, interference=interference, rules=rules,
        partition=partition, path=path,
    )


def _check_globs(chk: _Checker, key: str, value: object, *, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise chk.fail(key, value, "must be an array of strings (name globs)")
    if not value and not allow_empty:
        raise chk.fail(key, value, 'must name at least one glob ("*" = every guest)')
    for glob in value:
        if not glob.strip():
            raise chk.fail(key, value, "an empty glob matches no guest")
    return tuple(value)


def _check_selector(chk: _Checker, daemon: DaemonConfig) -> DaemonConfig:
    from dataclasses import replace

    return replace(
        daemon,
        guest_names=_check_globs(chk, "daemon.guest_names", daemon.guest_names, allow_empty=False),
        guest_names_exclude=_check_globs(chk, "daemon.guest_names_exclude", daemon.guest_names_exclude,
                                         allow_empty=True),
    )


def _check_interference(chk: _Checker, cfg: InterferenceConfig) -> InterferenceConfig:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", cfg.instance) or cfg.instance in (".", ".."):
        raise chk.fail("interference.instance", cfg.instance, "must be 1-64 of letters, digits, '_', '-', '.'")
    if not 1 <= cfg.top_n <= 100:
        raise chk.fail("interference.top_n", cfg.top_n, "must be in 1..100")
    if not 0.05 <= cfg.poll_interval_s <= 10:
        raise chk.fail("interference.poll_interval_s", cfg.poll_interval_s, "must be in 0.05..10 seconds")
    if not 64 <= cfg.buffer_kb <= 65536:
        raise chk.fail("interference.buffer_kb", cfg.buffer_kb, "must be in 64..65536 (KiB per CPU)")
    if not 0 < cfg.alert_share <= 1:
        raise chk.fail("interference.alert_share", cfg.alert_share, "must be in (0, 1] (a share of the CPU's time)")
    if not 5 <= cfg.window_s <= 3600:
        raise chk.fail("interference.window_s", cfg.window_s, "must be in 5..3600 seconds")
    return cfg


def _parse_rules(chk: _Checker, raw: object, rt: RealtimeConfig) -> list[Rule]:
    if not isinstance(raw, list):
        raise chk.fail("rule", raw, "must be an array of tables ([[rule]])")
    rules = []
    known = set(Rule.__dataclass_fields__)
    for i, item in enumerate(raw):
        prefix = f"rule[{i}]"
        if not isinstance(item, dict):
            raise chk.fail(prefix, item, "must be a table")
        for key, value in item.items():
            if key not in known:
                raise chk.fail(f"{prefix}.{key}", value, f"unknown key (known: {', '.join(sorted(known))})")
            if key == "priority":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise chk.fail(f"{prefix}.{key}", value, "must be an integer")
                _check_priority(chk, f"{prefix}.priority", value, rt.max_priority)
            elif not isinstance(value, str):
                raise chk.fail(f"{prefix}.{key}", value, "must be a string")
        if "match_name" not in item and "match_flavor" not in item:
            raise chk.fail(prefix, item, "needs match_name and/or match_flavor")
        if "policy" in item and item["policy"] not in POLICIES:
            raise chk.fail(f"{prefix}.policy", item["policy"], "must be one of: fifo, rr")
        if "realtime_mask" in item:
            # Syntax only: the vCPU count is known per guest.  Use a large
            # universe so that only syntax errors surface here.
            try:
                cpulist.parse_realtime_mask(item["realtime_mask"], range(cpulist.MAX_CPU + 1))
            except cpulist.CpuListError as err:
                raise chk.fail(f"{prefix}.realtime_mask", item["realtime_mask"],
                               f"{err.reason} at {err.token!r}") from None
        rules.append(Rule(**item))
    return rules


def load_config(path: str | None = None, *, kernel: Kernel | None = None, resolve: bool = True,
                required: bool = False) -> Config:
    """Load and validate the config file.

    A missing file at the default path gives the defaults (a fresh install
    works); a missing file that was named explicitly is an error.
    """
    import tomllib  # here: the daemon drops it once started (daemon/startonly.py)

    explicit = path is not None
    path = path or DEFAULT_PATH
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit or required:
            raise ConfigError("file", MISSING, "not found", path=path) from None
        return parse_config({}, path=None, kernel=kernel, resolve=resolve)
    except PermissionError as err:
        raise ConfigError("file", MISSING, f"cannot be read: {err.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("file", MISSING, f"invalid TOML: {err}", path=path) from None
    return parse_config(data, path=path, kernel=kernel, resolve=resolve)
