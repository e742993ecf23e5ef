"""The daemon's pure parts with an injected clock: the retry schedule, drift
accounting, the single-instance lock (real files, real flock) and the
libvirt call worker's timeout (a real thread blocked on an event)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from rtagent.daemon import drift
from rtagent.daemon.lock import AlreadyRunning, InstanceLock
from rtagent.daemon.retry import RetrySchedule
from rtagent.errors import LibvirtUnresponsive
from rtagent.libvirt_host import CallWorker
from rtagent.model import RealtimeSpec
from rtagent.state import DaemonState, GuestState
from rtagent.tuning.guest.apply import Result
from rtagent.tuning.guest.engine import DomainReport
from rtagent.tuning.guest.observe import Observed, ProcessMemory, ThreadInfo
from rtagent.tuning.guest.plan import SetAffinity, SetScheduler, ThreadPlan, Want

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- retry schedule -----------------------------------------------------------


def test_retry_backs_off_doubling_up_to_the_cap():
    clock = Clock()
    r = RetrySchedule(cap_s=0.3, clock=clock)
    assert r.schedule("a", 0) == pytest.approx(100.05)
    assert r.next_deadline() == pytest.approx(100.05)
    clock.t = 100.04
    assert r.due() == []
    clock.t = 100.05
    (d,) = r.due()
    assert (d.uuid, d.attempts) == ("a", 1) and "a" not in r
    assert r.schedule("a", 1) == pytest.approx(100.15)  # 100 ms
    r.take("a")
    assert r.schedule("a", 3) == pytest.approx(100.35)  # 400 ms capped at 300 ms


def test_retry_earlier_deadline_wins_and_take_reports_attempts():
    clock = Clock()
    r = RetrySchedule(cap_s=1.0, clock=clock)
    r.schedule("a", 3)  # 400 ms
    assert r.schedule("a", 0) == pytest.approx(100.05)  # a thread event: sooner wins
    assert r.schedule("a", 4) == pytest.approx(100.05)  # later does not replace it
    assert r.take("a") == 1 and r.take("a") == 0
    assert r.next_deadline() is None


def test_retry_settle_looks_stop_but_pending_and_refused_continue():
    clock = Clock()
    r = RetrySchedule(cap_s=1.0, clock=clock, settle_attempts=2)
    assert r.after_reconcile("a", 1, pending=False, refused=False, settling=True)
    r.discard("a")
    assert not r.after_reconcile("a", 2, pending=False, refused=False, settling=True)
    assert "a" not in r
    assert r.after_reconcile("a", 9, pending=True, refused=False, settling=True)
    r.discard("a")
    assert r.after_reconcile("a", 9, pending=False, refused=True, settling=False)
    assert r.next_deadline() == pytest.approx(101.0)  # capped at the resync interval
    assert not r.after_reconcile("b", 0, pending=False, refused=False, settling=False)


# -- drift accounting ---------------------------------------------------------


def _thread(tid: int, *, policy: str = "fifo", prio: int = 1, cpus=frozenset({1}), role="vcpu", vcpu=1,
            delay: int = 0) -> ThreadInfo:
    return ThreadInfo(tid=tid, name=f"CPU {vcpu}/KVM" if role == "vcpu" else "qemu", role=role, vcpu=vcpu,
                      kind=role, policy=policy, priority=prio, cpus=cpus, cgroup_cpu=None, run_time_ns=0,
                      run_delay_ns=delay, timeslices=0, voluntary_ctxt_switches=0, nonvoluntary_ctxt_switches=0,
                      delayacct_blkio_ticks=0)


def _report(threads: list[ThreadInfo], wants: list[Want], changes: list[Result] = ()) -> DomainReport:
    plans = [ThreadPlan(thread=t, want=w, check="vcpu" if t.role == "vcpu" else "emulator")
             for t, w in zip(threads, wants, strict=True)]
    obs = Observed(pid=10, threads=tuple(threads), kthreads=(), memory=ProcessMemory())
    return DomainReport(name="g", uuid="u", spec=RealtimeSpec(domain="g", realtime=True), pid=10,
                        observed=obs, threads=plans, changes=list(changes))


FIFO1 = Want(policy="fifo", priority=1, cpus=frozenset({1}))
EMU = Want(policy="other", cpus=frozenset({0}))


def _drifted():
    """vCPU demoted by chrt, emulator thread moved by taskset: both fixed."""
    before = _report([_thread(11, policy="other", prio=0), _thread(12, policy="other", prio=0, role="emulator",
                                                                    vcpu=None, cpus=frozenset({0, 1}))],
                     [FIFO1, EMU])
    changes = [Result(SetScheduler(tid=11, policy="fifo", priority=1), "changed"),
               Result(SetAffinity(tid=12, cpus=frozenset({0})), "changed")]
    after = _report([_thread(11, delay=5_000), _thread(12, policy="other", prio=0, role="emulator", vcpu=None,
                                                       cpus=frozenset({0}))], [FIFO1, EMU], changes)
    return before, after


def test_changes_after_the_first_tuning_are_drift_by_kind():
    before, after = _drifted()
    out = drift.classify(before, after, tuned_before=True, intent_changed=False)
    assert out.drift == {"vcpu_policy": 1, "emulator_affinity": 1}
    assert not out.intent and not out.failures and out.realtime_tuned and out.corrected


def test_first_tuning_is_not_drift_and_intent_changes_are_counted_apart():
    before, after = _drifted()
    first = drift.classify(before, after, tuned_before=False, intent_changed=False)
    assert not first.drift and not first.intent and first.realtime_tuned
    edit = drift.classify(before, after, tuned_before=True, intent_changed=True)
    assert not edit.drift and edit.intent == {"vcpu_policy": 1, "emulator_affinity": 1}


def test_failures_counted_and_an_untuned_vcpu_is_not_realtime_tuned():
    before = _report([_thread(11, policy="other", prio=0)], [FIFO1])
    after = _report([_thread(11, policy="other", prio=0)], [FIFO1],
                    [Result(SetScheduler(tid=11, policy="fifo", priority=1), "failed", "EPERM")])
    out = drift.classify(before, after, tuned_before=True, intent_changed=False)
    assert out.failures == {"vcpu_policy": 1} and not out.drift and not out.realtime_tuned


def test_record_with_an_injected_clock():
    g, d = GuestState(uuid="u", name="g"), DaemonState()
    before, after = _drifted()
    first = drift.classify(before, after, tuned_before=False, intent_changed=False)
    drift.record(g, d, after, first, drift.Times(detected=10.0, done=10.25, wall=5000.0), started=True)
    assert g.tuned_at == 5000.0 and g.event_to_tuned_s == 0.25 and d.event_to_tuned.count == 1
    assert not g.corrections and g.vcpus[1].run_delay_ns == 5_000 and g.vcpus[1].run_delay_rate == 0.0

    again = _drifted()[1]  # run delay grows by 2 µs in 2 s
    grown = _report([_thread(11, delay=7_000), again.observed.threads[1]], [FIFO1, EMU], again.changes)
    out = drift.classify(before, grown, tuned_before=True, intent_changed=False)
    drift.record(g, d, grown, out, drift.Times(detected=20.0, done=20.5, wall=5002.0), started=False)
    assert g.corrections == {"vcpu_policy": 1, "emulator_affinity": 1} and g.last_correction_at == 5002.0
    assert g.correction_latency.count == 1 and g.correction_latency.total == pytest.approx(0.5)
    assert g.vcpus[1].run_delay_rate == pytest.approx(1000.0)  # ns per s
    assert g.tuned_at == 5000.0 and d.event_to_tuned.count == 1  # first tuning only once

    edit = drift.classify(before, grown, tuned_before=True, intent_changed=True)
    drift.record(g, d, grown, edit, drift.Times(detected=30.0, done=30.1, wall=5010.0), started=False)
    assert g.intent_changes == {"vcpu_policy": 1, "emulator_affinity": 1}
    assert sum(g.corrections.values()) == 2 and g.last_correction_at == 5002.0


# -- single-instance lock -----------------------------------------------------


def test_second_lock_refused_naming_the_holder_pid(tmp_path):
    path = str(tmp_path / "run" / "rtagent.lock")
    first = InstanceLock(path)
    first.acquire()
    assert open(path).read().strip() == str(os.getpid())
    with pytest.raises(AlreadyRunning) as exc:
        InstanceLock(path).acquire()
    assert f"PID {os.getpid()}" in str(exc.value) and path in str(exc.value)
    first.release()
    again = InstanceLock(path)
    again.acquire()  # released: free again
    again.release()


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path):
    path = str(tmp_path / "rtagent.lock")
    code = ("import sys, time; from rtagent.daemon.lock import InstanceLock; "
            f"InstanceLock({path!r}).acquire(); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AlreadyRunning, match=f"PID {holder.pid} holds"):
            InstanceLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = InstanceLock(path)
    lock.acquire()  # the kernel dropped the dead holder's lock
    lock.release()


# -- libvirt call worker ------------------------------------------------------


def test_call_worker_times_out_then_fails_fast_until_the_call_returns():
    gate = threading.Event()
    ran: list[str] = []
    clock = Clock()
    w = CallWorker(timeout_s=0.05, clock=clock)
    assert w.call("quick", lambda: 42) == 42 and w.unresponsive_s() is None
    with pytest.raises(LibvirtUnresponsive, match="did not answer within"):
        w.call("hung", gate.wait)
    clock.t += 7
    assert w.unresponsive_s() == pytest.approx(7)
    with pytest.raises(LibvirtUnresponsive, match="not attempted, libvirt has not answered for 7.0s"):
        w.call("next", lambda: ran.append("next"))
    gate.set()
    done = threading.Event()
    w._jobs.put((_Sentinel(done), lambda: None))  # queued behind the hung call: runs once it returned
    done.wait(10)
    assert w.unresponsive_s() is None
    assert w.call("after", lambda: "ok") == "ok" and ran == []


class _Sentinel:
    """A job handle that only signals it ran (the worker's queue order)."""

    def __init__(self, done: threading.Event):
        self.done = done

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, _value) -> None:
        self.done.set()

    def set_exception(self, _err) -> None:
        self.done.set()


