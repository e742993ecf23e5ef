"""The status answer encoded one guest at a time (rtagent/statusjson.py):
byte for byte what ``json.dumps`` of the whole document gave, and without
every guest's dict alive at once."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from rtagent.monitor.hostchecks import HostCheck
from rtagent.state import StateStore
from rtagent.status import _StatusHandler
from rtagent.statusjson import encode_answer
from rtagent.vocab import Severity
from tests.unit.test_metrics import make_report, populated_store

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch):
    """``uptime_s`` is computed at conversion: the same clock for both answers."""
    monkeypatch.setattr("time.time", lambda: 1_700_000_100.0)


def _reference(store: StateStore, extra: dict | None = None) -> bytes:
    """What the status socket sent before: the whole document, then dumps."""
    return json.dumps({**store.snapshot(), **(extra or {})}).encode() + b"\n"


def test_the_same_bytes_as_the_whole_document():
    store = populated_store()  # failing host checks, a drifted guest, a guest without a report
    assert encode_answer(store) == _reference(store)
    assert json.loads(encode_answer(store))["compliant"] is False


def test_the_same_bytes_with_the_interference_section_after_compliant():
    store = populated_store()
    extra = {"interference": {"running": False, "cpus": []}}
    body = encode_answer(store, extra=lambda: extra)
    assert body == _reference(store, extra)
    assert list(json.loads(body)) == ["host", "daemon", "domains", "compliant", "interference"]


def test_the_same_bytes_for_an_empty_store_and_for_escaped_names():
    store = StateStore()
    assert encode_answer(store) == _reference(store)

    def fill(s: StateStore) -> None:
        s.daemon.host = {"realtime_cpus": "1", "note": 'quote " and \\ backslash'}
        s.daemon.host_checks = (HostCheck("isolcpus", True, "ok", Severity.INFO),)
        g = s.guest("dddddddd-2222-3333-4444-555555555555", "gäst-ü")  # non-ASCII: \\u escapes, as dumps
        g.report = make_report("gäst-ü", g.uuid)
        s.guest("eeeeeeee-2222-3333-4444-555555555555", "a-first")  # sorted by name, as before

    store.update(fill)
    body = encode_answer(store)
    assert body == _reference(store)
    assert body.isascii()
    assert [d["name"] for d in json.loads(body)["domains"]] == ["a-first", "gäst-ü"]
    assert json.loads(body)["compliant"] is True


def test_the_handler_sends_encoded_answers_as_they_are_and_encodes_documents():
    store = populated_store()
    assert _StatusHandler(lambda: encode_answer(store)).answer(b"") == _reference(store)
    assert _StatusHandler(store.snapshot).answer(b"") == _reference(store)


def _many(n: int) -> StateStore:
    store = StateStore()

    def fill(s: StateStore) -> None:
        for i in range(n):
            uuid = f"{i:08x}-2222-3333-4444-555555555555"
            s.guest(uuid, f"g{i:03d}").report = make_report(f"g{i:03d}", uuid, v2_policy="other")

    store.update(fill)
    return store


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_peak_is_one_guest_not_all_of_them():
    """At 100 guests the whole document's dicts outweigh the answer's bytes
    several times over; encoding one guest at a time keeps the peak near
    the bytes (measured here: 1.8 MiB → 0.47 MiB for 170 KB)."""
    store = _many(100)
    body = encode_answer(store)
    assert body == _reference(store)
    whole, streamed = _peak(lambda: _reference(store)), _peak(lambda: encode_answer(store))
    assert streamed < whole / 3, (streamed, whole, len(body))
    assert streamed < 4 * len(body), (streamed, len(body))
