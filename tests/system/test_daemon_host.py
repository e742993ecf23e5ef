"""The daemon keeps the host partition: a kthread or IRQ moved back behind
its back is corrected on the next resync and counted; `rtagent host restore`
puts the machine back exactly as it was (restored even when the test fails)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtagent.cpulist import parse_cpulist
from rtagent.kernel import Kernel
from rtagent.tuning.host import kthreads
from tests.system.conftest import wait_for
from tests.threads.test_hostpart import RT_CPU, _need_two_cpus, assert_same, snapshot

pytestmark = pytest.mark.system


def _read_kthreads() -> list[kthreads.KThread]:
    return [kthreads.KThread.from_task(t) for t in Kernel().tasks.kthreads()]


def test_daemon_corrects_host_drift_and_restore_puts_everything_back(daemon_factory, tmp_path):
    _need_two_cpus()
    state_file = tmp_path / "host-saved.json"
    before = snapshot()
    d = None
    try:
        d = daemon_factory(resync=0.5, extra="")
        # daemon_factory turns host tuning off; write a config with it on.
        text = d.config.read_text().replace("kthreads = false", "kthreads = true") \
            .replace("irqs = false", "irqs = true").replace("workqueues = false", "workqueues = true") \
            .replace("kthread_priorities = false", f'kthread_priorities = true\nstate_file = "{state_file}"')
        d.config.write_text(text)
        d.proc.send_signal(1)  # SIGHUP: reload with host tuning on
        wait_for(lambda: state_file.exists(), 15, "first host enforcement")
        ks = next(kt for kt in _read_kthreads() if kt.comm == f"ksoftirqd/{RT_CPU}")
        wait_for(lambda: os.sched_getscheduler(ks.pid) == os.SCHED_FIFO, 10, "ksoftirqd raised")

        victim = next(kt for kt in _read_kthreads()
                      if kt.comm in ("khungtaskd", "kcompactd0", "oom_reaper", "rcu_preempt") and kt.movable)
        wait_for(lambda: RT_CPU not in os.sched_getaffinity(victim.pid), 10, "victim moved")
        os.sched_setaffinity(victim.pid, {0, RT_CPU})
        wait_for(lambda: RT_CPU not in os.sched_getaffinity(victim.pid), 5, "kthread drift corrected", 0.01)

        irq = next(i for i, v in snapshot()["irqs"].items()
                   if RT_CPU not in parse_cpulist(v, allow_empty=True) and before["irqs"].get(i) != v)
        Path(f"/proc/irq/{irq}/smp_affinity_list").write_text("0-1\n")
        wait_for(lambda: RT_CPU not in parse_cpulist(Path(f"/proc/irq/{irq}/smp_affinity_list").read_text()),
                 5, "IRQ drift corrected", 0.01)
        counts = wait_for(lambda: (c := d.status()["daemon"]["host_corrections"]).get("kthread_affinity", 0) >= 1
                          and c.get("irq_affinity", 0) >= 1 and c, 5, "host corrections counted")
        print("host corrections:", counts)
    finally:
        try:
            if d is not None:
                d.stop()  # SIGTERM; fails the test with the daemon's stacks if it does not exit
        finally:
            if state_file.exists():
                subprocess.run([sys.executable, "-m", "rtagent", "host", "restore", "--config", str(d.config)],
                               check=False, capture_output=True)
    assert not state_file.exists()
    assert_same(before, snapshot())
