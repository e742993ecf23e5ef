"""The drift watch against a real libvirtd, a real guest and the real kernel:
``taskset``/``chrt`` on a realtime vCPU are corrected from the trace events
of the syscalls themselves, with the timed resync backed off so far that it
cannot be what corrected them (the daemon's resync counter says so); and
with the watch off the resync every second still does it.

The guests carry no rtagent metadata: a config rule matching their unique
name (prefix ``rtd-``) makes vCPU 1 realtime, and the daemon's selector
matches only them.  State is checked through the kernel.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from pathlib import Path

from rtagent.kernel import tracefs
from rtagent.kernel.schedwatch import instance_name
from tests.conftest import unique_name
from tests.system.conftest import fifo_on, wait_for

pytestmark = pytest.mark.system

BUDGET = "[realtime]\nrt_budget_us = 100000\n"  # a small RT budget: other engineers' guests share CPU 1


def _start(daemon_factory, guest_factory, daemon_lines: str):
    prefix = unique_name("rtd")
    d = daemon_factory(resync=1.0, daemon=f'guest_names = ["{prefix}*"]\n' + daemon_lines,
                       extra=f'{BUDGET}[[rule]]\nmatch_name = "{prefix}*"\nrealtime_mask = "^0"\npriority = 1\n')
    g = guest_factory(name=f"{prefix}-g", metadata="")
    tid = g.vcpu_tids()[1]
    wait_for(lambda: fifo_on(tid, {1}), 30, "initial tuning")
    wait_for(lambda: (d.guest(g.name) or {}).get("tuned_at"), 10, "tuned in status")
    # Every thread as planned, no RT budget refusal being retried (the retry
    # schedule would correct drift too), and the start's settle looks run out.
    def settled():
        gs = d.guest(g.name) or {}
        return gs.get("threads") and all(t["ok"] for t in gs["threads"]) and not any(
            v["check"] in ("rt_budget", "vcpu_pending") for v in gs.get("violations", []))

    try:
        wait_for(settled, 30, "every thread as planned")
    except AssertionError:
        raise AssertionError(f"not settled: {d.guest(g.name)}") from None
    time.sleep(3.0)
    return d, g, tid


def _daemon(d) -> dict:
    return d.status()["daemon"]


def test_taskset_and_chrt_are_corrected_by_the_watch(daemon_factory, guest_factory):
    d, g, tid = _start(daemon_factory, guest_factory,
                       'drift_watch = "on"\nwatched_resync_interval_s = 600\nfull_check_interval_s = 3600\n')
    watch = _daemon(d)["drift_watch"]
    assert watch["state"] == "running" and watch["interval_s"] == 600, watch
    root = Path(tracefs.find_tracefs())
    assert (root / "instances" / instance_name(d.proc.pid)).is_dir()
    resyncs, full = _daemon(d)["resyncs"], _daemon(d)["full_checks"]
    subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True)
    wait_for(lambda: fifo_on(tid, {1}), 20, "chrt undone", interval=0.01)
    # taskset on the vCPU: its cpuset cgroup clamps it (the kernel keeps CPU
    # 1), the watch sees the syscall and the cheap check finds nothing to do.
    subprocess.run(["taskset", "-pc", "0-1", str(tid)], check=True, capture_output=True)
    # taskset on kvm-pit (a kthread outside libvirt's cpusets): real drift.
    pit = g.kvm_pit_tid()
    if pit is not None:
        subprocess.run(["taskset", "-pc", "0-1", str(pit)], check=True, capture_output=True)
        wait_for(lambda: os.sched_getaffinity(pit) != {0, 1}, 20, "kvm-pit taskset undone", interval=0.01)
    # (The status answer is reused for 0.1 s: wait for the counters, bounded.)
    watch = wait_for(lambda: (w := _daemon(d)["drift_watch"])["events"] >= 4 and w, 10, "the watch's events counted")
    after = _daemon(d)
    # Every timed resync is 600 s away (and no full check before 3600 s):
    # only the watch's events can have sent the daemon to the guest.
    assert (after["resyncs"], after["full_checks"]) == (resyncs, full), after
    assert watch["lost"] == 0, watch
    counted = wait_for(lambda: (d.guest(g.name) or {}).get("drift_corrections", {}).get("vcpu_policy"), 10,
                       "policy drift counted")
    assert counted >= 1
    assert fifo_on(tid, {1})
    assert "drift watch on" in d.log_text()
    pid = d.proc.pid
    d.stop()
    assert not (root / "instances" / instance_name(pid)).exists(), "the daemon left its tracefs instance"


def test_with_the_watch_off_the_resync_still_corrects(daemon_factory, guest_factory):
    d, g, tid = _start(daemon_factory, guest_factory, 'drift_watch = "off"\nfull_check_interval_s = 3600\n')
    assert _daemon(d)["drift_watch"]["state"] == "off"
    assert not (Path(tracefs.find_tracefs()) / "instances" / instance_name(d.proc.pid)).exists()
    resyncs = _daemon(d)["resyncs"]
    subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True)
    wait_for(lambda: fifo_on(tid, {1}), 20, "chrt undone by the resync", interval=0.01)
    # The resync that corrected it counts itself once it has ended.
    wait_for(lambda: _daemon(d)["resyncs"] > resyncs, 10, "the resync that corrected it counted")
    counted = wait_for(lambda: (d.guest(g.name) or {}).get("drift_corrections", {}).get("vcpu_policy"), 10,
                       "policy drift counted")
    assert counted >= 1


def test_a_watch_whose_instance_stops_tracing_falls_back_to_polling(daemon_factory, guest_factory):
    d, g, tid = _start(daemon_factory, guest_factory,
                       'drift_watch = "on"\nwatched_resync_interval_s = 600\nfull_check_interval_s = 3600\n')
    assert _daemon(d)["drift_watch"]["state"] == "running"
    # Someone turns the daemon's instance off: the reader sees it at its
    # next look (every 30 s), the daemon says so and polls every second.
    inst = Path(tracefs.find_tracefs()) / "instances" / instance_name(d.proc.pid)
    (inst / "tracing_on").write_text("0")
    watch = wait_for(lambda: (w := _daemon(d)["drift_watch"])["state"] == "failed" and w, 45, "the fall-back")
    assert "tracing turned off" in watch["reason"] and watch["interval_s"] == 1.0, watch
    assert "drift watch stopped" in d.log_text()
    resyncs = _daemon(d)["resyncs"]
    subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True)
    wait_for(lambda: fifo_on(tid, {1}), 20, "chrt undone by the resync", interval=0.01)
    wait_for(lambda: _daemon(d)["resyncs"] > resyncs, 10, "the resync that corrected it counted")
    assert not inst.exists(), "the failed watch's instance was left behind"
