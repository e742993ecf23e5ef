"""Three rtagent "nodes" on one host.

Each node is an rtagent daemon in its own network namespace, with its own
address, metrics listener, status socket, host state file and config, that
manages only its own guests through the guest selector
(``[daemon] guest_names``).  Three daemons on one host must not fight, so
every node config:

- selects only the node's guests (``<prefix>-<node>-*``);
- turns host-partition tuning off (kernel threads, IRQs and workqueues are
  the host's, not a node's);
- grants a fixed small RT budget per realtime vCPU instead of "auto" (which
  would share the root budget among *all* realtime vCPUs it sees);
- has its own single-instance lock (``[daemon] lock_file``), so the three
  daemons do not refuse each other, and its own tracefs instance for the
  interference accounting (each daemon replaces a "leftover" of its name);
- turns the proc connector off: the kernel delivers its events only to
  sockets of the initial network namespace, so inside a node namespace
  the daemon finds new threads by its resync, which is what it does without
  CAP_NET_ADMIN anyway;
- turns the drift watch off: a node finds drift by its resync every 0.5 s,
  the cadence the fleet's tests were written against.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import guests
from tests.fleet.netns import Netns
from tests.fleet.servers import ROOT, http_text

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.0"
METRICS_PORT = 9847
RT_BUDGET_US = 20000


@dataclass
class Node:
    name: str  # "node-a": the Prometheus instance label
    ns: Netns
    address: str  # the node's address inside its namespace
    workdir: Path
    guest_glob: str
    trace_instance: str  # tracefs instance of the node's interference accounting
    daemon: subprocess.Popen | None = None
    guests: list = field(default_factory=list)  # tests.conftest.Guest

    @property
    def target(self) -> str:
        return f"{self.address}:{METRICS_PORT}"

    @property
    def config(self) -> Path:
        return self.workdir / "rtagent.toml"

    @property
    def socket(self) -> Path:
        return self.workdir / "rtagent.sock"

    @property
    def log(self) -> Path:
        return self.workdir / "rtagent.log"

    def write_config(self) -> None:
        self.config.write_text(f"""
[host]
realtime_cpus = "1"
[realtime]
rt_budget_us = {RT_BUDGET_US}
[daemon]
resync_interval_s = 0.5
proc_connector = false
drift_watch = "off"
guest_names = ["{self.guest_glob}"]
lock_file = "{self.workdir / 'rtagent.lock'}"
[status]
socket = "{self.socket}"
[metrics]
listen = "{self.target}"
[host_tuning]
kthreads = false
kthread_priorities = false
irqs = false
workqueues = false
state_file = "{self.workdir / 'host-saved.json'}"
[interference]
instance = "{self.trace_instance}"
""")

    def start_daemon(self, mon_ns: Netns, timeout: float = 60) -> None:
        """Start the daemon in the node's namespace; wait until its
        metrics answer from the monitoring namespace."""
        assert self.daemon is None or self.daemon.poll() is not None, f"{self.name}: daemon already running"
        self.write_config()
        with open(self.log, "ab") as out:
            self.daemon = subprocess.Popen(
                self.ns.argv(sys.executable, "-m", "rtagent", "--log-level", "debug", "run", "--config",
                             str(self.config)),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if "rtagent_libvirt_up 1.0" in mon_ns.call(http_text, f"http://{self.target}/metrics"):
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"{self.name}: metrics not up after {timeout}s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            rc = None if self.daemon is None else self.daemon.returncode
            raise AssertionError(f"{self.name}: daemon not running (exit {rc}):\n{self.log_tail()}")

    def kill_daemon(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGKILL)
            self.daemon.wait(timeout=10)

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=10)

    def assert_no_traceback(self) -> None:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        assert "Traceback" not in text, f"{self.name}: the daemon logged a traceback:\n{text[-6000:]}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"


def guest_xml(name: str, flavor: str | None = None) -> str:
    """The canonical realtime test guest (vCPU 1 FIFO on CPU 1), optionally
    with Nova's instance metadata naming its flavor."""
    metadata = guests.rt_metadata()
    if flavor is not None:
        metadata += (f"<nova:instance xmlns:nova='{NOVA_NS}'><nova:name>{name}</nova:name>"
                     f"<nova:flavor name='{flavor}'><nova:vcpus>2</nova:vcpus></nova:flavor></nova:instance>")
    return guests.rt_guest_xml(name, metadata=metadata)


def vcpu_tid(qemu_pid: int, vcpu: int) -> int:
    for task in Path(f"/proc/{qemu_pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() in (f"CPU {vcpu}/KVM", f"CPU {vcpu}/TCG"):
                return int(task.name)
        except OSError:
            continue
    raise AssertionError(f"no vCPU {vcpu} thread in QEMU {qemu_pid}")


def cpu_cgroup(tid: int) -> str:
    """The thread's cgroup v1 ``cpu`` hierarchy path ("/machine/…/vcpu1")."""
    for line in Path(f"/proc/{tid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    raise AssertionError(f"tid {tid}: no cpu cgroup in /proc/{tid}/cgroup")
