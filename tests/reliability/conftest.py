"""Fixtures and helpers for the reliability tier (``-m reliability``).

Long loops run shortened by default and in full with ``RTAGENT_FULL=1``
(:func:`scale`); every test that measures something logs one ``RELIABILITY``
line at WARNING level so that ``pytest -rA``/the captured log shows the
figures that docs/reliability.md records.

The daemon runs as a subprocess (as in tests/system) with its own config:
realtime CPU 1, housekeeping CPU 0, host partition enforcement off (the
machine is shared), optional metrics on a free loopback port.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.system.conftest import RunningDaemon, wait_for, write_config
from tests.threads.conftest import qemu_like  # noqa: F401  (the fixture, for the threads-tier tests here)

FULL = os.environ.get("RTAGENT_FULL") == "1"
log = logging.getLogger("reliability")


def scale(full: int, short: int) -> int:
    """Loop length: ``full`` with RTAGENT_FULL=1, else ``short``."""
    return full if FULL else short


def report(what: str, **figures) -> None:
    """One greppable line per measured figure set (docs/reliability.md)."""
    text = ", ".join(f"{k}={v}" for k, v in figures.items())
    log.warning("RELIABILITY %s (%s mode): %s", what, "full" if FULL else "short", text)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- kernel views ---------------------------------------------------------------


def sched_of(tid: int) -> tuple[int, int, frozenset[int]] | None:
    """(policy, priority, affinity) from the kernel; None when the thread is gone."""
    try:
        return (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority,
                frozenset(os.sched_getaffinity(tid)))
    except (ProcessLookupError, PermissionError):
        return None


def is_fifo(tid: int, prio: int = 1) -> bool:
    s = sched_of(tid)
    return s is not None and s[0] == os.SCHED_FIFO and s[1] == prio


def task_ids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return []


def thread_snapshot(pid: int) -> dict[tuple[int, str], tuple]:
    """(tid, comm) -> (policy, priority, affinity) of every thread of ``pid``."""
    out = {}
    for tid in task_ids(pid):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        s = sched_of(tid)
        if s is not None:
            out[(tid, comm)] = s
    return out


def kvm_pit(qemu_pid: int) -> int | None:
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if Path(f"/proc/{e}/comm").read_text().strip() == f"kvm-pit/{qemu_pid}":
                    return int(e)
            except OSError:
                pass
    return None


def vcpu1_tuned(g) -> bool:
    """The test guest's realtime vCPU 1: SCHED_FIFO 1 on CPU 1, in the kernel."""
    tid = g.vcpu_tids().get(1)
    return tid is not None and is_fifo(tid) and os.sched_getaffinity(tid) == {1}


def lost_cpu(d, g) -> bool:
    """``g`` is one of several test guests that all want CPU 1: one realtime
    pCPU has one owner host-wide, so the others are settled once the daemon
    reports their ``cpu_conflict`` (they are not made realtime)."""
    entry = d.guest(g.name) or {}
    return any(v.get("check") == "cpu_conflict" for v in entry.get("violations", []))


def wait_tuned(d, g, timeout: float = 30) -> None:
    """Wait until ``g`` is tuned (or settled as the loser of CPU 1, see
    :func:`lost_cpu`); if it is not because the host's RT group budget is
    held by other groups (another rtagent or benchmark on this shared
    machine took all of it), skip and say so rather than fail."""
    try:
        wait_for(lambda: vcpu1_tuned(g) or lost_cpu(d, g), timeout, f"{g.name} tuned")
    except AssertionError:
        entry = d.guest(g.name) or {}
        budget = [v for v in entry.get("violations", []) if v.get("check") == "rt_budget"]
        if budget:
            pytest.skip(f"RT group budget exhausted by other groups on this shared host: {budget[0]['detail']}")
        raise


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(m.group(1)) if m else 0


def log_problems(text: str) -> list[str]:
    """Lines of a daemon log that show an unhandled error."""
    return [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line
            or " CRITICAL " in line]


# -- libvirtd (the one process these tests kill that they did not start) --------

LIBVIRTD_PID = Path("/run/libvirtd.pid")


def libvirtd_pid() -> int | None:
    try:
        pid = int(LIBVIRTD_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    # A SIGKILLed libvirtd may linger as a zombie (its parent, init here,
    # need not reap it at once): that is not a running libvirtd.
    return None if _gone(pid) else pid


def virsh_answers() -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "version"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=30).returncode == 0


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return True


def kill_libvirtd() -> int:
    """SIGKILL libvirtd (by the PID in its pid file); returns that PID."""
    pid = libvirtd_pid()
    if pid is None:  # another test run on this machine is restarting it
        start_libvirtd()
        pid = libvirtd_pid()
    assert pid is not None, "libvirtd is not running"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_for(lambda: _gone(pid), 10, f"libvirtd {pid} to die")
    return pid


