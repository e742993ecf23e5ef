"""The cheap steady state's event paths against a real libvirtd and guests.

Between full checks the daemon only compares each managed thread's policy,
priority and affinity with the last reconcile (no /proc, no libvirt), so
what changes identity must arrive as an event — or be caught by the slow
full check.  Each test makes the event the only possible trigger: resync
and full check at an hour (or the proc connector off), and the daemon's own
counters show that no resync or full check ran in between.

These guests carry no rtagent metadata: their intent comes from a config
rule matching their unique name, and the daemon's guest selector matches
only them, so the other daemons on this shared host leave them alone and
this daemon touches nothing else.  State is checked through the kernel.
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
SERIAL = "<controller type='virtio-serial' index='0'/>"
CHANNEL = "<channel type='pty'><target type='virtio' name='org.rtagent.test.0'/></channel>"


def _scoped(prefix: str) -> tuple[str, str]:
    """(lines for [daemon], TOML after the tables): only ``prefix*`` guests,
    vCPU 1 of them realtime by a rule."""
    return (f'guest_names = ["{prefix}*"]\n',
            f'[[rule]]\nmatch_name = "{prefix}*"\nrealtime_mask = "^0"\npriority = 1\n')


def _start(daemon_factory, guest_factory, *, resync: float, daemon_lines: str, **guest_kw):
    prefix = unique_name("c-ev")
    scope, rule = _scoped(prefix)
    d = daemon_factory(resync=resync, daemon=scope + daemon_lines, extra=rule)
    g = guest_factory(name=f"{prefix}-g", metadata="", **guest_kw)
    tid = g.vcpu_tids()[1]
    wait_for(lambda: fifo_on(tid, {1}), 30, "initial tuning")
    wait_for(lambda: (d.guest(g.name) or {}).get("tuned_at"), 10, "tuned in status")
    # Let the start's settle looks (≤ ~1.6 s of retries) run out: from here
    # on only an event can make this daemon look at the guest.
    time.sleep(3.0)
    return d, g, tid


def _quiet(d) -> tuple[int, int]:
    st = d.status()["daemon"]
    return st["resyncs"], st["full_checks"]


def test_live_vcpupin_is_corrected_on_the_tunable_event(daemon_factory, guest_factory):
    d, g, tid = _start(daemon_factory, guest_factory, resync=HOUR, daemon_lines=f"full_check_interval_s = {HOUR}\n")
    before = _quiet(d)
    subprocess.run(["virsh", "-q", "vcpupin", g.name, "1", "0-1", "--live"], check=True)
    wait_for(lambda: fifo_on(tid, {1}), 20, "vcpupin undone", interval=0.01)
    assert _quiet(d) == before, "a resync or full check ran: the event was not what corrected it"
    wait_for(lambda: "libvirt event tunable for " + g.name in d.log_text(), 10, "TUNABLE event logged")
    counted = wait_for(lambda: (d.guest(g.name) or {}).get("drift_corrections", {}).get("vcpu_affinity"), 10,
                       "affinity drift counted")
    assert counted >= 1


def test_device_added_event_reconciles_the_guest(daemon_factory, guest_factory):
    d, g, tid = _start(daemon_factory, guest_factory, resync=HOUR,
                       daemon_lines=f"full_check_interval_s = {HOUR}\nproc_connector = false\n",
                       extra_devices=SERIAL)
    assert d.status()["daemon"]["proc_connector"] is False
    # Policy drift behind the daemon's back: no libvirt event, no proc event.
    subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True)
    assert not fifo_on(tid, {1})
    before = _quiet(d)
    # A live hotplug (a virtio-serial port: no PCI hotplug on this machine type).
    subprocess.run(["virsh", "-q", "attach-device", g.name, "/dev/stdin", "--live"], input=CHANNEL.encode(),
                   check=True, capture_output=True)
    wait_for(lambda: fifo_on(tid, {1}), 20, "reconciled on DEVICE_ADDED", interval=0.01)
    assert _quiet(d) == before, "a resync or full check ran: the event was not what reconciled"
    wait_for(lambda: "libvirt event device_added for " + g.name in d.log_text(), 10, "DEVICE_ADDED event logged")


def _add_unseen_iothread(d, g, n: int) -> tuple[int | None, int]:
    """``iothreadadd n``, placed by libvirt, with no full check since: the
    thread is in no baseline.  (None, …) when a full check slipped in (it
    re-read the thread set: the re-pin would be a cheap check's to see)."""
    before = set(g.thread_names())
    full_added = _quiet(d)[1]
    subprocess.run(["virsh", "-q", "iothreadadd", g.name, str(n), "--live"], check=True)
    new = wait_for(lambda: [t for t, name in g.thread_names().items() if t not in before and name == f"IO iothread{n}"],
                   10, "the new iothread")[0]
    # libvirt places it (its own iothreadN cgroup, then its affinity) after
    # QEMU reports it; re-pin only once libvirt is done, or libvirt's own
    # placement would undo the re-pin instead of the daemon.
    wait_for(lambda: f"/iothread{n}" in Path(f"/proc/{g.pid}/task/{new}/cgroup").read_text(), 10,
             "libvirt placed the new iothread")
    time.sleep(0.2)
    full_before = _quiet(d)[1]
    return (new if full_before == full_added else None), full_before


def test_full_check_catches_a_thread_whose_event_was_dropped(daemon_factory, guest_factory):
    """Proc connector off (its FORK/COMM events "dropped"); libvirt sends no
    event for ``iothreadadd``.  The new iothread is not in any cheap-check
    baseline, so re-pinning it behind the daemon's back leaves every cheap
    check matching: only the full check's re-read of the thread set sees it."""
    # The cpuset watch off too: it would give iothread7's group the emulator
    # set, and the kernel would then clamp the re-pin below (no drift made).
    d, g, _tid = _start(daemon_factory, guest_factory, resync=0.2,
                        daemon_lines="full_check_interval_s = 6.0\nproc_connector = false\ncpuset_watch = false\n",
                        iothreads=1, cputune=pinned_cputune({0: "0", 1: "1"},
                                                            extra="<iothreadpin iothread='1' cpuset='0'/>"))
    for n in (7, 8, 9, 10, 11):
        new, full_before = _add_unseen_iothread(d, g, n)
        if new is not None:
            break
    else:
        pytest.fail("a full check ran between every iothreadadd and its re-pin")
    os.sched_setaffinity(new, {0, 1})  # behind the daemon's back, onto the realtime CPU
    assert os.sched_getaffinity(new) == {0, 1}, "the iothread's cpuset cgroup clamped the re-pin: no drift made"
    wait_for(lambda: os.sched_getaffinity(new) == {0}, 30, "new iothread back in the emulator set", interval=0.02)
    assert _quiet(d)[1] > full_before, "corrected without a full check: something else saw it"
    # The log line follows the syscall (after the re-observation).
    wait_for(lambda: f"(tid {new}) affinity" in d.log_text(), 10, "the correction logged")


def test_full_check_sees_a_change_no_event_and_no_syscall_check_reports(daemon_factory, guest_factory):
    """QEMU's RLIMIT_MEMLOCK lowered with prlimit: no libvirt or proc event,
    nothing the cheap check compares, and the guest stays "settled" (its
    memlock violation is one no fix can clear).  The full check's marks
    include the limit (tuning/guest/marks.py): the guest is judged again and
    its memlock violation names the new limit."""
    import resource

    d, g, _tid = _start(daemon_factory, guest_factory, resync=0.2, daemon_lines="full_check_interval_s = 2.0\n")

    def memlock() -> str:
        return next(v["detail"] for v in (d.guest(g.name) or {}).get("violations", []) if v["check"] == "memlock")

    soft, hard = resource.prlimit(g.pid, resource.RLIMIT_MEMLOCK)
    assert "soft" not in memlock() and soft == hard, memlock()
    # Two full checks with nothing changed: the guest stood (and stays as it was).
    checks = _quiet(d)[1]
    wait_for(lambda: _quiet(d)[1] >= checks + 2, 20, "two full checks")
    assert "soft" not in memlock()
    resource.prlimit(g.pid, resource.RLIMIT_MEMLOCK, (soft // 2, hard))
    checks = _quiet(d)[1]
    wait_for(lambda: "soft" in memlock(), 20, "the new limit in the memlock violation")
    assert _quiet(d)[1] > checks, "noticed without a full check: something else saw it"
