"""The daemon as a subprocess, with a real sd_notify datagram socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rtagent.status import fetch
from tests.conftest import unique_name

# rtagent/daemon/shutdown.py HARD_BOUND_S (15 s) plus slack: a daemon still
# there after this did not honour its own bound.
STOP_TIMEOUT_S = 20.0


@dataclass
class RunningDaemon:
    proc: subprocess.Popen
    config: Path
    socket: str
    log: Path
    notify: socket.socket
    messages: list[str] = field(default_factory=list)
    stop_rc: int | None = None  # the exit code after stop()'s SIGTERM

    def status(self) -> dict:
        return fetch(self.socket)

    def drain_notify(self) -> list[str]:
        self.notify.setblocking(False)
        try:
            while True:
                self.messages.append(self.notify.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.messages

    def wait_notify(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        self.notify.settimeout(0.2)
        while time.monotonic() < deadline:
            for m in self.messages:
                if needle in m:
                    return m
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.log.read_text()}")
        raise AssertionError(f"no {needle!r} from the daemon in {timeout}s; got {self.messages}; "
                             f"log:\n{self.log.read_text()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (by PID); a daemon that does not exit in ``timeout`` has
        its stacks dumped into its log (SIGUSR1), is SIGKILLed, and fails the
        test.  A SIGTERMed daemon must exit 0 (1 = its shutdown bound fired)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.stop_rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait()
                self.notify.close()
                raise AssertionError(f"daemon did not exit within {timeout}s of SIGTERM; log tail:\n"
                                     f"{self.log_text()[-6000:]}") from None
        self.notify.close()
        # A daemon that was SIGKILLed (and not restarted) leaves its tracefs
        # instance; tests remove what they create.
        remove_trace_instance(self.config)
        remove_watch_instance(self.proc.pid)

    def log_text(self) -> str:
        return self.log.read_text()

    def guest(self, name: str) -> dict | None:
        for d in self.status().get("domains", []):
            if d["name"] == name:
                return d
        return None


def trace_instance_of(config: Path) -> str | None:
    import tomllib

    try:
        data = tomllib.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return data.get("interference", {}).get("instance")


def remove_trace_instance(config: Path) -> None:
    from rtagent.kernel import tracefs

    name, root = trace_instance_of(config), tracefs.find_tracefs()
    if name and root is not None:
        try:
            tracefs.remove_instance(root, name)
        except tracefs.TracefsError:
            pass


def remove_watch_instance(pid: int) -> None:
    """The drift watch's instance of a daemon that could not remove it (SIGKILL)."""
    from rtagent.kernel import tracefs
    from rtagent.kernel.schedwatch import instance_name

    root = tracefs.find_tracefs()
    if root is not None:
        for name in (instance_name(pid), instance_name(pid) + "-exits"):
            try:
                tracefs.remove_instance(root, name)
            except tracefs.TracefsError:
                pass


def write_config(path: Path, *, sock: str, resync: float = 0.5, extra: str = "",
                 metrics_port: int | None = None, status_group: str = "root", daemon: str = "",
                 lock_file: str | None = None) -> Path:
    """A daemon config for tests: CPU 1 realtime, host tuning off (tests that
    move kernel threads and IRQs turn it on themselves and restore), its own
    instance lock beside its socket (several test daemons run at once)."""
    metrics = (f'enabled = true\nlisten = "127.0.0.1:{metrics_port}"' if metrics_port
               else "enabled = false")
    # Only this test run's guests (tests.conftest.unique_name): other runs on
    # a shared host pin their guests to CPU 1 too, and a realtime pCPU has
    # one owner host-wide, so their guests would take it from ours.
    if "guest_names" not in daemon:
        daemon = f'guest_names = ["rtt-{os.getpid()}-*"]\n' + daemon
    # The tests were written against the polling cadence (a resync every
    # ``resync``): the drift watch (the daemon's default, "auto") would back
    # it off to 10 s.  The watch's own tests (test_drift_watch.py) and the
    # node tier (the shipped config) run it; "default" leaves the key out.
    if "drift_watch" not in daemon:
        daemon = 'drift_watch = "off"\n' + daemon
    daemon = daemon.replace('drift_watch = "default"\n', "")
    # Each test daemon traces into its own tracefs instance.
    interference = "" if "[interference]" in extra else \
        f'[interference]\ninstance = "{unique_name("rtt-itf")}"\npoll_interval_s = 0.5'
    path.write_text(f"""
[host]
realtime_cpus = "1"
[daemon]
resync_interval_s = {resync}
lock_file = "{lock_file or sock + '.lock'}"
{daemon}
[status]
socket = "{sock}"
group = "{status_group}"
[metrics]
{metrics}
[host_tuning]
kthreads = false
kthread_priorities = false
irqs = false
workqueues = false
{interference}
{extra}
""")
    return path


def free_port_in(lo: int, hi: int) -> int:
    """A free loopback port in ``lo..hi`` (each engineer's test range)."""
    for port in range(lo, hi + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


def fifo_on(tid: int, cpus: set[int], priority: int = 1) -> bool:
    """The thread is SCHED_FIFO ``priority`` on exactly ``cpus`` (False once it is gone)."""
    try:
        return (os.sched_getscheduler(tid) == os.SCHED_FIFO and os.sched_getparam(tid).sched_priority == priority
                and os.sched_getaffinity(tid) == cpus)
    except ProcessLookupError:
        return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def daemon_factory(libvirtd, tmp_path):
    started: list[RunningDaemon] = []

    def start(resync: float = 0.5, extra: str = "", watchdog_usec: int = 2_000_000, daemon: str = "",
              metrics_port: int | None = None, reuse: RunningDaemon | None = None) -> RunningDaemon:
        """``extra``: TOML appended after the tables; ``daemon``: lines in [daemon];
        ``reuse``: a stopped daemon whose config (socket, lock, record) the new one runs with."""
        n = len(started)
        if reuse is not None:
            assert reuse.proc.poll() is not None, "restart only a stopped daemon"
            sock, cfg = reuse.socket, reuse.config
        else:
            sock = str(tmp_path / f"rtagent{n}.sock")
            cfg = write_config(tmp_path / f"rtagent{n}.toml", sock=sock, resync=resync, extra=extra, daemon=daemon,
                               metrics_port=metrics_port)
        notify_path = str(tmp_path / f"notify{n}.sock")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(notify_path)
        log = tmp_path / f"daemon{n}.log"
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC=str(watchdog_usec), PYTHONUNBUFFERED="1")
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen([sys.executable, "-m", "rtagent", "--log-level", "debug", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
        d = RunningDaemon(proc=proc, config=cfg, socket=sock, log=log, notify=ns)
        started.append(d)
        d.wait_notify("READY=1")
        return d

    yield start
    hung = []
    for d in started:
        try:
            d.stop()
        except AssertionError as err:  # stop the others first
            hung.append(str(err))
    assert not hung, "\n".join(hung)
    for d in started:
        text = d.log.read_text() if d.log.exists() else ""
        # A daemon that logged a traceback failed, whatever the test checked.
        assert "Traceback" not in text, text
        assert d.stop_rc in (None, 0), f"daemon exited {d.stop_rc} after SIGTERM:\n{text[-6000:]}"


__all__ = ["RunningDaemon", "free_port_in", "wait_for", "json"]