def test_status_says_how_long_libvirt_has_been_unresponsive():
    from rtagent.commands.status import render

    base = {"host": {"realtime_cpus": "1", "housekeeping_cpus": "0"}}
    hung = render({**base, "daemon": {"libvirt": {"connected": True, "responsive": False,
                                                  "unresponsive_for_s": 4.2, "uri": "qemu:///system"}}}, [],
                  detail=False)
    assert "libvirt UNRESPONSIVE for 4s" in hung[0]
    ok = render({**base, "daemon": {"libvirt": {"connected": True, "responsive": True,
                                                "unresponsive_for_s": None}}}, [], detail=False)
    assert "libvirt connected" in ok[0]


def test_building_the_daemon_starts_no_thread(tmp_path):
    """Capabilities are per thread: privileges are dropped in start() before
    any thread exists, so constructing the daemon must not start one (the
    libvirt worker starts at the first call)."""
    from rtagent.config import parse_config
    from rtagent.daemon import Daemon

    before = threading.active_count()
    cfg = parse_config({"host": {"realtime_cpus": "1"} if os.cpu_count() and os.cpu_count() > 1 else {},
                        "daemon": {"lock_file": str(tmp_path / "l")}})
    Daemon(cfg, None)
    assert threading.active_count() == before


def test_an_unanswered_probe_marks_libvirt_unresponsive_without_blocking():
    gate = threading.Event()
    clock = Clock()
    w = CallWorker(timeout_s=1.0, clock=clock)
    w.probe(gate.wait, every_s=5.0)  # returns at once
    assert w.unresponsive_s() is None  # not yet past the timeout
    clock.t += 1.5
    assert w.unresponsive_s() == pytest.approx(1.5)
    with pytest.raises(LibvirtUnresponsive):
        w.call("queued behind the hung probe", lambda: None, timeout_s=0.05)
    w.probe(lambda: None, every_s=5.0)  # one probe at a time: nothing more queued
    gate.set()
    for _ in range(1000):  # the worker drains the probe and the timed-out call
        if w.unresponsive_s() is None:
            break
        threading.Event().wait(0.01)
    assert w.unresponsive_s() is None and w.call("after", lambda: "ok") == "ok"


