"""Stopping within a bound (rtagent/daemon/shutdown.py) and the libvirt
worker's part in it: waits end when a stop is asked, a close behind a stuck
call is handed to the worker instead of running libvirt's destructor on the
caller's thread."""

from __future__ import annotations

import threading

import pytest

from rtagent.daemon import shutdown
from rtagent.errors import LibvirtUnresponsive
from rtagent.libvirt_host import CallWorker, LibvirtHost

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_every_step_runs_even_after_one_fails_and_the_budget_is_shared():
    clock = Clock()
    ran: list[tuple[str, float]] = []

    def step(name: str, cost: float, fail: bool = False):
        def run(timeout: float) -> None:
            ran.append((name, timeout))
            clock.t += cost
            if fail:
                raise RuntimeError(name)
        return run

    bad = shutdown.teardown([shutdown.Step("a", step("a", 3.0, fail=True), 4.0),
                             shutdown.Step("b", step("b", 5.0), 4.0),  # overran its cap
                             shutdown.Step("c", step("c", 0.0), 4.0),  # budget spent: still tried
                             ], budget_s=6.0, clock=clock)
    assert [n for n, _ in ran] == ["a", "b", "c"]
    assert ran[0][1] == 4.0 and ran[1][1] == 3.0 and ran[2][1] == 0.1
    assert bad == ["a", "b"]


def test_a_stop_ends_a_wait_for_a_hung_call_and_refuses_new_ones():
    gate = threading.Event()
    w = CallWorker(timeout_s=60.0)
    got: list[BaseException] = []

    def caller() -> None:
        try:
            w.call("hung", gate.wait)
        except LibvirtUnresponsive as err:
            got.append(err)

    t = threading.Thread(target=caller)
    t.start()
    w.abort_waits()
    t.join(timeout=10)
    try:
        assert not t.is_alive() and "stopping" in str(got[0])
        with pytest.raises(LibvirtUnresponsive, match="not attempted"):
            w.call("next", lambda: None)
    finally:
        gate.set()
    for _ in range(100):
        if w.unresponsive_s() is None:
            break
        threading.Event().wait(0.05)
    # The close of the connection is still waited for, once the hung call returned.
    assert w.call("close", lambda: "closed", timeout_s=5.0, stopping=True) == "closed"


class _Conn:
    """Stands for a virConnect: records on which thread it is closed."""

    def __init__(self) -> None:
        self.closed_on: str | None = None

    def unregisterCloseCallback(self) -> None:
        pass

    def close(self) -> None:
        self.closed_on = threading.current_thread().name


def test_close_behind_a_stuck_call_is_left_to_the_worker():
    gate = threading.Event()
    host = LibvirtHost("test:///default", call_timeout_s=0.05)
    with pytest.raises(LibvirtUnresponsive):
        host.call("hung", gate.wait)
    conn = host._conn = _Conn()
    host.close()  # returns at once; nothing closed on this thread
    assert conn.closed_on is None and host._conn is None
    gate.set()
    for _ in range(100):
        if conn.closed_on is not None:
            break
        threading.Event().wait(0.05)
    assert conn.closed_on == "rtagent-libvirt"


def test_the_units_stop_timeout_is_above_the_daemons_own_bound():
    """systemd SIGKILLs after TimeoutStopSec: that must only ever hit a
    daemon whose own bound (faulthandler's exit) could not run."""
    import re
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[2] / "systemd" / "rtagent.service").read_text()
    stop = float(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M).group(1))
    assert shutdown.TEARDOWN_S < shutdown.HARD_BOUND_S < stop
