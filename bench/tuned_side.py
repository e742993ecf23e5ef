"""tuned side by side with rtagent (B3): the same guests, the same run.

Debian's ``tuned`` (2.20) runs its real daemon (``tuned --no-dbus
--no-socket --profile NAME``, in the foreground so we hold its PID; no
systemd needed) with a profile that includes ``realtime-virtual-host``
(``isolated_cores`` = the realtime CPUs).  Two things keep it off what the
benchmark does not own:

* ``[scheduler] ps_whitelist`` matches only QEMU's thread names, and
  ``cgroup_ps_blacklist`` excludes every task whose cgroup path does not
  name a benchmark guest (tuned matches ``ps_whitelist`` against ``comm``,
  which every QEMU on the host shares; the cgroup is what tells the
  benchmark's QEMUs apart), so tuned never moves PID 1 or anything the
  benchmark did not start;
* ``kernel.sched_rt_runtime_us`` keeps its current value (the profile's
  ``-1`` would switch RT throttling off for the whole machine, which other
  users of it rely on), and the bootloader and irqbalance plugins are off
  (no boot loader to rewrite here; irqbalance is not running).

Per-CPU kernel threads (``ksoftirqd``, ``rcuc`` …) get the profile's FIFO
priorities, and sysctls/sysfs files its values, as on a real node.  The
daemon is stopped by PID (SIGTERM) and :func:`rollback_diff` compares a
snapshot taken before it started with the state after it stopped.

Cost is sampled like rtagent's: utime+stime of all its threads
(``/proc/PID/task/*/stat``) over a window, and RSS.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TUNED_ETC = Path("/etc/tuned")
# Files tuned writes under /etc/tuned on every start: saved and put back.
_TUNED_STATE_FILES = ("active_profile", "profile_mode", "post_loaded_profile",
                      "realtime-virtual-host-variables.conf")
_SYSCTLS_FROM_PROFILES = ("/usr/lib/tuned/realtime/tuned.conf", "/usr/lib/tuned/network-latency/tuned.conf",
                          "/usr/lib/tuned/latency-performance/tuned.conf")


def available() -> str | None:
    """None if tuned can run here, else why not."""
    if shutil.which("tuned") is None:
        return "tuned is not installed (apt-get install tuned)"
    if not Path("/usr/lib/tuned/realtime-virtual-host/tuned.conf").exists():
        return "tuned has no realtime-virtual-host profile"
    return None


def _profile_sysctls() -> list[str]:
    """Sysctl keys the profile chain sets (to snapshot before/after)."""
    keys: list[str] = []
    for path in _SYSCTLS_FROM_PROFILES:
        section = None
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "sysctl" and "=" in line and not line.startswith("#"):
                keys.append(line.split("=", 1)[0].strip())
    return sorted(set(keys))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def _task_sched(tid_dir: str) -> tuple[str, int, int, str] | None:
    """(comm, policy, rt priority, Cpus_allowed_list) of one task."""
    try:
        stat = Path(tid_dir, "stat").read_text()
        status = Path(tid_dir, "status").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    cpus = next((ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith("Cpus_allowed_list")), "")
    return comm, int(fields[38]), int(fields[37]), cpus


@dataclass
class Snapshot:
    sysctls: dict[str, str | None] = field(default_factory=dict)
    sysfs: dict[str, str | None] = field(default_factory=dict)
    tasks: dict[int, tuple[str, int, int, str]] = field(default_factory=dict)
    irqs: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def take(cls) -> "Snapshot":
        snap = cls()
        for key in _profile_sysctls() + ["kernel.sched_rt_runtime_us"]:
            snap.sysctls[key] = _read(_sysctl_path(key))
        for path in ["/sys/kernel/mm/ksm/run", "/sys/kernel/mm/transparent_hugepage/enabled",
                     "/sys/devices/virtual/workqueue/cpumask", "/sys/bus/workqueue/devices/writeback/cpumask",
                     *glob.glob("/sys/devices/virtual/workqueue/*/cpumask")]:
            snap.sysfs[path] = _read(path)
        for path in ["/proc/irq/default_smp_affinity", *glob.glob("/proc/irq/[0-9]*/smp_affinity_list")]:
            snap.irqs[path] = _read(path)
        for tid_dir in glob.glob("/proc/[0-9]*/task/[0-9]*"):
            info = _task_sched(tid_dir)
            if info is not None:
                snap.tasks[int(tid_dir.rsplit("/", 1)[1])] = info
        return snap


def rollback_diff(before: Snapshot, after: Snapshot) -> list[str]:
    """What tuned left changed: sysctls, sysfs files, and the policy,
    priority or affinity of any task that existed before and after."""
    out = []
    for key, val in before.sysctls.items():
        if after.sysctls.get(key) != val:
            out.append(f"sysctl {key}: {val!r} -> {after.sysctls.get(key)!r}")
    for table in ("sysfs", "irqs"):
        now = getattr(after, table)
        for path, val in getattr(before, table).items():
            if path in now and now[path] != val:
                out.append(f"{path}: {val!r} -> {now[path]!r}")
    for tid, (comm, pol, prio, cpus) in before.tasks.items():
        now = after.tasks.get(tid)
        if now is None or now[0] != comm:
            continue  # exited (or the TID was reused)
        if now[1:] != (pol, prio, cpus):
            out.append(f"task {tid} ({comm}): policy/prio/cpus {pol}/{prio}/{cpus} -> {now[1]}/{now[2]}/{now[3]}")
    return out


def put_back(before: Snapshot, after: Snapshot) -> list[str]:
    """Write back what tuned left changed (the benchmark leaves the machine
    as it found it); returns what could not be put back."""
    failed = []
    writes = [(_sysctl_path(k), v) for k, v in before.sysctls.items() if after.sysctls.get(k) != v]
    for table in ("sysfs", "irqs"):
        now = getattr(after, table)
        writes += [(p, v) for p, v in getattr(before, table).items() if p in now and now[p] != v]
    for path, value in writes:
        if value is None:
            continue
        try:
            with open(path, "w") as f:
                f.write(value.split("[")[1].split("]")[0] if "[" in value else value)
        except OSError as err:
            failed.append(f"{path}: {err.strerror}")
    # Read back: a write the kernel accepted may still not hold (a
    # workqueue's cpumask is limited by the global one).
    for path, value in writes:
        now = _read(path)
        if value is not None and now is not None and now != value and not any(path in f for f in failed):
            failed.append(f"{path}: wrote {value!r}, reads {now!r}")
    for tid, (comm, pol, prio, cpus) in before.tasks.items():
        now = after.tasks.get(tid)
        if now is None or now[0] != comm or now[1:] == (pol, prio, cpus):
            continue
        try:
            from rtagent.cpulist import parse_cpulist

            os.sched_setaffinity(tid, parse_cpulist(cpus))
            os.sched_setscheduler(tid, pol, os.sched_param(prio))
        except (OSError, ValueError) as err:
            failed.append(f"task {tid} ({comm}): {err}")
    return failed


def _profile_text(isolated: str, guest_prefix: str, rt_runtime: str | None) -> str:
    # tuned joins these regexes with "|"; cgroup_ps_blacklist is searched in
    # the task's /proc/PID/cgroup text: blacklist every task whose cgroups do
    # not mention a benchmark guest.  libvirt escapes "-" as "\x2d" in scope
    # names on systemd hosts and keeps it on cgroup v1 without systemd.
    tag = guest_prefix.rstrip("-").replace("-", r"(-|\\x2d)")
    return f"""[main]