def test_an_idle_daemon_resyncs_only_as_often_as_its_probe_and_full_check_need(tmp_path):
    """With no guest managed and no host partition to enforce, the timed
    resync waits for the liveness probe's cadence (the call timeout) or the
    due full check; a tracked guest or a host enforcer brings the resync
    interval back at once."""
    from rtagent.config import parse_config
    from rtagent.daemon import Daemon
    from rtagent.daemon.cadence import resync_due

    cfg = parse_config({"host": {"realtime_cpus": "1"}, "daemon": {"lock_file": str(tmp_path / "l"),
                                                                  "resync_interval_s": 1.0},
                        "libvirt": {"call_timeout_s": 5.0},
                        "host_tuning": {"kthreads": False, "kthread_priorities": False, "irqs": False,
                                        "workqueues": False}})
    d = Daemon(cfg, None)
    d._resynced_at, d.guests.next_full = 100.0, 130.0
    assert d.hostside.enforcer is None and resync_due(d) == 105.0
    d.guests.next_full = 102.5
    assert resync_due(d) == 102.5  # the full check is due before the probe
    d.guests.next_full = 100.2
    assert resync_due(d) == 101.0  # never more often than the interval
    d.guests.tracked["uuid-a"] = 4242
    d.guests.next_full = 130.0
    assert resync_due(d) == 101.0
    d.guests.tracked.clear()
    d.guests.tuner.ledger.trim_failed = True  # a refused trim of /machine is retried at the next resync
    assert resync_due(d) == 101.0
    d.guests.tuner.ledger.trim_failed = False
    d.hostside.enforcer = object()
    assert resync_due(d) == 101.0
    # With the drift watch healthy an idle daemon probes at the watched
    # interval (10 s by default), as a watched daemon with guests does.
    d.hostside.enforcer = None

    class Healthy:
        healthy = True

    d.services.driftwatch = Healthy()
    assert resync_due(d) == 100.0 + cfg.daemon.watched_resync_interval_s


