"""Stopping within a bound (rtagent/daemon/shutdown.py) and the libvirt
worker's part in it: waits end when a stop is asked."""

from __future__ import annotations

import threading

import pytest

from rtagent.daemon import shutdown
from rtagent.errors import LibvirtUnresponsive
from rtagent.libvirt_host import CallWorker

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


def test_the_units_stop_timeout_is_above_the_daemons_own_bound():
    """systemd SIGKILLs after TimeoutStopSec: that must only ever hit a
    daemon whose own bound (faulthandler's exit) could not run."""
    import re
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[2] / "systemd" / "rtagent.service").read_text()
    stop = float(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M).group(1))
    assert shutdown.TEARDOWN_S < shutdown.HARD_BOUND_S < stop