summary=rtagent benchmark: realtime-virtual-host, limited to the benchmark's guests
include=realtime-virtual-host

[variables]
isolated_cores={isolated}

[sysctl]
{f"kernel.sched_rt_runtime_us={rt_runtime}" if rt_runtime else ""}

[scheduler]
ps_whitelist=^qemu-system;^CPU [0-9]+/(KVM|TCG)$;^IO ;^worker;^vhost;^kvm-pit
cgroup_ps_blacklist=^(?![\\s\\S]*{tag})

[bootloader]
enabled=false

[irqbalance]
enabled=false
"""


class TunedDaemon:
    """One tuned daemon run: profile written, started, stopped, cleaned up."""

    def __init__(self, guest_prefix: str, isolated_cpus: str, workdir: Path):
        self.name = f"rtagent-bench-{os.getpid()}"
        self.profile_dir = TUNED_ETC / self.name
        self.guest_prefix = guest_prefix
        self.isolated = isolated_cpus
        self.workdir = workdir
        self.log = workdir / "tuned.log"
        self.proc: subprocess.Popen | None = None
        self._saved: dict[str, bytes | None] = {}
        self.before: Snapshot | None = None
        self.put_back_failed: list[str] = []

    def start(self, settle_s: float = 5.0) -> int:
        TUNED_ETC.mkdir(exist_ok=True)
        for f in _TUNED_STATE_FILES:
            p = TUNED_ETC / f
            self._saved[f] = p.read_bytes() if p.exists() else None
        self.profile_dir.mkdir(exist_ok=True)
        (self.profile_dir / "tuned.conf").write_text(
            _profile_text(self.isolated, self.guest_prefix, _read(_sysctl_path("kernel.sched_rt_runtime_us"))))
        # realtime-virtual-host asserts that its variables file names the cores.
        (TUNED_ETC / "realtime-virtual-host-variables.conf").write_text(f"isolated_cores={self.isolated}\n")
        self.before = Snapshot.take()
        self.proc = subprocess.Popen(
            ["tuned", "--no-dbus", "--no-socket", "--log", str(self.log), "--pid", str(self.workdir / "tuned.pid"),
             "--profile", self.name], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tuned exited with {self.proc.returncode}: {self.log_tail()}")
            if "static tuning from profile" in self.log_text():
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"tuned did not apply its profile within 60 s: {self.log_tail()}")
        time.sleep(settle_s)
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def log_tail(self, n: int = 1500) -> str:
        return self.log_text()[-n:]

    def stop(self) -> list[str]:
        """SIGTERM by PID; returns what tuned did not roll back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left: list[str] = []
        if self.before is not None:
            after = Snapshot.take()
            left = rollback_diff(self.before, after)
            self.put_back_failed = put_back(self.before, after)
        self._cleanup()
        return left

    def _cleanup(self) -> None:
        shutil.rmtree(self.profile_dir, ignore_errors=True)
        for f, data in self._saved.items():
            p = TUNED_ETC / f
            if data is None:
                p.unlink(missing_ok=True)
            else:
                p.write_bytes(data)


def task_cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        f = text[text.rindex(")") + 2:].split()
        total += int(f[11]) + int(f[12])
    return total / hz


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_window(pid: int, seconds: float) -> float:
    """% of one core used by ``pid`` over ``seconds``."""
    c0, t0 = task_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (task_cpu_s(pid) - c0) / (time.monotonic() - t0)
