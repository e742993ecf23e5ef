"""Live-added iothreads and live re-pins against a real libvirtd (issue 14).

libvirt places a thread it adds live (``virsh iothreadadd``) after QEMU
reports it and sends no event: it makes the ``iothreadN`` cpuset group,
moves the thread in and calls ``sched_setaffinity`` with every CPU.  The
daemon's cpuset watch (rtagent/daemon/placement.py) gives the new group its
planned CPUs first, so the kernel keeps the thread there.  A live re-pin
(TUNABLE) is corrected from a syscall re-read of the last observation
(rtagent/daemon/repin.py).  Resync and full check are at an hour: only the
events can be what acts.  Guests carry no metadata (a config rule matches
their unique name), so other daemons on this host leave them alone.  No
timing is asserted; state is read from the kernel and cgroupfs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import unique_name
from tests.guests import pinned_cputune
from tests.system.conftest import fifo_on, wait_for

pytestmark = pytest.mark.system

HOUR = 3600.0
IOTHREAD_TUNE = pinned_cputune({0: "0", 1: "1"}, extra="<iothreadpin iothread='1' cpuset='0'/>")


def _start(daemon_factory, guest_factory, daemon_lines: str = ""):
    prefix = unique_name("rte")
    d = daemon_factory(resync=HOUR, daemon=f'guest_names = ["{prefix}*"]\nfull_check_interval_s = {HOUR}\n'
                       + daemon_lines,
                       extra=f'[[rule]]\nmatch_name = "{prefix}*"\nrealtime_mask = "^0"\npriority = 1\n')
    g = guest_factory(name=f"{prefix}-g", metadata="", iothreads=1, cputune=IOTHREAD_TUNE)
    tid = g.vcpu_tids()[1]
    wait_for(lambda: fifo_on(tid, {1}), 30, "initial tuning")
    wait_for(lambda: (d.guest(g.name) or {}).get("tuned_at"), 10, "tuned in status")
    time.sleep(3.0)  # the start's settle looks run out: from here on only events act
    return d, g


def _counts(d) -> tuple[int, int]:
    st = d.status()["daemon"]
    return st["resyncs"], st["full_checks"]


def _cpuset_dir(pid: int) -> Path:
    for line in Path(f"/proc/{pid}/task/{pid}/cgroup").read_text().splitlines():
        _hier, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):
            return Path("/sys/fs/cgroup/cpuset") / path.lstrip("/")
    pytest.skip("no cgroup v1 cpuset hierarchy here")


def _add_iothread(g, n: int) -> int:
    before = set(g.thread_names())
    subprocess.run(["virsh", "-q", "iothreadadd", g.name, str(n), "--live"], check=True)
    # virsh returns after libvirt's whole placement (group, move, affinity).
    new = [t for t, name in g.thread_names().items() if t not in before and name == f"IO iothread{n}"]
    assert new, g.thread_names()
    assert f"/iothread{n}" in Path(f"/proc/{g.pid}/task/{new[0]}/cgroup").read_text()
    return new[0]


def test_a_live_added_iothread_gets_its_planned_cpuset_before_libvirts_affinity_call(daemon_factory, guest_factory):
    d, g = _start(daemon_factory, guest_factory)
    before = _counts(d)
    new = _add_iothread(g, 7)
    group = _cpuset_dir(g.pid).parent / "iothread7"
    # libvirt wrote the parent's CPUs (0-1) into the new group, then asked
    # for all CPUs: the group holds the plan (the emulator set), so the
    # kernel kept the thread there.  The daemon's reconcile never writes
    # this group (an unplanned iothread is pinned like the emulator): the
    # watch is what did.
    wait_for(lambda: (group / "cpuset.cpus").read_text().strip() == "0", 10, "iothread7's cpuset clamped")
    assert os.sched_getaffinity(new) == {0}
    wait_for(lambda: "new iothread7 cpuset 0-1 -> 0" in d.log_text(), 10, "the clamp logged")
    assert _counts(d) == before, "a resync or full check ran"
    # A second one, and removal: the watch follows the groups.
    subprocess.run(["virsh", "-q", "iothreaddel", g.name, "7", "--live"], check=True)
    new = _add_iothread(g, 8)
    wait_for(lambda: (group.parent / "iothread8" / "cpuset.cpus").read_text().strip() == "0", 10,
             "iothread8's cpuset clamped")
    assert os.sched_getaffinity(new) == {0}


def test_without_the_watch_libvirt_widens_the_new_iothread_and_the_reconcile_puts_it_back(
        daemon_factory, guest_factory):
    """The control: the same add with ``cpuset_watch = false`` leaves the
    group as libvirt made it (both CPUs); the thread ends up in the
    emulator set only through the daemon's follow-up looks (syscall)."""
    d, g = _start(daemon_factory, guest_factory, "cpuset_watch = false\n")
    new = _add_iothread(g, 7)
    group = _cpuset_dir(g.pid).parent / "iothread7"
    wait_for(lambda: os.sched_getaffinity(new) == {0}, 10, "placed by the settle looks", interval=0.005)
    assert (group / "cpuset.cpus").read_text().strip() == "0-1"
    assert "new iothread7 cpuset" not in d.log_text()