def start_libvirtd(timeout: float = 60) -> float:
    """``libvirtd -d`` unless one runs; wait until ``virsh version`` answers.
    Returns the seconds it took."""
    t0 = time.monotonic()
    if libvirtd_pid() is None:
        # check=False: if another run started one in between, ours exits
        # (pid file locked) and theirs answers.
        subprocess.run(["libvirtd", "-d"], check=False)
    wait_for(virsh_answers, timeout, "virsh version to answer", interval=0.1)
    return time.monotonic() - t0


def create_guest(guest_factory, attempts: int = 4, **kw):
    """``guest_factory(**kw)``, retried when libvirtd went away under the call
    (this machine is shared: other test runs restart libvirtd too)."""
    import libvirt

    for attempt in range(attempts):
        try:
            return guest_factory(**kw)
        except libvirt.libvirtError as err:
            if attempt == attempts - 1 or err.get_error_domain() not in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
                raise
            log.warning("libvirt connection lost while creating a guest (%s); retrying", err)
            wait_for(virsh_answers, 60, "virsh version to answer", interval=0.2)


@pytest.fixture
def libvirtd_guard(libvirtd):
    """Whatever a test does to libvirtd, it runs again afterwards."""
    yield
    start_libvirtd()


# -- the daemon -------------------------------------------------------------------


def daemon_config(path: Path, *, sock: str, resync: float, metrics_port: int | None = None,
                  extra: str = "", status_group: str = "root", daemon: str = "") -> Path:
    return write_config(path, sock=sock, resync=resync, extra=extra, metrics_port=metrics_port,
                        status_group=status_group, daemon=daemon)


class DaemonFactory:
    """Starts ``rtagent run`` subprocesses; restarts one with its config after
    a SIGKILL; at teardown stops them (by PID) and fails on a traceback."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.started: list[RunningDaemon] = []
        self.logs: list[Path] = []

    def __call__(self, *, resync: float = 0.5, metrics: bool = False, extra: str = "",
                 status_group: str = "root", argv_prefix: list[str] | None = None,
                 wait_ready: bool = True, daemon: str = "") -> RunningDaemon:
        n = len(self.logs)
        sock = str(self.tmp / f"rtrel{n}.sock")
        port = free_port() if metrics else None
        cfg = daemon_config(self.tmp / f"rtrel{n}.toml", sock=sock, resync=resync, metrics_port=port,
                            extra=extra, status_group=status_group, daemon=daemon)
        d = self._spawn(cfg, sock, n, argv_prefix, wait_ready)
        d.metrics_port = port  # type: ignore[attr-defined]
        return d

    def _spawn(self, cfg: Path, sock: str, n: int, argv_prefix, wait_ready: bool) -> RunningDaemon:
        notify_path = str(self.tmp / f"notify{len(self.logs)}.sock")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(notify_path)
        logfile = self.tmp / f"daemon{len(self.logs)}.log"
        self.logs.append(logfile)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="5000000", PYTHONUNBUFFERED="1")
        env.pop("WATCHDOG_PID", None)
        argv = [*(argv_prefix or []), sys.executable, "-m", "rtagent", "--log-level", "debug", "run",
                "--config", str(cfg)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=logfile.open("w"), env=env)
        d = RunningDaemon(proc=proc, config=cfg, socket=sock, log=logfile, notify=ns)
        self.started.append(d)
        if wait_ready:
            d.wait_notify("READY=1", timeout=60)
        return d

    def restart(self, d: RunningDaemon) -> RunningDaemon:
        """A new daemon process with ``d``'s config (``d`` must be dead)."""
        assert d.proc.poll() is not None
        new = self._spawn(d.config, d.socket, len(self.logs), None, True)
        new.metrics_port = getattr(d, "metrics_port", None)  # type: ignore[attr-defined]
        return new

    def close(self) -> None:
        hung = []
        for d in self.started:
            try:
                d.stop()
            except AssertionError as err:  # stop the others first
                hung.append(str(err))
        assert not hung, "\n".join(hung)
        bad = [f"{d.log}: exit {d.stop_rc}" for d in self.started if d.stop_rc not in (None, 0)]
        assert not bad, f"daemons that did not exit 0 on SIGTERM: {bad}"
        for logfile in self.logs:
            text = logfile.read_text() if logfile.exists() else ""
            assert "Traceback" not in text, text[-20000:]


@pytest.fixture
def rel_daemon(libvirtd, tmp_path):
    f = DaemonFactory(tmp_path)
    try:
        yield f
    finally:
        f.close()


__all__ = [
    "FULL",
    "create_guest",
    "fd_count",
    "free_port",
    "is_fifo",
    "kill_libvirtd",
    "kvm_pit",
    "libvirtd_pid",
    "log_problems",
    "report",
    "rss_kib",
    "scale",
    "sched_of",
    "start_libvirtd",
    "task_ids",
    "thread_snapshot",
    "vcpu1_tuned",
    "wait_for",
    "wait_tuned",
]
