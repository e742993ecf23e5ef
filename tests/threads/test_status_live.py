"""The status socket as the daemon wires it (``start_endpoints``: the store's
snapshot with the loop's priority around its lock): a status answer whose
conversion is stuck does not hold the state store's lock, and the status
thread takes the loop's priority only for the copy — the conversion runs at
the client threads' nice 10."""

from __future__ import annotations

import os
import threading

import pytest

from rtagent.config import Config, MetricsConfig, StatusConfig
from rtagent.monitor.endpoints import start_endpoints
from rtagent.state import GuestState
from rtagent.status import fetch
from rtagent.tuning.guest.report import DomainReport
from tests.unit.test_metrics import populated_store

pytestmark = pytest.mark.threads


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_stuck_status_conversion_holds_neither_the_lock_nor_the_loops_priority(tmp_path, monkeypatch):
    store = populated_store()
    config = Config(status=StatusConfig(socket=str(tmp_path / "status.sock")), metrics=MetricsConfig(enabled=False))
    inside, release = threading.Event(), threading.Event()
    seen: dict[str, list] = {"copy_nice": [], "convert_nice": [], "convert_locked": []}
    copy, to_json = GuestState.copy, DomainReport.to_json

    def copy_recorded(self):
        seen["copy_nice"].append(_nice())
        return copy(self)

    def stuck(self):
        seen["convert_nice"].append(_nice())
        seen["convert_locked"].append(store._lock.locked())
        inside.set()
        release.wait(30)
        return to_json(self)

    monkeypatch.setattr(GuestState, "copy", copy_recorded)
    monkeypatch.setattr(DomainReport, "to_json", stuck)
    status, metrics = start_endpoints(config, store)
    assert metrics is None
    answers: list[dict] = []
    client = threading.Thread(target=lambda: answers.append(fetch(config.status.socket, timeout=60)), daemon=True)
    try:
        client.start()
        assert inside.wait(10), "the status server never converted a guest"
        written = threading.Event()
        threading.Thread(target=lambda: (store.update(lambda s: setattr(s.daemon, "resyncs", 77)), written.set()),
                         daemon=True).start()
        # A bound against a hang, not a timing assertion.
        assert written.wait(10), "the writer waited for a status conversion"
        assert not store._lock.locked()
    finally:
        release.set()
        client.join(60)
        status.close()
    loop = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert answers and {d["name"] for d in answers[0]["domains"]} >= {"rt1"}
    assert seen["copy_nice"] and set(seen["copy_nice"]) == {loop}  # the copy at the loop's priority
    assert not any(seen["convert_locked"])
    # The conversion at the status thread's own nice 10 (when the process
    # may raise it again; without CAP_SYS_NICE it never left 10).
    assert set(seen["convert_nice"]) == {10}
