"""A daemon killed right after the start window made a starting guest's vCPU
SCHED_FIFO, before the STARTED reconcile: its successor still knows that
FIFO is rtagent's (the realtime record, rtagent/daemon/record.py, is written
before the start window's first scheduler write), so an intent withdrawn
while no daemon ran is undone.

No hook in the daemon: the test polls the vCPU thread's policy in the kernel
while libvirt starts the guest, SIGKILLs the daemon (by PID) the moment it
sees FIFO, and only then reads the record, as the successor will.  Whatever
the timing, the record must name this QEMU process: it was written before
the FIFO the test saw.  The guest is started paused (its CPUs never run, so
no FIFO vCPU spins on CPU 1), its name ``rtw-<pid>-…``; the daemons have a
small fixed RT budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import libvirt
import pytest

from rtagent.daemon.record import record_path
from rtagent.kernel import Kernel
from tests.conftest import unique_name
from tests.guests import RT_NS
from tests.system.conftest import wait_for

pytestmark = pytest.mark.system

PREFIX = f"rtw-{os.getpid()}"
BUDGET = "[realtime]\nrt_budget_us = 50000\n"


def _record(d) -> dict:
    path = Path(record_path(d.socket + ".lock"))
    return json.loads(path.read_text())["entries"] if path.exists() else {}


def _vcpu1(kernel: Kernel, name: str) -> tuple[int, int] | None:
    """(QEMU pid, TID of "CPU 1/…") of the guest being started, once both exist."""
    pid = kernel.qemu.find(name, None)  # libvirt's pid file, written right after the fork
    if pid is None:
        return None
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith("CPU 1/"):
                return pid, int(tid)
    except OSError:  # the start failed meanwhile: the thread reports it
        pass
    return None


def _first_fifo(kernel: Kernel, name: str, started: threading.Thread) -> tuple[int, int]:
    """Poll until vCPU 1 is SCHED_FIFO; (pid, tid).  Fails if the start ends
    without it (30 s bound: a stuck start)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _vcpu1(kernel, name)
        if found is not None:
            try:
                if os.sched_getscheduler(found[1]) == os.SCHED_FIFO:
                    return found
            except ProcessLookupError:
                pass
        elif not started.is_alive():
            break
        time.sleep(0.0002)  # the early FIFO lands milliseconds before the STARTED reconcile
    raise AssertionError(f"vCPU 1 of {name} never seen SCHED_FIFO while it started")


def test_a_daemon_killed_after_the_early_fifo_leaves_its_successor_the_record(daemon_factory, guest_factory):
    d = daemon_factory(daemon=f'guest_names = ["{PREFIX}-*"]\n', extra=BUDGET)
    assert d.status()["daemon"]["start_watch"] is True
    name, kernel, out = unique_name(PREFIX), Kernel(), []
    start = threading.Thread(target=lambda: out.append(
        guest_factory(name=name, wait_vcpus=False, flags=libvirt.VIR_DOMAIN_START_PAUSED)))
    start.start()
    try:
        pid, tid = _first_fifo(kernel, name, start)
        d.proc.kill()  # the daemon this test started, by PID: no shutdown step runs
        d.proc.wait()
    finally:
        start.join(60)
    assert out, f"{name} did not start"
    g = out[0]
    assert g.pid == pid and os.sched_getscheduler(tid) == os.SCHED_FIFO
    entry = _record(d).get(g.uuid)
    assert entry is not None and entry["pid"] == pid, f"record at the kill: {_record(d)}\n{d.log_text()[-3000:]}"
    assert any(c.endswith("/vcpu1") for c in entry["cgroups"]), entry

    # While no daemon runs, the operator takes the guest out of realtime.
    subprocess.run(["virsh", "-q", "metadata", name, "--uri", RT_NS, "--live", "--remove"], check=True,
                   capture_output=True)
    d2 = daemon_factory(reuse=d)
    wait_for(lambda: os.sched_getscheduler(tid) == os.SCHED_OTHER, 15, "vCPU 1 back to SCHED_OTHER")
    assert "withdrawn while no daemon ran" in d2.log_text()
    wait_for(lambda: g.uuid not in _record(d2), 10, "the record entry dropped once undone")
    assert g.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED  # it never ran
