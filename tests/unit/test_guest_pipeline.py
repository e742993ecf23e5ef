"""The guest package's own pieces: the per-VM kernel-thread table, the
withdrawal plan, the pure assess() and the RT-budget ledger (on a fixture
cgroup tree: plain files, so a refused write is a real write error)."""

import pytest

from rtagent.config import Partition, RealtimeConfig
from rtagent.kernel.cgroups import PERIOD, RUNTIME, RtTree
from rtagent.model import RealtimeSpec
from rtagent.tuning.guest import vmthreads
from rtagent.tuning.guest.assess import assess
from rtagent.tuning.guest.ledger import BudgetLedger
from rtagent.tuning.guest.observe import classify
from rtagent.tuning.guest.plan import SetScheduler, plan_actions

from .test_tuning_plan import guest_threads, observed, spec, thread

pytestmark = pytest.mark.unit

P = Partition(online=frozenset({0, 1, 2, 3}), realtime=frozenset({2, 3}), housekeeping=frozenset({0, 1}))
RT = RealtimeConfig()


# -- the table ------------------------------------------------------------------


@pytest.mark.parametrize("name,flags,kind", [
    ("kvm-pit/4242", 0, "kvm-pit"),
    ("vhost-4242", 0, "vhost"),
    ("vhost-net0", vmthreads.PF_USER_WORKER, "vhost"),
    ("vhost-net0", 0, None),  # a user thread of that name is not a vhost worker
    ("kvm-nx-lpage-recovery", 0, "kvm-nx-lpage"),
    ("kvm-nx-lpage-re", vmthreads.PF_USER_WORKER, "kvm-nx-lpage"),
    ("worker", 0, None),
])
def test_kind_of_uses_the_table(name, flags, kind):
    assert vmthreads.kind_of(name, flags) == kind
    role = classify(name, 7, 1, flags)[0]
    assert (role == "kthread") == (kind is not None or bool(flags & vmthreads.WORKER_FLAGS))


def test_separate_kthreads_belong_to_their_owner_only():
    assert vmthreads.separate_kind("kvm-pit/100", 100, [101]) == "kvm-pit"
    assert vmthreads.separate_kind("kvm-pit/100", 200, [201]) is None
    assert vmthreads.separate_kind("vhost-101", 100, [101]) == "vhost"  # owner: any QEMU task
    assert vmthreads.separate_kind("vhost-999", 100, [101]) is None
    assert vmthreads.still_owned("kvm-pit", "kvm-pit/100", 100)
    assert not vmthreads.still_owned("kvm-pit", "kvm-pit/100", 300)  # pid reused


def test_every_kind_has_a_host_prefix_and_the_host_wing_uses_them():
    from rtagent.tuning.host import kthreads

    assert set(kthreads.GUEST_PREFIXES) == {k.prefix for k in vmthreads.KINDS}
    for k in vmthreads.KINDS:
        assert k.pattern.fullmatch(k.prefix + ("1" if k.owner else "-recovery"))


# -- withdrawal and assess --------------------------------------------------------


def test_withdrawn_guest_plans_every_realtime_thread_back_to_other():
    pit = thread(200, "kvm-pit/100", "kthread", kind="kvm-pit", policy="fifo", prio=3, cgroup="/", cpus=(1,))
    threads = guest_threads(v1=thread(102, "CPU 1/KVM", "vcpu", 1, "vcpu", policy="rr", prio=2, cpus=(2,)),
                            v2=thread(103, "CPU 2/KVM", "vcpu", 2, "vcpu", policy="fifo", prio=1, cpus=(3,)))
    off = RealtimeSpec(domain="g", realtime=False, source="metadata")
    verdict = assess(off, observed(*threads, kthreads=[pit]), P, RT, withdrawn=True)
    assert {tp.thread.tid for tp in verdict.threads} == {102, 103, 200}
    assert verdict.realtime_cgroups == frozenset()
    actions = plan_actions(list(verdict.threads))
    # Scheduler only: affinity of a non-realtime guest is not rtagent's.
    assert all(isinstance(a, SetScheduler) and a.policy == "other" for a in actions)
    assert {v.check for v in verdict.violations} == {"vcpu_policy", "kthread_policy"}


