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


class RecordingProbe:
    """Answers from a set of drifted TIDs and records each call's TIDs."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.drifted: set[int] = set()

    def unchanged(self, expected) -> bool:
        tids = tuple(e.tid for e in expected)
        self.calls.append(tids)
        return not self.drifted.intersection(tids)


def _two_guests(probe) -> SteadyCheck:
    from rtagent.daemon.steady import Baseline

    steady = SteadyCheck(probe)
    steady._baselines["u1"] = Baseline(10, (Expected.of(10, "other", 0, {0}), Expected.of(11, "fifo", 1, {1})))
    steady._baselines["u2"] = Baseline(20, (Expected.of(20, "other", 0, {0}),))
    return steady


def test_an_unchanged_resync_is_one_pass_over_every_guests_threads():
    probe = RecordingProbe()
    steady = _two_guests(probe)
    seen: list[str] = []
    assert steady.run(["u1", "u2"], seen.append) == 0
    assert probe.calls == [(10, 11, 20)] and seen == [] and steady.checked == 3
    # A thread drifts: the first pass says so, then each guest on its own.
    probe.calls.clear()
    probe.drifted = {20}
    assert steady.run(["u1", "u2"], seen.append) == 1
    assert probe.calls == [(10, 11, 20), (10, 11), (20,)] and seen == ["u2"] and steady.differed == 1


def test_a_guest_without_a_baseline_is_reconciled_and_a_new_baseline_is_probed():
    probe = RecordingProbe()
    steady = _two_guests(probe)
    seen: list[str] = []
    assert steady.run(["u1", "u2", "u3"], seen.append) == 1  # u3: nothing recorded yet
    assert seen == ["u3"] and probe.calls == [(10, 11), (20,)]
    steady.forget("u2")
    probe.calls.clear()
    assert steady.run(["u1"], seen.append) == 0
    assert probe.calls == [(10, 11)]  # the pass follows the baselines held now
