"""Shared pieces of the benchmarks: machine facts, statistics and tables,
real libvirt guests, and the daemon as a subprocess.

Everything the benchmarks create is named ``rtbench-…`` and is destroyed (by
UUID) and stopped (by PID) in ``finally`` blocks; nothing else on the host is
touched.  The daemon under test is the real ``rtagent run`` in its own
process, limited by its guest selector (``[daemon] guest_names``) to guests
whose name starts with the run's prefix, because other tests and benchmarks
run their own guests (and their own daemons) on this host at the same time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import installed

URI = "qemu:///system"
REPO = Path(__file__).resolve().parent.parent
PREFIX = "rtbench-"
HOUSEKEEPING = {0}  # the benchmark processes themselves stay off the realtime CPU


# ---------------------------------------------------------------------------
# numbers and tables


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), p in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float]) -> dict:
    """n, p50, p99, max, mean of a sample (NaN when empty)."""
    xs = [v for v in values if v is not None]
    if not xs:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p99": nan, "max": nan, "mean": nan, "min": nan}
    return {"n": len(xs), "min": min(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
            "max": max(xs), "mean": sum(xs) / len(xs)}


def ms(seconds: float) -> str:
    """Seconds as milliseconds for a table cell."""
    if math.isnan(seconds):
        return "–"
    return f"{seconds * 1000:.1f}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> str:
    """A plain-text table (also valid Markdown: pipes and a separator row)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                 for i, c in enumerate(cells)) + " |"

    out = []
    if title:
        out.append(title)
        out.append("")
    out.append(line(list(headers)))
    out.append("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    out.extend(line(r) for r in rows)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# the machine


def machine_info() -> dict:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(first("/proc/meminfo", "MemTotal").split()[0]) / 2**20, 1),
        "python": platform.python_version(),
        "kvm": "PVM (kvm_pvm)" if Path("/sys/module/kvm_pvm").exists() else (
            "kvm" if Path("/dev/kvm").exists() else "none"),
    }
    try:
        import libvirt

        c = libvirt.open(URI)
        try:
            v, q = c.getLibVersion(), c.getVersion()
            info["libvirt"] = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
            info["qemu"] = f"{q // 1000000}.{q // 1000 % 1000}.{q % 1000}"
        finally:
            c.close()
    except Exception as err:  # noqa: BLE001 - informational only
        info["libvirt"] = f"unavailable ({err})"
    return info


@contextlib.contextmanager
def on_housekeeping():
    """Run the benchmark's own threads on housekeeping CPUs only (the poller
    must not disturb the realtime CPU it measures); restores the old mask."""
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, HOUSEKEEPING & old or old)
        yield
    finally:
        os.sched_setaffinity(0, old)


# ---------------------------------------------------------------------------
# /proc readers (for threads we do not own: read-only)


def task_dir(pid: int, tid: int) -> str:
    return f"/proc/{pid}/task/{tid}"


def thread_names(pid: int) -> dict[int, str]:
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                out[int(t)] = f.read().strip()
        except OSError:
            continue
    return out


def schedstat(pid: int, tid: int) -> tuple[int, int, int] | None:
    """(run ns, run-queue wait ns, timeslices) of one task, None if gone."""
    try:
        with open(f"{task_dir(pid, tid)}/schedstat") as f:
            a, b, c = f.read().split()[:3]
        return int(a), int(b), int(c)
    except (OSError, ValueError):
        return None


