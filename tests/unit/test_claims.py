"""Host-wide ownership of realtime pCPUs (issue 12, item 2): the pure
resolver and what the planner does with a lost pCPU."""

import pytest

from rtagent.model import IOThreadSpec, RealtimeSpec, VcpuSpec
from rtagent.tuning.guest.assess import assess
from rtagent.tuning.guest.claims import ClaimBook, ClaimRole, claims_of, resolve

from .test_tuning_plan import RT, P, guest_threads, observed, spec, thread

pytestmark = pytest.mark.unit
REALTIME = frozenset({2, 3})


def rt_guest(name, cpu=2, started=10.0, holding=False, emulator=frozenset({0})):
    s = RealtimeSpec(domain=name, uuid=f"uuid-{name}", realtime=True, source="metadata",
                     vcpus=(VcpuSpec(0, False, "other", 0, frozenset({0})),
                            VcpuSpec(1, True, "fifo", 1, frozenset({cpu}))),
                     emulator_cpus=emulator, emulator_source="emulatorpin")
    return claims_of(s, started, frozenset({cpu}) if holding else frozenset(), relevant=REALTIME)


def plain_guest(name, emulator=None, vcpu_cpus=None, started=10.0, iothread=None):
    s = RealtimeSpec(domain=name, uuid=f"uuid-{name}", realtime=False,
                     vcpus=(VcpuSpec(0, False, "other", 0, frozenset(vcpu_cpus or ())),),
                     emulator_cpus=frozenset(emulator or ()),
                     emulator_source="emulatorpin" if emulator else "unpinned",
                     iothreads=(IOThreadSpec(1, frozenset(iothread)),) if iothread else ())
    return claims_of(s, started, relevant=REALTIME)


def test_the_guest_that_started_first_keeps_the_pcpu():
    own = resolve([rt_guest("late", started=20.0), rt_guest("early", started=10.0)])
    assert own.owners[2][0] == "uuid-early"
    (c,) = own.conflicts
    assert (c.cpu, c.owner, c.loser, c.claim.label, c.owner_claim.label) == (
        2, "early", "late", "realtime vCPU 1", "realtime vCPU 1")
    assert "pCPU 2" in c.detail and "'early'" in c.detail and "'late'" in c.detail and "not made realtime" in c.detail
    assert own.kept_off("uuid-late") == {2} and own.kept_off("uuid-early") == frozenset()


def test_a_realtime_incumbent_is_never_displaced_by_an_older_guest():
    own = resolve([rt_guest("young", started=20.0, holding=True), rt_guest("old", started=10.0)])
    assert own.owners[2][0] == "uuid-young"
    assert [c.loser for c in own.conflicts] == ["old"]


def test_realtime_guests_on_different_pcpus_do_not_conflict():
    assert resolve([rt_guest("a", cpu=2), rt_guest("b", cpu=3)]).conflicts == ()


def test_an_older_guests_emulator_on_the_pcpu_wins_over_a_later_realtime_vcpu():
    own = resolve([rt_guest("rt", started=20.0), plain_guest("plain", emulator={1, 2}, started=10.0)])
    assert 2 not in own.owners
    (c,) = own.conflicts
    assert (c.owner, c.loser, c.owner_claim.role, c.claim.role) == (
        "plain", "rt", ClaimRole.EMULATOR, ClaimRole.REALTIME_VCPU)
    assert own.kept_off("uuid-rt") == {2}


@pytest.mark.parametrize("kw,label", [(dict(emulator={2}), "emulator threads"),
                                      (dict(vcpu_cpus={2}), "non-realtime vCPU 0"),
                                      (dict(iothread={2, 3}), "iothread 1")])
def test_a_later_non_realtime_claim_loses_and_shows_on_the_owner(kw, label):
    own = resolve([rt_guest("rt", started=10.0), plain_guest("plain", started=20.0, **kw)])
    assert own.owners[2][0] == "uuid-rt"
    (c,) = own.conflicts
    assert (c.owner, c.loser, c.claim.label, c.loser_managed) == ("rt", "plain", label, False)
    # The untuned guest really shares the pCPU: the owner is told.
    assert own.owned_against("uuid-rt") == (c,) and "shares it" in c.detail


