"""`rtagent host apply` ranks per-CPU kernel threads against the running
guests' real vCPU priorities (metadata, `<vcpusched>`, rules), the same
computation the daemon uses: a FIFO 5 metadata guest puts `ksoftirqd` on
its realtime CPU at FIFO 6, not at the config default's 2 (which would
leave it starving below the vCPU).  Verified through the kernel; the
machine is restored even when the test fails."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rtagent.cli import main
from tests import guests
from tests.conftest import unique_name
from tests.system.test_daemon_host import _read_kthreads
from tests.threads.test_hostpart import RT_CPU, _need_two_cpus, assert_same, snapshot

pytestmark = pytest.mark.system


def _config(tmp_path, name: str):
    p = tmp_path / "rtagent.toml"
    p.write_text(f"""
[host]
realtime_cpus = "{RT_CPU}"
[daemon]
guest_names = ["{name}"]
[metrics]
enabled = false
[host_tuning]
kthreads = false
irqs = false
workqueues = false
kthread_priorities = true
state_file = "{tmp_path / 'host-saved.json'}"
""")
    return p


def test_host_apply_puts_ksoftirqd_above_a_fifo5_metadata_guest(guest_factory, tmp_path, capsys):
    _need_two_cpus()
    name = unique_name("rk")
    guest_factory(guests.rt_guest_xml(name, metadata=guests.rt_metadata(priority=5)), name=name)
    cfg = _config(tmp_path, name)
    ks = next(kt for kt in _read_kthreads() if kt.comm == f"ksoftirqd/{RT_CPU}")
    before = snapshot()
    try:
        assert main(["host", "apply", "--config", str(cfg)]) == 0
        print(capsys.readouterr().out)
        # Kernel truth: above the guest's FIFO 5 vCPU, by the ladder's one step.
        assert os.sched_getscheduler(ks.pid) == os.SCHED_FIFO
        assert os.sched_getparam(ks.pid).sched_priority == 6
    finally:
        subprocess.run([sys.executable, "-m", "rtagent", "host", "restore", "--config", str(cfg)],
                       check=False, capture_output=True)
    assert not (tmp_path / "host-saved.json").exists()
    assert_same(before, snapshot())
