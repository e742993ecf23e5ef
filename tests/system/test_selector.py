"""The guest selector on a real daemon: a guest outside ``[daemon]
guest_names`` is neither tuned nor reported, even though it asks for
realtime; the selected one is tuned as usual."""

from __future__ import annotations

import os
import pytest

from tests.conftest import unique_name
from tests.system.conftest import wait_for

pytestmark = pytest.mark.system


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid)


def test_daemon_manages_only_selected_guests(daemon_factory, guest_factory):
    prefix = unique_name("sel")
    d2 = daemon_factory(resync=0.3, daemon=f'guest_names = ["{prefix}-in-*"]\n'
                                           f'guest_names_exclude = ["{prefix}-in-x*"]')

    inside = guest_factory(name=f"{prefix}-in-a")
    excluded = guest_factory(name=f"{prefix}-in-xb")
    outside = guest_factory(name=f"{prefix}-out-c")
    tid_in = inside.vcpu_tids()[1]
    wait_for(lambda: _policy(tid_in) == os.SCHED_FIFO, 20, "selected guest's vCPU 1 FIFO")
    # Several resyncs later the others are still untouched and unreported.
    resyncs = d2.status()["daemon"]["resyncs"]
    wait_for(lambda: d2.status()["daemon"]["resyncs"] >= resyncs + 3, 20, "three more resyncs")
    for g in (excluded, outside):
        assert _policy(g.vcpu_tids()[1]) == os.SCHED_OTHER, g.name
        assert d2.guest(g.name) is None, g.name
    assert d2.guest(inside.name) is not None
    names = {x["name"] for x in d2.status()["domains"]}
    assert names == {inside.name}, names
