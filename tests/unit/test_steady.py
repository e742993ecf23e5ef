"""The cheap check over a fixture tree (PIDs that are not real: the same
comparison from the tree's files) and the baseline a reconcile leaves."""

from __future__ import annotations

import pytest

from rtagent.daemon.steady import SteadyCheck, baseline_of
from rtagent.kernel.probe import DriftProbe, Expected
from rtagent.model import RealtimeSpec
from rtagent.tuning.guest.observe import observe_process
from rtagent.tuning.guest.plan import ThreadPlan, Want
from rtagent.tuning.guest.report import DomainReport
from tests.procfixture import FakeThread, ProcTree

pytestmark = pytest.mark.unit


def _tree(tmp_path, *, cpus: str = "2", policy: str = "fifo") -> ProcTree:
    tree = ProcTree(tmp_path)
    tree.add_process(4242, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "guest=g1"],
                     threads=[FakeThread(4243, "call_rcu", cpus="0"),
                              FakeThread(4245, "CPU 0/KVM", cpus=cpus, policy=policy, priority=1)])
    return tree


def test_fixture_tree_answers_like_the_syscalls(tmp_path):
    probe = DriftProbe(_tree(tmp_path).kernel())
    assert probe.live is False
    assert probe.unchanged([Expected.of(4245, "fifo", 1, {2}, 4242), Expected.of(4243, "other", 0, {0}, 4242)])
    assert not probe.unchanged([Expected.of(4245, "fifo", 2, {2}, 4242)])  # priority
    assert not probe.unchanged([Expected.of(4245, "fifo", 1, {3}, 4242)])  # affinity
    assert not probe.unchanged([Expected.of(4245, "rr", 1, {2}, 4242)])  # policy
    assert not probe.unchanged([Expected.of(4999, "other", 0, {0}, 4242)])  # gone


def test_baseline_is_what_the_reconcile_saw_after_applying(tmp_path):
    tree = _tree(tmp_path)
    observed = observe_process(4242, tree.kernel())
    spec = RealtimeSpec(domain="g1", uuid="u1", realtime=True)
    report = DomainReport(name="g1", uuid="u1", spec=spec, pid=4242, observed=observed,
                          threads=[ThreadPlan(t, Want(), "emulator") for t in observed.threads])
    base = baseline_of(report)
    assert {(e.tid, e.policy, e.priority, e.cpus) for e in base.threads} == {
        (4242, 0, 0, frozenset(observed.thread(4242).cpus)), (4243, 0, 0, frozenset({0})), (4245, 1, 1, frozenset({2}))}
    # No observation (process not found): nothing to compare, the full path runs.
    assert baseline_of(DomainReport(name="g1", uuid="u1", spec=spec)) is None

    steady = SteadyCheck(DriftProbe(tree.kernel()))
    steady.record("u1", report)
    seen: list[str] = []
    steady.run(["u1"], seen.append)
    assert seen == [] and steady.checked == 3
    # The thread drifts in the tree: the guest goes down the full path.
    drifted = _tree(tmp_path / "later", cpus="0-3")
    steady.probe = DriftProbe(drifted.kernel())
    steady.run(["u1"], seen.append)
    assert seen == ["u1"] and steady.differed == 1