def test_assess_reports_a_zero_budget_chain_from_the_lookup_it_is_given():
    chains = {"/machine/g/vcpu1": [("/", 950000), ("/machine", 0), ("/machine/g/vcpu1", 0)],
              "/machine/g/vcpu2": [("/", 950000), ("/machine", 10000), ("/machine/g/vcpu2", 10000)]}
    verdict = assess(spec(), observed(*guest_threads()), P, RT, budget_chain=chains.__getitem__)
    budget = [v for v in verdict.violations if v.check == "rt_budget"]
    assert len(budget) == 1 and "CPU 1/KVM" in budget[0].detail and "/machine has" in budget[0].detail
    assert verdict.realtime_cgroups == {"/machine/g/vcpu1", "/machine/g/vcpu2"}


# -- the ledger ---------------------------------------------------------------------


@pytest.fixture
def hierarchy(tmp_path):
    def group(path, runtime=0):
        d = tmp_path / path.lstrip("/") if path != "/" else tmp_path
        d.mkdir(parents=True, exist_ok=True)
        (d / RUNTIME).write_text(f"{runtime}\n")
        (d / PERIOD).write_text("1000000\n")
        (d / "tasks").write_text("1\n")  # not empty: not a dead guest's group
    group("/", 950000)
    for g in ("a", "b"):
        group(f"/machine/qemu-{g}")
        for v in (0, 1):
            group(f"/machine/qemu-{g}/vcpu{v}")
    group("/machine")
    return tmp_path


def runtime(root, path):
    return int((root / path.lstrip("/") / RUNTIME).read_text())


def test_ledger_grants_claims_and_releases_withdrawn_ones(hierarchy):
    ledger = BudgetLedger(RtTree(str(hierarchy), "v1"))
    ledger.claim("a", {"/machine/qemu-a/vcpu1"})
    ledger.claim("b", {"/machine/qemu-b/vcpu1"})
    plan = ledger.grant()
    assert plan.per_vcpu_us == 475000
    assert runtime(hierarchy, "/machine/qemu-a/vcpu1") == runtime(hierarchy, "/machine/qemu-b/vcpu1") == 475000
    ledger.withdraw("a")
    assert ledger.release_unclaimed() == []
    assert runtime(hierarchy, "/machine/qemu-a/vcpu1") == 0
    assert runtime(hierarchy, "/machine/qemu-a") == 0
    assert runtime(hierarchy, "/machine") == 475000
    assert ledger.granted == {"/machine/qemu-b/vcpu1"}


def test_a_refused_release_never_blocks_the_grant_for_another_guest(hierarchy, monkeypatch):
    """The kernel's EBUSY (a thread still FIFO in the group) cannot be had on
    plain files: the refusal is injected here; tests/system/test_intent_changes.py
    gets the real one."""
    from rtagent.tuning.guest import rtgroup

    ledger = BudgetLedger(RtTree(str(hierarchy), "v1"), fixed_us=300000)
    ledger.claim("a", {"/machine/qemu-a/vcpu1"})
    ledger.grant()
    real = rtgroup.apply_budgets

    def kernel(hier, leaves, fixed=None, release=frozenset()):
        if "/machine/qemu-a/vcpu1" in release:
            raise rtgroup.BudgetError("cannot set …/qemu-a/vcpu1/cpu.rt_runtime_us from 950000 to 0: "
                                      "Device or resource busy")
        return real(hier, leaves, fixed, release)

    monkeypatch.setattr(rtgroup, "apply_budgets", kernel)
    ledger.withdraw("a")
    ledger.claim("b", {"/machine/qemu-b/vcpu0"})
    plan = ledger.grant()
    # b gets its budget next to what a still holds; a's release is kept and retried.
    assert runtime(hierarchy, "/machine/qemu-b/vcpu0") == plan.per_vcpu_us == 300000
    assert runtime(hierarchy, "/machine/qemu-a/vcpu1") == 300000
    assert "/machine/qemu-a/vcpu1" in ledger.release_failed
    assert "/machine/qemu-b/vcpu0" in ledger.granted
    monkeypatch.setattr(rtgroup, "apply_budgets", real)
    assert ledger.release_unclaimed() == []
    assert ledger.release_failed == {}
    assert runtime(hierarchy, "/machine/qemu-a/vcpu1") == 0
