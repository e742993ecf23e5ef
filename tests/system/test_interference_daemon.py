"""The daemon's interference accounting end to end: its own tracefs instance,
noise injected on CPU 1 found in `rtagent status --json` and on /metrics,
the instance gone after SIGTERM and replaced after a SIGKILL."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rtagent.kernel import tracefs
from tests.conftest import unique_name
from tests.system.conftest import trace_instance_of, wait_for
from tests.threads.test_interference_real import busy, comm_name, finish, steal_ns

pytestmark = pytest.mark.system

RT_CPU = 1
ROOT = Path(tracefs.find_tracefs()) if tracefs.find_tracefs() else None
needs_tracefs = pytest.mark.skipif(ROOT is None, reason="tracefs is not mounted (scripts/setup-host.sh mounts it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(sock: str) -> tuple[dict, str]:
    js = subprocess.run([sys.executable, "-m", "rtagent", "status", "--json", "--socket", sock],
                        capture_output=True, text=True, timeout=30)
    text = subprocess.run([sys.executable, "-m", "rtagent", "status", "--socket", sock],
                          capture_output=True, text=True, timeout=30)
    return json.loads(js.stdout), text.stdout


def _culprit(data: dict, name: str) -> dict | None:
    for cpu in data["interference"]["cpus"]:
        if cpu["cpu"] == RT_CPU:
            for c in cpu["culprits"]:
                if c["source"] == name:
                    return c
    return None


@needs_tracefs
def test_daemon_accounts_injected_noise(daemon_factory):
    port = _free_port()
    instance = unique_name("rtt-itf")
    d = daemon_factory(extra=f'[interference]\ninstance = "{instance}"\ntop_n = 100\npoll_interval_s = 0.2\n',
                       metrics_port=port)
    assert trace_instance_of(d.config) == instance
    assert (ROOT / "instances" / instance / "tracing_on").read_text().strip() == "1"
    name = comm_name("dnoise")
    steal0 = steal_ns(RT_CPU)
    injected = finish(busy(name, 0.5))
    stolen = steal_ns(RT_CPU) - steal0
    wait_for(lambda: _culprit(_status(d.socket)[0], name), 10, "the noise in the status window")
    # The reader polls every 0.2 s: the run's tail is in the next reads.
    time.sleep(4 * 0.2 + 0.3)
    data, text = _status(d.socket)
    assert data["interference"]["running"] is True
    cul = _culprit(data, name)
    lost = sum(c["lost_events"] for c in data["interference"]["cpus"] if c["cpu"] == RT_CPU)
    if lost:
        pytest.skip(f"the trace buffer overran ({lost} events lost): another heavy load on CPU {RT_CPU}")
    print("interference daemon culprits:", [(c["source"], c["seconds"]) for x in data["interference"]["cpus"]
                                            for c in x["culprits"][:4]])
    print(f"interference daemon busy task ns: accounted {cul['seconds'] * 1e9:.0f} of {injected}"
          f" ({cul['seconds'] * 1e9 / injected:.3f})")
    assert cul["kind"] == "task"
    assert abs(cul["seconds"] * 1e9 - injected) <= 0.10 * injected + stolen, (cul, injected, stolen)
    assert f"interference CPU {RT_CPU}:" in text
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    series = [line for line in body.splitlines()
              if line.startswith("rtagent_cpu_interference_seconds_total{") and f'source="{name}"' in line]
    assert series and 'kind="task"' in series[0] and f'cpu="{RT_CPU}"' in series[0], series
    # The series starts when the source is admitted (the first poll that saw
    # it), so it may miss the first poll interval's worth.
    assert 0 < float(series[0].rsplit(" ", 1)[1]) * 1e9 <= injected * 1.1 + stolen
    assert "rtagent_interference_up 1.0" in body
    d.stop()
    assert not (ROOT / "instances" / instance).exists()


@needs_tracefs
def test_sigkilled_daemons_instance_is_replaced_by_the_next_start(daemon_factory):
    instance = unique_name("rtt-itf")
    extra = f'[interference]\ninstance = "{instance}"\n'
    first = daemon_factory(extra=extra)
    first.proc.kill()   # the daemon this test started, by PID
    first.proc.wait()
    assert (ROOT / "instances" / instance).exists()   # nothing could remove it
    second = daemon_factory(extra=extra)
    data, _ = _status(second.socket)
    assert data["interference"]["running"] is True and data["interference"]["error"] is None
    second.stop()
    assert not (ROOT / "instances" / instance).exists()
