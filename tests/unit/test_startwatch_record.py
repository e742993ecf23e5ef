"""The start window notes a starting guest in the realtime record before its
first scheduler or affinity write (daemon/startwatch.py, daemon/record.py):
a daemon stopped right after the FIFO write, before the STARTED reconcile,
must leave its successor an entry for that QEMU process.  The kernel below
is a recorder (no thread of this machine is touched): each write it gets
reads the record file at that moment."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rtagent.config import Config, DaemonConfig, Partition
from rtagent.daemon import startwatch
from rtagent.daemon.record import RealtimeRecord
from rtagent.daemon.startwatch import StartWatch, _Start
from rtagent.kernel.cgwatch import GuestDir
from rtagent.kernel.tasks import Sched
from rtagent.model import RealtimeSpec, VcpuSpec
from rtagent.state import StateStore
from rtagent.tuning.guest.claims import ClaimBook
from rtagent.tuning.guest.ledger import BudgetLedger
from rtagent.tuning.guest.observe import ThreadInfo

pytestmark = pytest.mark.unit

PID, TID, STARTED = 4000, 4002, 777
GROUP = "/machine/qemu-1-rtw-g.libvirt-qemu"
VGROUP = f"{GROUP}/vcpu1"


class RecordingTasks:
    """The executor's kernel calls; every write notes what the record file
    held when it came (None: no file)."""

    def __init__(self, record: Path):
        self.record = record
        self.writes: list[tuple[str, dict | None]] = []
        self.policy, self.cpus = "other", frozenset({1})

    def _seen(self, what: str) -> None:
        self.writes.append((what, json.loads(self.record.read_text()) if self.record.exists() else None))

    def set_affinity(self, tid: int, cpus) -> None:
        self._seen("affinity")
        self.cpus = frozenset(cpus)

    def affinity(self, tid: int) -> frozenset[int]:
        return self.cpus

    def set_scheduler(self, tid: int, policy, priority: int) -> None:
        self._seen("scheduler")
        self.policy = str(policy)

    def run_time_ns(self, tid: int) -> int:
        return 1000

    def sched(self, tid: int) -> Sched:
        return Sched(self.policy, 1, self.cpus)


def _thread(cpus: frozenset[int]) -> ThreadInfo:
    return ThreadInfo(tid=TID, name="CPU 1/KVM", role="vcpu", vcpu=1, kind="vcpu", policy="other", priority=0,
                      cpus=cpus, cgroup_cpu=VGROUP, run_time_ns=0, run_delay_ns=0, timeslices=0,
                      voluntary_ctxt_switches=0, nonvoluntary_ctxt_switches=0, delayacct_blkio_ticks=0)


def _watch(tmp_path: Path, monkeypatch, thread_cpus: frozenset[int]) -> tuple[StartWatch, RecordingTasks]:
    record_file = tmp_path / "rtagent.realtime.json"
    tasks = RecordingTasks(record_file)
    monkeypatch.setattr(startwatch, "read_thread", lambda *_a, **_k: _thread(thread_cpus))
    config = Config(daemon=DaemonConfig(), partition=Partition(frozenset({0, 1}), frozenset({1}), frozenset({0})))
    sup = SimpleNamespace(config=config, store=StateStore(), claims=ClaimBook(),
                          record=RealtimeRecord(str(record_file), {PID: STARTED}.get),
                          tuner=SimpleNamespace(kernel=SimpleNamespace(tasks=tasks, cgroups=None), ledger=BudgetLedger(None)))
    return StartWatch(sup, wake=lambda: None), tasks


def _start() -> _Start:
    spec = RealtimeSpec(domain="rtw-g", uuid="u-1", realtime=True, source="metadata",
                        vcpus=(VcpuSpec(0, False, "other", 0, frozenset({0})),
                               VcpuSpec(1, True, "fifo", 1, frozenset({1}))))
    rec = _Start(GROUP, GuestDir(1, "rtw-g"), seen_at=0.0, uuid="u-1", name="rtw-g", spec=spec, pid=PID)
    rec.vcpus[1] = startwatch.startwindow.placed(1, TID, 0)
    rec.groups.add(VGROUP)  # its budget, granted when vcpu1 appeared
    return rec


def _entry(seen: dict | None) -> dict | None:
    return None if seen is None else seen["entries"].get("u-1")


def test_the_guest_is_in_the_record_before_its_vcpu_turns_fifo(tmp_path, monkeypatch):
    watch, tasks = _watch(tmp_path, monkeypatch, frozenset({1}))
    watch._try_tune(_start())
    assert [w for w, _ in tasks.writes] == ["scheduler"] and tasks.policy == "fifo"
    assert _entry(tasks.writes[0][1]) == {"name": "rtw-g", "pid": PID, "started": STARTED, "cgroups": [VGROUP]}


def test_an_affinity_write_comes_after_the_record_too(tmp_path, monkeypatch):
    """libvirt's affinity not final yet is left to libvirt; a thread whose
    mask the plan narrows gets the record before the narrowing."""
    watch, tasks = _watch(tmp_path, monkeypatch, frozenset({1}))
    rec = _start()
    monkeypatch.setattr(watch, "_plan_vcpu", lambda r, v: dataclasses.replace(
        StartWatch._plan_vcpu(watch, r, v), thread=_thread(frozenset({0, 1}))))
    watch._try_tune(rec)
    kinds = [w for w, _ in tasks.writes]
    assert kinds[0] == "affinity" and kinds[-1] == "scheduler" and tasks.policy == "fifo"
    assert all(_entry(seen) is not None and _entry(seen)["pid"] == PID for _, seen in tasks.writes)


def test_a_failed_start_drops_the_noted_entry(tmp_path, monkeypatch):
    watch, tasks = _watch(tmp_path, monkeypatch, frozenset({1}))
    rec = _start()
    watch.starts[GROUP] = rec
    watch._try_tune(rec)
    assert "u-1" in watch.sup.record.entries
    watch.sup.tracked = {}
    watch.sup.tuner.forget = lambda _uuid: None
    watch._gone(GROUP)
    assert watch.sup.record.entries == {} and not (tmp_path / "rtagent.realtime.json").exists()