def test_claims_on_housekeeping_cpus_are_not_claims():
    g = plain_guest("plain", emulator={0, 1}, vcpu_cpus={0})
    assert g.claims == ()
    assert resolve([rt_guest("rt"), g]).conflicts == ()


def test_the_book_resolves_one_guest_against_the_others():
    book = ClaimBook([rt_guest("a", started=1.0)])
    b = rt_guest("b", started=2.0)
    assert [c.loser for c in book.ownership_for(b).for_guest("uuid-b")] == ["b"]
    book.drop("uuid-a")
    assert book.ownership_for(b).for_guest("uuid-b") == ()


def test_the_books_cached_resolution_follows_every_record_and_drop():
    """The book resolves once for claims it already holds; any change to it
    (new claims, a guest now holding its pCPU, a drop) gives the answer a
    fresh resolve gives."""
    a, b, c = rt_guest("a", started=1.0), rt_guest("b", started=2.0), rt_guest("c", started=3.0)
    book = ClaimBook([a, b, c])
    first = book.ownership_for(b)
    assert first is book.ownership_for(c)  # one resolve for the claims the book holds
    assert first == resolve([a, b, c])
    c_holds = rt_guest("c", started=3.0, holding=True)  # c is realtime on pCPU 2 now: it keeps it
    assert book.ownership_for(c_holds) == resolve([a, b, c_holds])  # asked before it is recorded
    book.record("uuid-c", c_holds)
    assert book.ownership_for(a) == resolve([a, b, c_holds])
    assert book.ownership_for(a).owners[2][0] == "uuid-c"
    book.drop("uuid-c")
    assert book.ownership_for(a) == resolve([a, b]) and book.ownership_for(a).owners[2][0] == "uuid-a"
    book.record("uuid-b", None)  # b claims nothing on a realtime CPU any more
    assert book.ownership_for(a) == resolve([a])


def test_a_lost_pcpu_is_kept_free_of_the_losers_threads_and_not_made_realtime():
    a = rt_guest("a", cpu=2, started=1.0)
    me = spec(uuid="uuid-g")
    book = ClaimBook([a])
    mine = claims_of(me, 5.0, relevant=REALTIME)
    conflicts = book.ownership_for(mine).for_guest("uuid-g")
    verdict = assess(me, observed(*guest_threads()), P, RT, conflicts=conflicts)
    want = {tp.thread.vcpu: tp.want for tp in verdict.threads if tp.thread.role == "vcpu"}
    # Not realtime; its pinning (pCPU 2 only) is left alone: moving it would
    # rewrite the guest's live XML, the intent itself.
    assert want[1].policy == "other" and want[1].cpus is None
    assert want[2].policy == "fifo" and want[2].cpus == {3}  # vCPU 2 on pCPU 3 is not contested
    assert [v.check for v in verdict.violations].count("cpu_conflict") == 1
    assert "/machine/g/vcpu1" not in verdict.realtime_cgroups


def test_an_emulator_pinned_onto_an_owned_pcpu_moves_to_what_is_left():
    a = rt_guest("a", cpu=3, started=1.0)
    me = spec(uuid="uuid-g", emulator_cpus=frozenset({1, 3}), emulator_source="emulatorpin",
              vcpus=(VcpuSpec(0, False, "other", 0, frozenset({1})), VcpuSpec(1, True, "fifo", 1, frozenset({2})),
                     VcpuSpec(2, False, "other", 0, frozenset({1}))))
    conflicts = ClaimBook([a]).ownership_for(claims_of(me, 5.0, relevant=REALTIME)).for_guest("uuid-g")
    assert [c.claim.role for c in conflicts] == [ClaimRole.EMULATOR]
    ts = guest_threads(v2=thread(103, "CPU 2/KVM", "vcpu", 2, "vcpu", cpus=(1,)))
    verdict = assess(me, observed(*ts), P, RT, conflicts=conflicts)
    emulator = next(tp for tp in verdict.threads if tp.thread.role == "emulator")
    assert emulator.want.cpus == {1}
