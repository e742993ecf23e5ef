"""A refused RT-budget grant: answered again without re-planning while nothing
it depends on changed, re-planned when the budget can have come free, and
granted once it has (fixture hierarchies; the kernel's own refusal is the
same plan, tests/system exercise it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtagent.kernel.cgroups import PERIOD, RUNTIME, RtTree
from rtagent.tuning.guest import rtgroup
from rtagent.tuning.guest.grantgate import BASE_S, CAP_S, GrantGate
from rtagent.tuning.guest.ledger import BudgetLedger

pytestmark = pytest.mark.unit

OURS = "/machine/qemu-1-ours/vcpu1"
THEIRS = "/machine/qemu-2-theirs"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Hierarchy:
    """Our guest next to another daemon's, which holds 900 ms of the root's 950."""

    def __init__(self, root: Path):
        self.root = root
        self.group("/", 950000)
        self.group("/machine", 900000)
        self.group("/machine/qemu-1-ours")
        self.group(OURS, tasks="11\n")
        self.group(THEIRS, 900000)
        self.group(THEIRS + "/vcpu1", 900000, tasks="22\n")

    def group(self, path: str, runtime: int = 0, tasks: str = "") -> None:
        d = self.root / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / RUNTIME).write_text(f"{runtime}\n")
        (d / PERIOD).write_text("1000000\n")
        (d / "tasks").write_text(tasks)

    def runtime(self, path: str) -> int:
        return int((self.root / path.lstrip("/") / RUNTIME).read_text())

    def set(self, path: str, runtime: int) -> None:
        (self.root / path.lstrip("/") / RUNTIME).write_text(f"{runtime}\n")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    h = Hierarchy(tmp_path)
    clock = Clock()
    ledger = BudgetLedger(RtTree(str(tmp_path), "v1"), fixed_us=100000, gate=GrantGate(clock))
    ledger.claim("ours", {OURS})
    walks = []
    real = rtgroup.stale_guest_groups
    monkeypatch.setattr(rtgroup, "stale_guest_groups", lambda tree, leaves: walks.append(1) or real(tree, leaves))
    return h, clock, ledger, walks


def refused(ledger) -> rtgroup.BudgetShort:
    with pytest.raises(rtgroup.BudgetShort) as info:
        ledger.grant()
    return info.value


def test_a_refusal_is_answered_again_without_walking_the_tree(setup):
    h, clock, ledger, walks = setup
    first = refused(ledger)
    assert not first.repeat and "needs 100000 µs but only 50000 µs" in str(first) and len(walks) == 1
    for _ in range(5):
        again = refused(ledger)
        assert again.repeat and str(again) == str(first)
    assert len(walks) == 1 and ledger.gate.answered == 5
    assert h.runtime(OURS) == 0


def test_budget_given_back_is_granted_at_the_next_attempt(setup):
    """The other daemon's guest gives its budget back (its vCPU stopped being
    realtime): the fingerprint changed, no backoff is waited for."""
    h, clock, ledger, walks = setup
    refused(ledger)
    h.set(THEIRS + "/vcpu1", 0)
    h.set(THEIRS, 0)
    h.set("/machine", 0)
    plan = ledger.grant()
    assert plan is not None and plan.per_vcpu_us == 100000 and h.runtime(OURS) == 100000
    assert not ledger.gate.closed


def test_a_guest_group_that_went_away_re_plans_at_once(setup):
    h, clock, ledger, walks = setup
    refused(ledger)
    for path in (THEIRS + "/vcpu1", THEIRS):
        d = h.root / path.lstrip("/")
        for f in d.iterdir():
            if f.is_file():
                f.unlink()
        d.rmdir()
    h.set("/machine", 0)
    assert ledger.grant().per_vcpu_us == 100000


def test_a_dead_guests_budget_is_released_once_the_backoff_ran_out(setup):
    """What the fingerprint cannot see: the other guest's tasks left, its
    group (and budget) stayed.  The backoff bounds the wait: the stale
    walk then releases it and the grant goes through."""
    h, clock, ledger, walks = setup
    refused(ledger)
    (h.root / THEIRS.lstrip("/") / "vcpu1" / "tasks").write_text("")
    clock.now += BASE_S - 0.01
    assert refused(ledger).repeat and len(walks) == 1
    clock.now += 0.02
    assert ledger.grant().per_vcpu_us == 100000
    assert h.runtime(THEIRS) == 0 and h.runtime(OURS) == 100000 and len(walks) == 2


def test_the_backoff_doubles_to_its_cap_and_starts_over_when_the_tree_changes(setup):
    h, clock, ledger, walks = setup
    refused(ledger)
    waits = []
    for _ in range(8):
        start = clock.now
        while refused(ledger).repeat:
            clock.now += 0.25
        waits.append(clock.now - start)
    assert waits[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, CAP_S] and waits[6:] == [CAP_S, CAP_S]
    h.set(THEIRS + "/vcpu1", 880000)
    h.set(THEIRS, 880000)  # still not enough: a new refusal, a fresh backoff
    h.set("/machine", 880000)
    assert not refused(ledger).repeat
    clock.now += BASE_S
    assert not refused(ledger).repeat


def test_a_changed_budget_or_claim_re_plans(setup):
    h, clock, ledger, walks = setup
    refused(ledger)
    ledger.configure(50000)  # a SIGHUP with a smaller rt_budget_us: fits
    assert ledger.grant().per_vcpu_us == 50000


def test_the_stale_walk_skips_guest_groups_that_hold_no_budget(tmp_path, monkeypatch):
    """The kernel keeps a group's children within its budget: a guest group
    at 0 holds nothing below it, so libvirt's many leftover groups cost one
    read each, not a walk."""
    h = Hierarchy(tmp_path)
    for n in range(3, 13):
        h.group(f"/machine/qemu-{n}-left")
        h.group(f"/machine/qemu-{n}-left/vcpu0")
    tree = RtTree(str(tmp_path), "v1")
    walked = []
    real = RtTree.subtree
    monkeypatch.setattr(RtTree, "subtree", lambda self, g: walked.append(g) or real(self, g))
    assert rtgroup.stale_guest_groups(tree, {OURS}) == set()
    assert walked == [THEIRS]
    (tmp_path / THEIRS.lstrip("/") / "vcpu1" / "tasks").write_text("")
    assert rtgroup.stale_guest_groups(tree, {OURS}) == {THEIRS, THEIRS + "/vcpu1"}


def test_gate_schedule_alone():
    clock = Clock()
    gate = GrantGate(clock)
    assert not gate.closed and gate.refusal("k") is None
    gate.refused("k", rtgroup.BudgetShort("short"))
    assert gate.refusal("k").repeat and gate.refusal("other") is None
    clock.now += BASE_S
    assert gate.refusal("k") is None
    gate.open()
    assert not gate.closed


# -- the retry of a guest refused for want of budget -----------------------------------


def _after(*failed, violations=("rt_budget",)):
    from rtagent.model import RealtimeSpec, Violation
    from rtagent.tuning.guest.apply import Result
    from rtagent.tuning.guest.report import DomainReport

    return DomainReport(name="g", uuid="u", spec=RealtimeSpec(domain="g", realtime=True), pid=10,
                        violations=[Violation(v, "x") for v in violations],
                        changes=[Result(a, "failed", "EPERM") for a in failed])


def test_a_guest_refused_only_for_budget_waits_for_the_gate(setup):
    """The guest's retry comes when the grant can first go through, not on the
    short backoff (which re-read the guest's /proc every resync)."""
    from rtagent.config import parse_config
    from rtagent.daemon.retry import RetrySchedule
    from rtagent.tuning.guest.engine import Tuner
    from rtagent.tuning.guest.plan import SetAffinity, SetScheduler

    h, clock, ledger, walks = setup
    tuner = Tuner(parse_config({"host": {"realtime_cpus": "1"}}), ledger=ledger)
    tuner.ledger.configure(100000)
    fifo = SetScheduler(tid=11, policy="fifo", priority=1)
    assert tuner.budget_wait_until(_after(fifo)) is None  # no refusal on record yet
    refused(ledger)
    assert tuner.budget_wait_until(_after(fifo)) == clock.now + BASE_S
    # Anything else refused too, or no budget violation: the short backoff as before.
    assert tuner.budget_wait_until(_after(fifo, SetAffinity(tid=12, cpus=frozenset({0})))) is None
    assert tuner.budget_wait_until(_after(fifo, violations=())) is None
    assert tuner.budget_wait_until(_after(SetScheduler(tid=11, policy="other", priority=0))) is None
    retry = RetrySchedule(cap_s=1.0, clock=clock)
    until = tuner.budget_wait_until(_after(fifo))
    assert retry.after_reconcile("u", 9, pending=False, refused=True, settling=True, not_before=until)
    assert retry.next_deadline() == until
    # A settle look after a thread event or a pending vCPU still comes on the short backoff.
    retry.discard("u")
    assert retry.after_reconcile("u", 0, pending=False, refused=True, settling=True, not_before=until + 10)
    assert retry.next_deadline() == pytest.approx(clock.now + 0.05)
    retry.discard("u")
    assert retry.after_reconcile("u", 9, pending=True, refused=True, settling=False, not_before=until + 10)
    assert retry.next_deadline() <= clock.now + 1.0


def test_guest_groups_holding_no_budget_coming_and_going_keep_the_refusal(setup):
    """Other guests start and stop all the time on a busy host; a group that
    holds no budget frees none: the refusal stands, no re-plan."""
    h, clock, ledger, walks = setup
    refused(ledger)
    h.group("/machine/qemu-7-other")
    h.group("/machine/qemu-7-other/vcpu0", tasks="77\n")
    assert refused(ledger).repeat and len(walks) == 1
