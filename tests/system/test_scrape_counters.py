"""The vCPU counters on /metrics are the kernel's, through a real daemon and
a real guest: the daemon keeps its schedstat/status descriptors per
realtime vCPU thread across scrapes; once the guest is paused (its vCPU
threads stop running) the exported CPU time, run-queue delay and
involuntary switches become exactly what ``/proc/<qemu>/task/<vcpu>/``
says, and they never run ahead of it.  The series leave with the guest."""

from __future__ import annotations

import os
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import unique_name
from tests.system.conftest import free_port_in, wait_for

pytestmark = pytest.mark.system
HUGE = "<memoryBacking><hugepages/></memoryBacking>"
PREFIX = f"rtm-{os.getpid()}"
NAMES = ("rtagent_vcpu_cpu_seconds_total", "rtagent_vcpu_run_delay_seconds_total",
         "rtagent_vcpu_involuntary_context_switches_total")


def _port() -> int:
    """A free port of this engineer's range (19600-19699)."""
    return free_port_in(19600 + os.getpid() % 50, 19699)


def _kernel(pid: int, tid: int) -> tuple[float, float, float]:
    """(CPU s, run delay s, involuntary switches), read straight from /proc."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        run, delay = (int(x) for x in f.read().split()[:2])
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        nvcsw = next(int(line.split()[1]) for line in f if line.startswith("nonvoluntary_ctxt_switches:"))
    return run / 1e9, delay / 1e9, float(nvcsw)


def _scraped(port: int, domain: str) -> tuple[float, ...] | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    got = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
           if s.labels.get("domain") == domain and s.labels.get("vcpu") == "1"}
    if not all(n in got for n in NAMES):
        return None
    return tuple(got[n] for n in NAMES)


def _stable(pid: int, tid: int) -> tuple[float, float, float] | None:
    """The paused vCPU thread's counters once they stop moving (None: they
    still moved after 5 s)."""
    last = _kernel(pid, tid)
    for _ in range(10):
        time.sleep(0.5)
        now = _kernel(pid, tid)
        if now == last:
            return now
        last = now
    return None


def test_the_vcpu_counters_on_metrics_are_the_kernels(daemon_factory, guest_factory):
    port = _port()
    daemon_factory(resync=0.5, daemon=f'guest_names = ["{PREFIX}-*"]', metrics_port=port)
    g = guest_factory(name=unique_name(PREFIX), memory_backing=HUGE)
    pid, tid = g.pid, g.vcpu_tids()[1]
    first = wait_for(lambda: _scraped(port, g.name), 30, "the realtime vCPU's counter series")
    # Running: an exported value is never ahead of the kernel (read after it).
    for _ in range(3):
        got = _scraped(port, g.name)
        assert got is not None
        assert all(s <= k for s, k in zip(got, _kernel(pid, tid), strict=True)), got
        assert all(s >= f for s, f in zip(got, first, strict=True)), (first, got)  # counters: never back
        time.sleep(0.3)

    g.dom.suspend()
    want = wait_for(lambda: _stable(pid, tid), 30, "the paused vCPU thread's counters to settle")
    # Cached for at most 7.5 s; the switch count re-read within ~45 s of its last read.
    wait_for(lambda: _scraped(port, g.name) == want, 90, f"the exported counters to equal the kernel's {want}",
             interval=1.0)
    assert _kernel(pid, tid) == want  # still paused: nothing moved meanwhile

    g.dom.destroy()
    wait_for(lambda: _scraped(port, g.name) is None, 30, "the series to leave with the guest")
