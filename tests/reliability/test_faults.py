"""Faults against a real libvirtd, real guests and the daemon as a subprocess.

Every test is bounded in time and cleans up: guests through guest_factory
(destroyed at teardown), the daemon through the factory (SIGTERM by PID),
libvirtd restarted by ``libvirtd_guard`` whatever happens.  The loops are
shortened unless RTAGENT_FULL=1 (tests/reliability/conftest.py).

State is verified through the kernel (sched_getscheduler/affinity); the
daemon's status socket is only asked what it *claims*.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest

from tests.conftest import _live
from tests.guests import pinned_cputune
from tests.reliability.conftest import (
    create_guest,
    fd_count,
    is_fifo,
    kill_libvirtd,
    log_problems,
    report,
    rss_kib,
    scale,
    start_libvirtd,
    wait_for,
    wait_tuned,
)

pytestmark = [pytest.mark.system, pytest.mark.reliability]

HELPERS = Path(__file__).resolve().parent.parent / "helpers"


def _tuned(g) -> bool:
    """vCPU 1 SCHED_FIFO 1 on CPU 1 in the kernel."""
    tid = g.vcpu_tids().get(1)
    return tid is not None and is_fifo(tid) and os.sched_getaffinity(tid) == {1}


def _status_uuids(d) -> set[str]:
    return {x["uuid"] for x in d.status().get("domains", [])}


def _destroy(conn, guests) -> None:
    """Destroy guests in parallel (libvirt's destroy waits for QEMU to go).
    ``conn`` is a callable returning a live connection."""
    def one(g):
        for _ in range(3):
            try:
                conn().lookupByUUIDString(g.uuid_str).destroy()
                return
            except libvirt.libvirtError as err:
                if err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    return
                time.sleep(1)  # libvirtd restarted by someone: ask again
        raise AssertionError(f"cannot destroy {g.name}")

    with ThreadPoolExecutor(max_workers=max(1, len(guests))) as ex:
        list(ex.map(one, guests))


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _series_for(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if f'domain="{name}"' in line]


def test_libvirtd_sigkilled_and_restarted_while_guests_start_and_stop(
        rel_daemon, guest_factory, libvirtd_guard, _conn_holder, libvirtd):
    restarts = scale(20, 3)
    d = rel_daemon(resync=0.5)
    running = [create_guest(guest_factory, wait_vcpus=False)]
    gone: list = []
    reconnect_s, restart_s, lag_s = [], [], []
    for i in range(restarts):
        before = d.status()["daemon"]["libvirt"]["reconnects"]
        # A guest starts right before libvirtd dies: the daemon may be in the
        # middle of reconciling it when the connection drops.
        running.append(create_guest(guest_factory, wait_vcpus=False))
        victim = None
        if i % 2 == 1 and len(running) > 2:
            victim = running.pop(0)  # dies while libvirtd is down
            victim_pid = victim.pid
        kill_libvirtd()
        if victim is not None:
            os.kill(victim_pid, signal.SIGKILL)  # a QEMU this test started, by PID
            gone.append(victim)
        wait_for(lambda: d.status()["daemon"]["libvirt"]["connected"] is False, 20, "daemon notices")
        restart_s.append(start_libvirtd())
        answered = time.monotonic()
        st = wait_for(lambda: (s := d.status()["daemon"]["libvirt"])["connected"]
                      and s["reconnects"] > before and s, 60, f"reconnect #{i + 1}", interval=0.02)
        lag_s.append(time.monotonic() - answered)
        reconnect_s.append(st["last_reconnect_s"])
        assert d.proc.poll() is None, d.log_text()[-5000:]
        if i % 2 == 0 and len(running) > 2:
            g = running.pop(0)
            _destroy(lambda: _live(_conn_holder, libvirtd), [g])
            gone.append(g)
    for g in running:
        wait_tuned(d, g)
    mine_running = {g.uuid_str for g in running}
    mine_gone = {g.uuid_str for g in gone}
    wait_for(lambda: mine_running <= (u := _status_uuids(d)) and not (u & mine_gone), 30,
             "status: every running guest, no gone guest")
    assert d.proc.poll() is None
    st = d.status()["daemon"]["libvirt"]
    assert st["reconnects"] >= restarts
    problems = log_problems(d.log_text())
    assert not problems, problems
    report("libvirtd kill/restart", restarts=restarts, daemon_reconnects=st["reconnects"],
           last_reconnect_s=f"min {min(reconnect_s):.2f} median {sorted(reconnect_s)[len(reconnect_s) // 2]:.2f} "
                            f"max {max(reconnect_s):.2f}",
           libvirtd_restart_s=f"max {max(restart_s):.2f}",
           reconnect_after_libvirtd_answered_s=f"median {sorted(lag_s)[len(lag_s) // 2]:.2f} max {max(lag_s):.2f}",
           guests_running_at_end=len(running), guests_gone=len(gone))


def test_start_stop_churn_leaves_no_state_and_no_leak(rel_daemon, guest_factory, _conn_holder, libvirtd):
    cycles = scale(200, 20)
    width = 3
    d = rel_daemon(resync=0.5, metrics=True)
    pid, port = d.proc.pid, d.metrics_port
    conn = lambda: _live(_conn_holder, libvirtd)

    def round_(until_tuned: bool) -> list:
        gs = [create_guest(guest_factory, wait_vcpus=False) for _ in range(width)]
        if until_tuned:
            for g in gs:
                wait_tuned(d, g)
        _scrape(port)  # scrapes race with the churn too
        _destroy(conn, gs)
        return gs

    round_(True)  # warm-up: connections, threads and caches exist before measuring
    time.sleep(1.5)
    fds0, rss0 = fd_count(pid), rss_kib(pid)
    stopped, done, r = [], 0, 0
    t0 = time.monotonic()
    while done < cycles:
        # Odd rounds stop the guests at once: threads vanish while the
        # daemon is still reconciling them.
        stopped += round_(until_tuned=r % 2 == 0)
        done += width
        r += 1
    took = time.monotonic() - t0
    names = {g.name for g in stopped}
    uuids = {g.uuid_str for g in stopped}
    wait_for(lambda: not (_status_uuids(d) & uuids), 30, "no status entry for a stopped guest")
    def clean_scrape() -> str | None:
        text = _scrape(port)
        return None if any(_series_for(text, n) for n in names) else text

    text = wait_for(clean_scrape, 30, "no metric series for a stopped guest")
    assert "rtagent_" in text
    time.sleep(2.0)  # a few resyncs with nothing running of ours
    fds1, rss1 = fd_count(pid), rss_kib(pid)
    assert d.proc.poll() is None
    problems = log_problems(d.log_text())
    assert not problems, problems
    report("start/stop churn", cycles=done, rounds=r, width=width, seconds=round(took, 1),
           fds_before=fds0, fds_after=fds1, rss_kib_before=rss0, rss_kib_after=rss1,
           rss_growth_kib=rss1 - rss0)
    assert fds1 <= fds0 + 2, f"file descriptors {fds0} -> {fds1}"
    # Python's allocator keeps arenas; a real leak grows with the cycle count.
    assert rss1 - rss0 <= 8192 + 40 * done, f"RSS {rss0} KiB -> {rss1} KiB after {done} cycles"


def test_qemu_sigkilled_under_the_daemon_is_dropped_cleanly(rel_daemon, guest_factory):
    d = rel_daemon(resync=0.5, metrics=True)
    g = create_guest(guest_factory)
    wait_tuned(d, g)
    wait_for(lambda: d.guest(g.name), 10, "status entry")
    assert _series_for(_scrape(d.metrics_port), g.name)
    os.kill(g.pid, signal.SIGKILL)  # the QEMU of a guest this test started
    t0 = time.monotonic()
    wait_for(lambda: d.guest(g.name) is None, 15, "status entry dropped")
    dropped = time.monotonic() - t0
    wait_for(lambda: not _series_for(_scrape(d.metrics_port), g.name), 10, "metric series gone")
    assert d.proc.poll() is None
    problems = log_problems(d.log_text())
    assert not problems, problems
    report("QEMU SIGKILL", state_dropped_after_s=round(dropped, 2))


def test_cn_proc_overflow_from_a_fork_storm_is_recovered_by_resync(rel_daemon, guest_factory):
    """A fork storm on the housekeeping CPU (where the daemon runs) floods the
    proc connector.  The resync interval is long (60 s), so a thread born
    during the storm is tuned only by its own event or by the resync an
    overflow triggers: either way within seconds, never by the timer."""
    d = rel_daemon(resync=60.0)
    assert d.status()["daemon"]["proc_connector"] is True
    g = create_guest(guest_factory, iothreads=1, cputune=pinned_cputune(
        {0: "0", 1: "1"}, extra="<iothreadpin iothread='1' cpuset='0'/>"))
    wait_tuned(d, g)
    before = d.status()["daemon"]
    tasks = scale(60000, 20000)
    storm = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(HELPERS / "fork_storm.py"),
                              "--tasks", str(tasks), "--seconds", "20"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        existing = set(g.thread_names())
        subprocess.run(["virsh", "-q", "iothreadadd", g.name, "7", "--live"], check=True, timeout=60)
        # Drift during the storm as well: policy of the realtime vCPU.
        subprocess.run(["chrt", "-o", "-p", "0", str(g.vcpu_tids()[1])], check=True)
        out, _ = storm.communicate(timeout=90)
    finally:
        if storm.poll() is None:
            storm.kill()  # our own child, by PID
            storm.wait()
    result = json.loads(out.strip().splitlines()[-1])
    new = wait_for(lambda: [t for t, n in g.thread_names().items() if t not in existing and n == "IO iothread7"],
                   10, "the new iothread")[0]
    t0 = time.monotonic()
    wait_for(lambda: os.sched_getaffinity(new) == {0} and _tuned(g), 15, "new thread pinned, vCPU FIFO again")
    after = d.status()["daemon"]
    dropped = after["events_dropped"].get("proc", 0) - before["events_dropped"].get("proc", 0)
    assert d.proc.poll() is None
    problems = log_problems(d.log_text())
    assert not problems, problems
    if dropped:
        # Each overflow queued a resync (the 60 s timer did not fire).
        assert after["resyncs"] > before["resyncs"], (before, after)
        outcome = f"overflowed {dropped} time(s), resyncs {before['resyncs']} -> {after['resyncs']}"
    else:
        outcome = "the kernel did not overflow the proc connector this time (no ENOBUFS); events kept up"
    report("cn_proc fork storm", tasks=result["tasks"], storm_s=result["seconds"], outcome=outcome,
           recovered_within_s=round(time.monotonic() - t0, 2))


def test_daemon_sigkilled_and_restarted_picks_up_guests_and_corrects_drift(rel_daemon, guest_factory):
    d = rel_daemon(resync=0.5)
    g1 = create_guest(guest_factory)
    wait_tuned(d, g1)
    d.proc.kill()  # the daemon this test started, by PID
    d.proc.wait()
    # While it is down: drift on a tuned guest, and a guest it never saw.
    tid = g1.vcpu_tids()[1]
    subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True)
    g2 = create_guest(guest_factory)
    time.sleep(0.5)
    assert not is_fifo(tid) and not _tuned(g2)
    t0 = time.monotonic()
    d2 = rel_daemon.restart(d)
    wait_tuned(d2, g1)
    wait_tuned(d2, g2)
    took = time.monotonic() - t0
    assert {g1.uuid_str, g2.uuid_str} <= _status_uuids(d2)
    problems = log_problems(d2.log_text())
    assert not problems, problems
    report("daemon SIGKILL/restart", restart_to_all_tuned_s=round(took, 2))