def process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` (schedstat: ns resolution, unlike
    utime/stime's clock ticks).  Exited threads are not counted."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tids:
        s = schedstat(pid, int(t))
        if s:
            total += s[0]
    return total


def process_stat_cpu_s(pid: int) -> float:
    """utime+stime of the whole process from /proc/<pid>/stat (includes exited threads)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def qemu_pid(name: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------
# guests


def guest_xml(name: str, **kw) -> str:
    """The canonical test guest (tests/guests.py): diskless, 64 MiB, vCPU 0 on
    CPU 0, vCPU 1 on CPU 1, emulator on CPU 0.  No hugepages (the host
    reserves only 64 × 2 MiB).

    The realtime intent (vCPU 1, FIFO 1) comes from a config rule matching
    the name (:func:`daemon_config`), not from rtagent metadata in the XML:
    other rtagent daemons running on this host at the same time (the system
    tests start their own) would otherwise manage these guests too and
    correct drift before ours does."""
    assert name.startswith(PREFIX), name
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.guests import rt_guest_xml

    kw.setdefault("metadata", "")
    return rt_guest_xml(name, **kw)


def open_conn():
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(URI)


class Guests:
    """Transient guests this benchmark started; ``close()`` destroys exactly
    those (by UUID, on a fresh connection if libvirtd was restarted meanwhile
    by a concurrent test)."""

    def __init__(self) -> None:
        self._conn = None
        self.started: dict[str, str] = {}  # name -> uuid

    @property
    def conn(self):
        import libvirt

        if self._conn is not None:
            try:
                self._conn.getLibVersion()
                return self._conn
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
        deadline = time.monotonic() + 30
        while True:
            try:
                self._conn = open_conn()
                return self._conn
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def start(self, name: str, xml: str | None = None, *, flags: int = 0, **kw):
        """createXML; if the connection breaks meanwhile (a concurrent test
        restarting libvirtd), reconnect and either adopt the guest (it was
        created) or create it again."""
        import libvirt

        xml = xml or guest_xml(name, **kw)
        for attempt in range(3):
            try:
                dom = self.conn.createXML(xml, flags)
                break
            except libvirt.libvirtError as err:
                if err.get_error_code() not in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR,
                                                libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN,
                                                libvirt.VIR_ERR_RPC) or attempt == 2:
                    raise
                self._conn = None
                time.sleep(1.0)
                try:
                    dom = self.conn.lookupByName(name)
                    break
                except libvirt.libvirtError:
                    continue
        self.started[name] = dom.UUIDString()
        return dom

    def lookup(self, name: str):
        return self.conn.lookupByUUIDString(self.started[name])

    def destroy(self, name: str) -> None:
        import libvirt

        uuid = self.started.pop(name, None)
        if uuid is None:
            return
        for _ in range(3):
            try:
                self.conn.lookupByUUIDString(uuid).destroy()
                return
            except libvirt.libvirtError as err:
                if err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    return
                self._conn = None  # connection trouble: reopen and retry
                time.sleep(0.5)
        print(f"warning: could not destroy {name} ({uuid})", file=sys.stderr)

    def close(self) -> None:
        for name in list(self.started):
            self.destroy(name)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def vcpu_tid(pid: int, vcpu: int) -> int | None:
    want = re.compile(rf"CPU {vcpu}/(KVM|TCG)")
    for tid, name in thread_names(pid).items():
        if want.fullmatch(name):
            return tid
    return None


class EventClock:
    """When this process saw each guest's first STARTED or RESUMED lifecycle
    event (monotonic), from its own libvirt connection and event loop — the
    same moment the daemon's callback sees it, give or take the delivery."""

    def __init__(self, prefix: str):
        import libvirt

        from rtagent.libvirt_host import start_event_loop

        start_event_loop()  # idempotent; must precede the connection
        self.prefix = prefix
        self.first: dict[str, float] = {}
        self._lock = threading.Lock()
        self.conn = open_conn()

        def cb(_conn, dom, event, _detail, _opaque):
            if event not in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
                return
            at = time.monotonic()
            try:
                name = dom.name()
            except libvirt.libvirtError:
                return
            if name.startswith(prefix):
                with self._lock:
                    self.first.setdefault(name, at)

        self._cid = self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)

    def get(self, name: str) -> float | None:
        with self._lock:
            return self.first.get(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.domainEventDeregisterAny(self._cid)
        with contextlib.suppress(Exception):
            self.conn.close()


# ---------------------------------------------------------------------------
# the daemon under test


def daemon_config(path: Path, *, socket_path: str, resync: float, prefix: str,
                  rt_budget_us: int | None = None, daemon_extra: str = "", interference: bool = False) -> Path:
    """The daemon's config: CPU 1 realtime, manages only guests named
    ``prefix*`` (the guest selector), vCPU 1 of those realtime (FIFO 1,
    Nova's mask ``^0``), host partition enforcement off (it would move the
    whole host's kthreads and IRQs, not ours to touch), metrics off
    (measured separately, in-process), interference accounting off unless
    asked for (B3's accounting rows, bench/b3_interference.py), then in
    its own tracefs instance."""
    assert prefix.startswith(PREFIX)
    budget = f"rt_budget_us = {rt_budget_us}\n" if rt_budget_us else ""
    path.write_text(f"""[host]
realtime_cpus = "1"
[realtime]
{budget}[daemon]
resync_interval_s = {resync}
guest_names = ["{prefix}*"]
lock_file = "{socket_path}.lock"
{daemon_extra}[status]
socket = "{socket_path}"
[metrics]
enabled = false
[host_tuning]
kthreads = false
kthread_priorities = false
irqs = false
workqueues = false
[interference]
# Off unless asked for: the benchmarks measure enforcement; the tracefs
# sampler is a separate cost (its own thread), measured by b3_interference.
enabled = {"true" if interference else "false"}
instance = "{prefix}itf"
[[rule]]
match_name = "{prefix}*"
realtime_mask = "^0"
priority = 1
""")
    return path


@dataclass
class DaemonProc:
    proc: subprocess.Popen
    dir: Path
    socket: str
    log: Path
    notify: socket.socket
    messages: list[str] = field(default_factory=list)
    # A directory start_daemon made (mkdtemp): removed at stop, unless
    # RTBENCH_KEEP=1 asks to keep its config and log.
    owns_dir: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict:
        from rtagent.status import fetch

        return fetch(self.socket)

    def guest(self, name: str) -> dict | None:
        for d in self.status().get("domains", []):
            if d["name"] == name:
                return d
        return None

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        self.notify.settimeout(0.2)
        while time.monotonic() < deadline:
            if any("READY=1" in m for m in self.messages):
                return
            with contextlib.suppress(TimeoutError, BlockingIOError):
                self.messages.append(self.notify.recv(4096).decode())
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM our daemon (by PID), SIGKILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.notify.close()
        if self.owns_dir:
            drop_workdir(self.dir)


def drop_workdir(d: Path) -> None:
    """A daemon's temporary directory (config, socket, log), once the bench
    is done with it; RTBENCH_KEEP=1 keeps it to read afterwards."""
    if os.environ.get("RTBENCH_KEEP") != "1":
        shutil.rmtree(d, ignore_errors=True)


def installed_env(tree: Path = REPO, **extra: str) -> dict[str, str]:
    """The environment of a daemon of ``tree`` run as installed (bench/installed.py)."""
    return installed.installed_env(tree, **extra)


def start_daemon(prefix: str, *, resync: float, rt_budget_us: int | None = None,
                 log_level: str = "info", workdir: Path | None = None, daemon_extra: str = "",
                 interference: bool = False) -> DaemonProc:
    d = Path(workdir or tempfile.mkdtemp(prefix="rtbench-daemon-"))
    sock = str(d / "rtagent.sock")
    cfg = daemon_config(d / "rtagent.toml", socket_path=sock, resync=resync, prefix=prefix,
                        rt_budget_us=rt_budget_us, daemon_extra=daemon_extra, interference=interference)
    notify_path = str(d / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    log = d / "daemon.log"
    env = installed_env(REPO, NOTIFY_SOCKET=notify_path)
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    with log.open("w") as err:
        proc = subprocess.Popen(installed.command("-m", "rtagent", "--log-level", log_level, "run",
                                                  "--config", str(cfg)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                cwd=str(REPO))
    dp = DaemonProc(proc=proc, dir=d, socket=sock, log=log, notify=ns, owns_dir=workdir is None)
    try:
        dp.wait_ready()
    except BaseException:
        dp.stop()
        raise
    return dp


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """The predicate's first truthy value, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def fifo_on(tid: int, cpus: set[int], prio: int = 1) -> bool:
    """The kernel's view: SCHED_FIFO at ``prio`` and affinity exactly ``cpus``."""
    try:
        return (os.sched_getscheduler(tid) == os.SCHED_FIFO and os.sched_getparam(tid).sched_priority == prio
                and os.sched_getaffinity(tid) == cpus)
    except OSError:
        return False


def dump_json(obj, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, indent=2, default=str))
