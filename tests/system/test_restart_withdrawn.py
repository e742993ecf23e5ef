"""A realtime intent withdrawn while no daemon runs (issue 12 leftover).

The daemon that starts afterwards demotes the threads rtagent made realtime
(SCHED_OTHER) and then releases their RT budget — and only those: the
record next to the instance lock (rtagent/daemon/record.py) must name this
very QEMU process, and the guest must be one the daemon manages.  FIFO that
another tool set (``chrt`` here; libvirt's own ``<vcpusched>`` cannot run on
this host, docs/rt-budget.md) is left alone.  Every check is in the kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rtagent.daemon.record import record_path
from rtagent.kernel import Kernel
from tests.guests import RT_NS, rt_metadata
from tests.system.conftest import wait_for
from tests.system.test_intent_changes import _budget, _policy

pytestmark = pytest.mark.system
HUGE = "<memoryBacking><hugepages/></memoryBacking>"


def _record(d) -> dict:
    path = Path(record_path(d.socket + ".lock"))
    return json.loads(path.read_text())["entries"] if path.exists() else {}


def test_intent_withdrawn_while_the_daemon_was_down_is_undone_at_its_start(daemon_factory, guest_factory):
    d = daemon_factory(resync=0.5)
    a = guest_factory(memory_backing=HUGE, metadata=rt_metadata(priority=2, policy="rr"))
    tid = a.vcpu_tids()[1]
    wait_for(lambda: _policy(tid) == (os.SCHED_RR, 2), 30, "vCPU 1 RR 2")
    pit = a.kvm_pit_tid()
    if pit is not None:
        wait_for(lambda: _policy(pit) == (os.SCHED_FIFO, 3), 15, "kvm-pit FIFO 3")
    granted = _budget(tid)
    entry = wait_for(lambda: _record(d).get(a.uuid), 10, "the guest in the daemon's record")
    assert entry["pid"] == a.pid
    d.stop()

    # While no daemon runs: the operator takes the guest out of realtime.
    subprocess.run(["virsh", "-q", "metadata", a.name, "--uri", RT_NS, "--live", "--remove"], check=True,
                   capture_output=True)
    assert _policy(tid) == (os.SCHED_RR, 2)  # tuning outlived the daemon; nobody undid it

    d2 = daemon_factory(reuse=d)
    wait_for(lambda: _policy(tid) == (os.SCHED_OTHER, 0), 15, "vCPU 1 back to SCHED_OTHER")
    if pit is not None:
        wait_for(lambda: _policy(pit) == (os.SCHED_OTHER, 0), 15, "kvm-pit back to SCHED_OTHER")
    if granted:
        wait_for(lambda: _budget(tid) == 0, 15, "vCPU 1's RT budget released")
    status = wait_for(lambda: (e := d2.guest(a.name)) and e, 10, "the guest in status")
    assert status["withdrawn"] and status["realtime"] is False, status
    wait_for(lambda: a.uuid not in _record(d2), 10, "the record entry dropped once undone")
    assert "withdrawn while no daemon ran" in d2.log_text()


def test_fifo_rtagent_did_not_set_is_left_alone_after_a_restart(daemon_factory, guest_factory, tmp_path):
    """Two guests without intent, their kvm-pit thread made FIFO by another
    tool (a vCPU cannot be: its cgroup has no RT budget — rtagent would be
    the one granting it): one with a record entry about an older QEMU
    process (wrong start time), one whose entry is right but that the daemon
    does not manage.  A withdrawal would demote kvm-pit (plan_withdrawal)."""
    b = guest_factory(memory_backing=HUGE, metadata="")
    c = guest_factory(memory_backing=HUGE, metadata="")
    pits = {g.name: g.kvm_pit_tid() for g in (b, c)}
    if None in pits.values():
        pytest.skip("no kvm-pit thread on this host (TCG)")
    for tid in pits.values():
        subprocess.run(["chrt", "-f", "-p", "1", str(tid)], check=True)
    d = daemon_factory(resync=0.5, daemon=f'guest_names = ["{b.name}", "{c.name}"]\n'
                       f'guest_names_exclude = ["{c.name}"]\nfull_check_interval_s = 1.0')
    d.stop()
    kernel = Kernel()

    def entry(g, started_shift: int) -> dict:
        pid = kernel.qemu.find(g.name, g.uuid)
        return {"name": g.name, "pid": pid, "started": kernel.tasks.stat(pid).starttime + started_shift,
                "cgroups": []}

    Path(record_path(d.socket + ".lock")).write_text(json.dumps(
        {"version": 1, "written_by": "rtagent", "entries": {b.uuid: entry(b, 1), c.uuid: entry(c, 0)}}))
    d2 = daemon_factory(reuse=d)
    checks = d2.status()["daemon"]["full_checks"]
    wait_for(lambda: d2.status()["daemon"]["full_checks"] >= checks + 2, 20, "two more full checks")
    for g in (b, c):
        assert _policy(pits[g.name]) == (os.SCHED_FIFO, 1), g.name
        assert d2.guest(g.name) is None
    assert _record(d2) == {}
    assert "withdrawn while no daemon ran" not in d2.log_text()
