"""The sets the daemon keeps per guest are shared instances where equal
(issue 14's RSS goal: CPython makes a new 216-byte object for every
``frozenset()`` and every set parsed, and at 100 guests ≈ 900 of them were
copies of three values: empty, {0} and {1})."""

from __future__ import annotations

import pytest

from rtagent import sets
from rtagent.intent import parse_cpuset
from rtagent.model import RealtimeSpec
from rtagent.tuning.guest.assess import assess
from rtagent.tuning.guest.ledger import BudgetLedger

from .test_guest_pipeline import P, RT
from .test_tuning_plan import guest_threads, observed

pytestmark = pytest.mark.unit


def test_a_cpuset_parsed_twice_is_one_object():
    """Every guest's <vcpupin>/<emulatorpin> sets are kept in its spec."""
    a, b = parse_cpuset("0-1,^0"), parse_cpuset("1")
    assert a == frozenset({1}) and a is b


def test_frozen_shares_the_empty_set_only():
    assert sets.frozen([]) is sets.EMPTY and sets.frozen(iter(())) is sets.EMPTY
    assert sets.frozen(["a"]) == frozenset({"a"}) and sets.frozen(["a"]) is not sets.frozen(["a"])


def test_a_guest_without_realtime_cgroups_keeps_the_shared_empty_set():
    off = RealtimeSpec(domain="g", realtime=False, source="metadata")
    verdict = assess(off, observed(*guest_threads()), P, RT, withdrawn=True)
    assert verdict.realtime_cgroups is sets.EMPTY


def test_a_claim_of_no_cgroup_is_the_shared_empty_set():
    ledger = BudgetLedger(None)
    ledger.claim("a", {"/"})
    ledger.claim("b", set())
    assert ledger.claims["a"] is sets.EMPTY and ledger.claims["b"] is sets.EMPTY


def test_a_threads_name_and_cgroup_read_twice_are_one_string():
    """A full check re-reads both for every thread and the records keep them."""
    from rtagent.kernel.tasks import _cgroup_cpu, parse_stat

    line = "4242 (CPU 1/KVM) S " + " ".join(["1"] * 49)
    a, b = parse_stat(line), parse_stat(line.replace("4242", "4243", 1))
    assert a.comm == "CPU 1/KVM" and a.comm is b.comm
    v1 = "5:cpu,cpuacct:/machine/qemu-1-g.libvirt-qemu/vcpu1\n1:name=systemd:/\n"
    v2 = "0::/machine.slice/qemu-1-g.scope/vcpu1\n"
    assert _cgroup_cpu(v1) == "/machine/qemu-1-g.libvirt-qemu/vcpu1" and _cgroup_cpu(v1) is _cgroup_cpu(v1)
    assert _cgroup_cpu(v2) == "/machine.slice/qemu-1-g.scope/vcpu1" and _cgroup_cpu(v2) is _cgroup_cpu(v2)


def test_shared_values_are_the_daemons_own_and_a_full_check_forgets_them(monkeypatch):
    """Not the interpreter's intern table (it never shrinks, and every
    guest start brings new cgroup paths); the daemon's own table is emptied
    at each full check and when it reaches its bound."""
    from rtagent.kernel import tasks

    monkeypatch.setattr(tasks, "_SHARED", {})
    path = "".join(["/machine/qemu-7-", "gone.libvirt-qemu/vcpu1"])  # built at run time: not a constant
    assert tasks.shared(path) is path and tasks.shared(path[:]) is path and len(tasks._SHARED) == 1
    tasks.forget_shared()
    again = "".join(["/machine/qemu-7-", "gone.libvirt-qemu/vcpu1"])
    assert tasks._SHARED == {} and tasks.shared(again) is again
    monkeypatch.setattr(tasks, "SHARED_MAX", 3)
    for n in range(5):
        tasks.shared(f"t{n}")
    assert len(tasks._SHARED) <= 3


def test_a_full_check_begins_by_forgetting_the_shared_values(monkeypatch):
    from rtagent.daemon import guests
    from rtagent.errors import LibvirtUnavailable

    calls = []
    monkeypatch.setattr(guests, "forget_shared", lambda: calls.append("forget"))

    class Host:  # only the listing is reached: it fails, as with libvirt gone
        def active_guests(self, _match):
            calls.append("list")
            raise LibvirtUnavailable("gone")

    g = guests.GuestSupervisor.__new__(guests.GuestSupervisor)  # only what resync reaches first
    g._clock, g.config, g.host = (lambda: 0.0), type("C", (), {"daemon": type("D", (), {
        "full_check_interval_s": 30.0})()})(), Host()
    g.store = type("S", (), {"update": staticmethod(lambda fn: None)})()
    g.selector = type("Sel", (), {"matches_name": staticmethod(lambda n: True)})()
    assert g.resync() is False
    assert calls == ["forget", "list"]