def test_live_iothreadpin_is_corrected_on_the_tunable_event(daemon_factory, guest_factory):
    d, g = _start(daemon_factory, guest_factory)
    io = next(t for t, n in g.thread_names().items() if n == "IO iothread1")
    before = _counts(d)
    subprocess.run(["virsh", "-q", "iothreadpin", g.name, "1", "0-1", "--live"], check=True)
    wait_for(lambda: os.sched_getaffinity(io) == {0}, 20, "iothreadpin undone", interval=0.005)
    assert _counts(d) == before, "a resync or full check ran: the event was not what corrected it"
    wait_for(lambda: "libvirt event tunable for " + g.name in d.log_text(), 10, "TUNABLE event logged")
    counted = wait_for(lambda: (d.guest(g.name) or {}).get("drift_corrections", {}).get("emulator_affinity"), 10,
                       "affinity drift counted")
    assert counted >= 1
    # The daemon's own pin call (libvirt's cpuset and live XML back in line)
    # comes back as a TUNABLE event too: every thread is as recorded, so it
    # is answered by the syscall check alone.
    wait_for(lambda: "every thread as recorded" in d.log_text(), 10, "the echo of our own pin skipped")
    group = _cpuset_dir(g.pid).parent / "iothread1"
    wait_for(lambda: (group / "cpuset.cpus").read_text().strip() == "0", 10, "libvirt's cpuset back in line")


def _live_vcpupin(g, vcpu: int) -> str:
    """libvirt's live XML view of one vCPU's pinning (``virsh vcpupin``)."""
    out = subprocess.run(["virsh", "-q", "vcpupin", g.name, str(vcpu), "--live"], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[-1]


def test_a_widening_vcpupin_is_put_back_in_cgroupfs_and_libvirt_agrees_again(daemon_factory, guest_factory):
    """``vcpupin 1 0-1`` widens vCPU 1's group: the watch writes the plan
    back (libvirt's affinity call then lands on CPU 1), the drift is
    counted, and libvirt's own pin call puts its live XML back to CPU 1."""
    d, g = _start(daemon_factory, guest_factory)
    tid = g.vcpu_tids()[1]
    before = _counts(d)
    subprocess.run(["virsh", "-q", "vcpupin", g.name, "1", "0-1", "--live"], check=True)
    wait_for(lambda: fifo_on(tid, {1}), 20, "vcpupin undone", interval=0.005)
    wait_for(lambda: (d.guest(g.name) or {}).get("drift_corrections", {}).get("vcpu_affinity"), 10, "drift counted")
    wait_for(lambda: _live_vcpupin(g, 1) == "1", 10, "libvirt's live XML back to the plan")
    assert (_cpuset_dir(g.pid).parent / "vcpu1" / "cpuset.cpus").read_text().strip() == "1"
    assert _counts(d) == before, "a resync or full check ran"
    wait_for(lambda: "vcpu1,clamped" in d.log_text() or "libvirt event tunable" in d.log_text(), 10, "an event")


def test_a_disjoint_vcpupin_succeeds_for_libvirt_and_is_then_undone(daemon_factory, guest_factory):
    """``vcpupin 1 0`` shares no CPU with the plan: writing the plan back
    first would leave libvirt's affinity call an empty set and fail the
    operator's command, so the watch writes nothing; the command succeeds
    and the daemon then corrects it like any re-pin (syscall, then
    libvirt's pin call)."""
    d, g = _start(daemon_factory, guest_factory)
    tid = g.vcpu_tids()[1]
    done = subprocess.run(["virsh", "-q", "vcpupin", g.name, "1", "0", "--live"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: fifo_on(tid, {1}), 20, "vcpupin undone", interval=0.005)
    wait_for(lambda: _live_vcpupin(g, 1) == "1", 10, "libvirt's live XML back to the plan")
    assert "vcpu1,clamped" not in d.log_text()
