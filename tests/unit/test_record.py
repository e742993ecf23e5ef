"""The record of guests rtagent made realtime (rtagent/daemon/record.py):
an entry only for this very QEMU process, written before the first thread
goes realtime, dropped when the withdrawal is done; a bad file inherits
nothing."""

from __future__ import annotations

import json

import pytest

from rtagent.daemon.record import RealtimeRecord, record_path
from rtagent.model import RealtimeSpec
from rtagent.tuning.guest.observe import Observed, ProcessMemory, ThreadInfo
from rtagent.tuning.guest.report import DomainReport

pytestmark = pytest.mark.unit


def _thread(tid: int, policy: str) -> ThreadInfo:
    return ThreadInfo(tid=tid, name="CPU 1/KVM", role="vcpu", vcpu=1, kind="vcpu", policy=policy,
                      priority=1 if policy == "fifo" else 0, cpus=frozenset({1}), cgroup_cpu="/m/vcpu1",
                      run_time_ns=None, run_delay_ns=None, timeslices=None, voluntary_ctxt_switches=0,
                      nonvoluntary_ctxt_switches=0, delayacct_blkio_ticks=0)


def _report(*, realtime: bool, withdrawn: bool = False, policy: str = "fifo", pid: int = 10) -> DomainReport:
    obs = Observed(pid=pid, threads=(_thread(11, policy),), kthreads=(), memory=ProcessMemory(0, 0, 0, None))
    return DomainReport(name="g", uuid="u", spec=RealtimeSpec(domain="g", realtime=realtime), pid=pid,
                        observed=obs, withdrawn=withdrawn, realtime_cgroups=frozenset({"/m/vcpu1"}))


def test_path_is_beside_the_instance_lock():
    assert record_path("/run/rtagent/rtagent.lock") == "/run/rtagent/rtagent.realtime.json"


def test_an_entry_names_the_process_and_is_dropped_once_the_withdrawal_is_done(tmp_path):
    path = str(tmp_path / "r.json")
    starts = {10: 500}
    rec = RealtimeRecord(path, starts.get)
    rec.note(_report(realtime=True))
    saved = json.loads((tmp_path / "r.json").read_text())["entries"]["u"]
    assert saved == {"name": "g", "pid": 10, "started": 500, "cgroups": ["/m/vcpu1"]}

    again = RealtimeRecord(path, starts.get)  # the next daemon
    assert again.matches("u", 10) is not None
    starts[10] = 501  # PID 10 is now another process
    assert again.matches("u", 10) is None and again.matches("u", 11) is None
    starts[10] = 500
    again.note(_report(realtime=False, withdrawn=True, policy="fifo"))  # still FIFO: kept
    assert "u" in again.entries
    again.note(_report(realtime=False, withdrawn=True, policy="other"))  # demoted: done
    assert again.entries == {} and not (tmp_path / "r.json").exists()


def test_a_malformed_record_inherits_nothing(tmp_path):
    (tmp_path / "r.json").write_text("{not json")
    rec = RealtimeRecord(str(tmp_path / "r.json"), lambda _pid: 1)
    assert rec.entries == {}
    rec.note(_report(realtime=True))
    assert json.loads((tmp_path / "r.json").read_text())["entries"]["u"]["pid"] == 10


def test_the_start_windows_entry_is_kept_and_completed_by_the_reconcile(tmp_path):
    """note_start (before the start window's first FIFO write) and the
    reconcile's note are one entry for one QEMU process; another process
    under the same PID (a later start time) starts over."""
    path = str(tmp_path / "r.json")
    starts = {10: 500}
    rec = RealtimeRecord(path, starts.get)
    rec.note_start("u", "g", 10, {"/m/vcpu0"})
    assert RealtimeRecord(path, starts.get).matches("u", 10).cgroups == {"/m/vcpu0"}  # on disk already
    rec.note(_report(realtime=True))
    assert RealtimeRecord(path, starts.get).entries["u"].cgroups == {"/m/vcpu0", "/m/vcpu1"}
    starts[10] = 900
    rec.note_start("u", "g", 10, {"/m/vcpu2"})
    assert RealtimeRecord(path, starts.get).entries["u"].cgroups == {"/m/vcpu2"}
    del starts[10]  # gone before it was noted: nothing written for it
    rec.note_start("v", "h", 10, {"/m/vcpu3"})
    assert "v" not in RealtimeRecord(path, starts.get).entries


def test_a_noted_guest_never_made_realtime_is_dropped_by_its_withdrawal(tmp_path):
    """A daemon stopped between the start window's note and its FIFO write:
    the successor's withdrawal finds no realtime thread, so nothing is undone
    and the entry goes."""
    path = str(tmp_path / "r.json")
    RealtimeRecord(path, {10: 500}.get).note_start("u", "g", 10, {"/m/vcpu1"})
    nxt = RealtimeRecord(path, {10: 500}.get)
    assert nxt.matches("u", 10) is not None
    nxt.note(_report(realtime=False, withdrawn=True, policy="other"))
    assert nxt.entries == {} and not (tmp_path / "r.json").exists()
