"""Intent withdrawn or reduced while a guest runs (issue 12, item 1).

A guest taken out of realtime with ``virsh metadata --live`` must lose its
realtime policy (vCPUs and kvm-pit), then its RT budget, in that order, and
stay tracked as a non-realtime guest; the next realtime guest must get FIFO.
Everything is checked in the kernel (sched_getscheduler, cpu.rt_runtime_us).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from rtagent.kernel import Kernel
from tests.guests import RT_NS, rt_metadata
from tests.system.conftest import wait_for

pytestmark = pytest.mark.system
HUGE = "<memoryBacking><hugepages/></memoryBacking>"


def _policy(tid: int) -> tuple[int, int] | None:
    try:
        return os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority
    except ProcessLookupError:
        return None


def _cpu_cgroup(tid: int) -> str | None:
    for line in Path(f"/proc/{tid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return None


def _budget(tid: int) -> int | None:
    """cpu.rt_runtime_us of the thread's cpu cgroup (None without RT group scheduling)."""
    tree, group = Kernel().cgroups.rt_tree(), _cpu_cgroup(tid)
    if tree is None or group is None:
        return None
    return tree.runtime(group)


def _metadata(name: str, *args: str) -> None:
    subprocess.run(["virsh", "-q", "metadata", name, "--uri", RT_NS, "--live", *args], check=True,
                   capture_output=True)


def _set_args(**kw) -> list[str]:
    """``virsh metadata --set`` wants the element without its namespace
    declaration (it adds ``--key`` as the prefix itself)."""
    element = rt_metadata(**kw).replace(f" xmlns:rt='{RT_NS}'", "").replace("rt:realtime", "realtime")
    return ["--key", "rt", "--set", element]


def _set(name: str, **kw) -> None:
    _metadata(name, *_set_args(**kw))


def _tuned(g, d) -> int:
    tid = g.vcpu_tids()[1]
    wait_for(lambda: _policy(tid) == (os.SCHED_RR, 2), 30, f"vCPU 1 of {g.name} RR 2")
    wait_for(lambda: (d.guest(g.name) or {}).get("tuned_at"), 15, "tuned in status")
    return tid


@pytest.mark.parametrize("how", ["enabled-no", "removed"])
def test_withdrawn_intent_demotes_then_releases_and_the_next_guest_gets_fifo(daemon_factory, guest_factory, how):
    d = daemon_factory(resync=0.5)
    a = guest_factory(memory_backing=HUGE, metadata=rt_metadata(priority=2, policy="rr"))
    tid = _tuned(a, d)
    pit = a.kvm_pit_tid()
    if pit is not None:
        wait_for(lambda: _policy(pit) == (os.SCHED_FIFO, 3), 15, "kvm-pit FIFO 3")
    granted = _budget(tid)
    assert granted is None or granted > 0

    if how == "enabled-no":
        _set(a.name, priority=2, policy="rr", enabled="no")
    else:
        _metadata(a.name, "--remove")
    wait_for(lambda: _policy(tid) == (os.SCHED_OTHER, 0), 15, "vCPU 1 back to SCHED_OTHER")
    if pit is not None:
        wait_for(lambda: _policy(pit) == (os.SCHED_OTHER, 0), 15, "kvm-pit back to SCHED_OTHER")
    if granted is not None:
        wait_for(lambda: _budget(tid) == 0, 15, "vCPU 1's RT budget released")
    entry = wait_for(lambda: (e := d.guest(a.name)) and e["realtime"] is False and e, 15,
                     "guest still tracked, as non-realtime")
    assert entry["withdrawn"] and entry["compliant"], entry
    assert f"guest {a.uuid} stopped" not in d.log_text()

    # CPU 1 is free again (vCPU 1 of the first guest moves off it): the next
    # realtime guest's vCPU must become FIFO, its budget granted.
    subprocess.run(["virsh", "-q", "vcpupin", a.name, "1", "0", "--live"], check=True)
    b = guest_factory(memory_backing=HUGE)
    btid = b.vcpu_tids()[1]
    wait_for(lambda: _policy(btid) == (os.SCHED_FIFO, 1), 30, "second guest's vCPU 1 FIFO")
    assert _policy(tid) == (os.SCHED_OTHER, 0)
    assert "Device or resource busy" not in d.log_text()


def test_a_realtime_guest_opted_back_in_is_tuned_again(daemon_factory, guest_factory):
    d = daemon_factory(resync=0.5)
    a = guest_factory(memory_backing=HUGE, metadata=rt_metadata(priority=2, policy="rr"))
    tid = _tuned(a, d)
    _set(a.name, enabled="no")
    wait_for(lambda: _policy(tid) == (os.SCHED_OTHER, 0), 15, "vCPU 1 back to SCHED_OTHER")
    _set(a.name, priority=2, policy="rr")
    wait_for(lambda: _policy(tid) == (os.SCHED_RR, 2), 15, "vCPU 1 RR 2 again")
    entry = wait_for(lambda: (e := d.guest(a.name)) and e["realtime"] and e, 15, "realtime in status")
    assert not entry["withdrawn"]


def test_a_metadata_change_made_while_disconnected_is_applied_after_the_reconnect(daemon_factory, guest_factory):
    """libvirt sends no event to a client that is not connected: the
    METADATA_CHANGE of a change made in that gap is lost, and the reconnect
    must find it (GuestSupervisor._missed_metadata)."""
    d = daemon_factory(resync=0.5)
    a = guest_factory(memory_backing=HUGE, metadata=rt_metadata(priority=2, policy="rr"))
    tid = _tuned(a, d)
    pid = int(Path("/run/libvirtd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    try:
        # Until the daemon waits 4 s before its next attempt: the change below
        # lands inside that wait.
        wait_for(lambda: "retrying in 4.0s" in d.log_text(), 30, "the daemon's reconnect backoff at 4 s")
    finally:
        subprocess.run(["libvirtd", "-d"], check=True)
    setting = ["virsh", "-q", "metadata", a.name, "--uri", RT_NS, "--live", *_set_args(priority=3, policy="rr")]
    wait_for(lambda: subprocess.run(setting, capture_output=True).returncode == 0, 15,
             "the metadata set on the restarted libvirtd")
    assert d.status()["daemon"]["libvirt"]["connected"] is False, "reconnected before the change: nothing missed"
    wait_for(lambda: _policy(tid) == (os.SCHED_RR, 3), 30, "vCPU 1 RR 3 after the reconnect")
    assert "metadata changed while rtagent was not connected" in d.log_text()
