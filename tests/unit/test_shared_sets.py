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