def test_libvirt_events_of_guests_the_selector_never_manages_do_not_wake_the_loop(tmp_path):
    """Dropped on libvirt's event thread: nothing is queued for the loop."""
    from rtagent.config import parse_config
    from rtagent.daemon import Daemon
    from rtagent.libvirt_host import DomainEvent, EventKind

    cfg = parse_config({"host": {"realtime_cpus": "1"}, "daemon": {"lock_file": str(tmp_path / "l"),
                                                                  "guest_names": ["rth-*"]}})
    d = Daemon(cfg, None)
    d._libvirt_event(DomainEvent(uuid="u1", name="someone-else-1", event=EventKind.STARTED))
    assert d.queue.empty()
    d._libvirt_event(DomainEvent(uuid="u2", name="rth-1", event=EventKind.STARTED))
    item = d.queue.get_nowait()
    assert item.payload.name == "rth-1" and d.queue.empty()


def test_without_libvirt_the_known_guests_get_the_steady_check_between_full_checks(tmp_path):
    """libvirt lost: a resync between full checks is the cheap steady check
    (as when connected), and only a due full check reconciles every known
    guest in full — which also sets when the next one is due."""
    from rtagent.config import parse_config
    from rtagent.daemon import Daemon

    cfg = parse_config({"host": {"realtime_cpus": "1"},
                        "daemon": {"lock_file": str(tmp_path / "l"), "full_check_interval_s": 30.0},
                        "host_tuning": {"kthreads": False, "kthread_priorities": False, "irqs": False,
                                        "workqueues": False}})
    d = Daemon(cfg, None)
    assert not d.link.up
    reconciled: list[str] = []
    d.guests.reconcile = lambda uuid, *a, **k: reconciled.append(uuid)
    d.guests.tracked["uuid-a"] = 4242
    d.guests.steady.unchanged = lambda uuid: True  # its threads answered as recorded
    d.resync(full=False)
    assert reconciled == []
    d.guests.steady.unchanged = lambda uuid: False  # one drifted
    d.resync(full=False)
    assert reconciled == ["uuid-a"]
    d.guests._clock = lambda: 1000.0
    d.guests.steady.unchanged = lambda uuid: True
    d.resync(full=True)
    assert reconciled == ["uuid-a", "uuid-a"] and d.guests.next_full == 1030.0
