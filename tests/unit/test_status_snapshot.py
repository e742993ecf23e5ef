"""The status answer's snapshot: under the state store's lock only a copy
is taken; every guest's conversion to JSON runs after the lock is released
(and after the loop-priority section around the lock), so a slow
conversion never keeps the writer — the enforcement loop — waiting."""

from __future__ import annotations

import json
import threading

import pytest

from rtagent.state import GuestState, StateStore, VcpuCounters
from rtagent.statusjson import encode_answer
from rtagent.tuning.guest.report import DomainReport
from tests.unit.test_metrics import populated_store

pytestmark = pytest.mark.unit


def _reference(store: StateStore) -> list[dict]:
    """Every guest converted under the lock, as the snapshot did before."""
    return store.read(lambda s: [g.to_json() for g in sorted(s.guests.values(), key=lambda g: g.name)])


@pytest.mark.parametrize("answer", [StateStore.snapshot, lambda s: json.loads(encode_answer(s))],
                         ids=["snapshot", "encoded one guest at a time"])
def test_the_conversion_runs_after_the_lock_is_released(monkeypatch, answer):
    store = populated_store()
    expected = json.loads(json.dumps(_reference(store)))
    held: list[bool] = []
    original = DomainReport.to_json

    def watched(self):
        held.append(store._lock.locked())
        return original(self)

    monkeypatch.setattr(DomainReport, "to_json", watched)
    snap = answer(store)
    assert held and not any(held), held
    assert snap["domains"] == expected  # the same answer as converting under the lock


def test_the_section_around_the_lock_holds_only_the_copy(monkeypatch):
    """``around_lock`` (the loop's priority, in the daemon) is entered around
    the copy and left before the conversion runs."""
    store = populated_store()
    inside: list[bool] = []
    state = {"in_section": False, "lock_taken_inside": False}

    class Section:
        def __enter__(self):
            state["in_section"] = True

        def __exit__(self, *exc):
            state["lock_taken_inside"] = not store._lock.locked()  # released again before the section ends
            state["in_section"] = False

    original = DomainReport.to_json

    def watched(self):
        inside.append(state["in_section"])
        return original(self)

    monkeypatch.setattr(DomainReport, "to_json", watched)
    store.snapshot(Section)
    assert inside and not any(inside)
    assert state["lock_taken_inside"]


def test_a_slow_conversion_does_not_keep_the_writer_waiting(monkeypatch):
    store = populated_store()
    inside, release = threading.Event(), threading.Event()
    original = DomainReport.to_json

    def slow(self):
        inside.set()
        release.wait(30)  # a status conversion stuck (a huge guest, a preempted thread)
        return original(self)

    monkeypatch.setattr(DomainReport, "to_json", slow)
    answers: list[dict] = []
    reader = threading.Thread(target=lambda: answers.append(store.snapshot()), daemon=True)
    reader.start()
    written = threading.Event()
    try:
        assert inside.wait(10)
        writer = threading.Thread(target=lambda: (store.update(lambda s: setattr(s.daemon, "resyncs", 99)),
                                                  written.set()), daemon=True)
        writer.start()
        # A bound against a hang, not a timing assertion: with the conversion
        # under the lock the writer would wait here until `release`.
        assert written.wait(10), "the writer waited for the status conversion"
    finally:
        release.set()
        reader.join(30)
    assert answers and answers[0]["domains"]


def test_the_copy_does_not_follow_later_writes():
    store = populated_store()
    uuid = "11111111-2222-3333-4444-555555555555"
    store.update(lambda s: s.guests[uuid].vcpus.update({1: VcpuCounters(run_delay_ns=5, run_time_ns=9)}))
    copied: GuestState = store.read(lambda s: s.guests[uuid].copy())
    before = copied.to_json()

    def write(s: StateStore) -> None:
        g = s.guests[uuid]
        g.corrections["vcpu_policy"] += 5
        g.correction_failures["vcpu_affinity"] += 1
        g.intent_changes["vcpu_policy"] += 1
        g.vcpus.clear()
        g.start_window.clear()
        g.correction_latency.observe(0.1)
        s.daemon.events["libvirt"] += 7
        s.daemon.host["partition_enforcement"] = {"counts": {"changed": 1}}

    daemon = store.read(lambda s: s.daemon.copy())
    daemon_before = (daemon.to_json(), dict(daemon.host))
    store.update(write)
    assert copied.to_json() == before and before["vcpu_stats"] and before["start_window"]
    assert copied.report is store.read(lambda s: s.guests[uuid].report)  # reports are shared, not copied
    assert (daemon.to_json() | {"uptime_s": None}, daemon.host) == (daemon_before[0] | {"uptime_s": None},
                                                                     daemon_before[1])
