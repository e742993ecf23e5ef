"""Interference accounting over synthetic event streams of one CPU."""

from __future__ import annotations

import pytest

from rtagent.monitor import interference as itf
from rtagent.monitor.interference import (
    CpuAccount, IntrEnter, IntrExit, Kind, Lost, StickyTop, Switch, Tally, Window, fold_comm,
)

pytestmark = pytest.mark.unit

OWNER = 100
PREEMPTED = 0x100   # R+
SLEEPING = 1        # S


def classify(pid, comm):
    if comm.startswith("kworker"):
        return Kind.KTHREAD, fold_comm(comm)
    if comm.startswith("CPU "):
        return Kind.GUEST, "other-guest"
    return Kind.TASK, fold_comm(comm)


def acc(owners=(OWNER,)):
    return CpuAccount(1, classify, owners)


def test_owner_and_idle_are_not_interference():
    a = acc()
    a.feed([Switch(0, 0, 0, OWNER, "CPU 1/KVM"), Switch(1000, OWNER, SLEEPING, 0, "swapper/1"),
            Switch(5000, 0, 0, OWNER, "CPU 1/KVM")])
    a.advance(9000)
    assert a.totals == {} and a.preempted == {}


def test_foreign_task_time_and_count():
    a = acc()
    a.feed([Switch(0, 0, 0, 200, "noise"), Switch(700, 200, SLEEPING, 0, "swapper/1"),
            Switch(1000, 0, 0, 200, "noise"), Switch(1300, 200, SLEEPING, 0, "swapper/1")])
    assert a.totals == {(Kind.TASK, "noise"): Tally(1000, 2)}


def test_preempted_owner_is_charged_by_kind():
    a = acc()
    a.feed([Switch(0, 0, 0, OWNER, "CPU 1/KVM"),
            Switch(100, OWNER, PREEMPTED, 300, "kworker/1:1"),   # runnable owner pushed off
            IntrEnter(150, Kind.IRQ, "eth0"), IntrExit(170, Kind.IRQ, ""),
            Switch(400, 300, SLEEPING, OWNER, "CPU 1/KVM"),
            IntrEnter(500, Kind.IRQ, "local_timer"), IntrExit(510, Kind.IRQ, "local_timer"),
            IntrEnter(510, Kind.SOFTIRQ, "TIMER"), IntrExit(530, Kind.SOFTIRQ, "TIMER"),
            Switch(600, OWNER, SLEEPING, 301, "kworker/1:1")])   # owner slept: no longer "preempted"
    a.advance(900)
    assert a.totals[(Kind.KTHREAD, "kworker")] == Tally(280 + 300, 2)
    assert a.totals[(Kind.IRQ, "eth0")] == Tally(20, 1)
    assert a.preempted == {OWNER: {Kind.KTHREAD: 280, Kind.IRQ: 30, Kind.SOFTIRQ: 20}}


def test_nested_softirq_inside_irq_goes_to_the_innermost():
    a = acc(())
    a.feed([Switch(0, 0, 0, 200, "noise"), IntrEnter(10, Kind.IRQ, "eth0"), IntrEnter(12, Kind.SOFTIRQ, "NET_RX"),
            IntrExit(20, Kind.SOFTIRQ, "NET_RX"), IntrExit(25, Kind.IRQ, ""), Switch(30, 200, 1, 0, "swapper/1")])
    assert a.totals == {(Kind.TASK, "noise"): Tally(10 + 5, 1), (Kind.IRQ, "eth0"): Tally(2 + 5, 1),
                        (Kind.SOFTIRQ, "NET_RX"): Tally(8, 1)}


def test_irq_during_idle_counts():
    a = acc()
    a.feed([Switch(0, OWNER, SLEEPING, 0, "swapper/1"), IntrEnter(10, Kind.IRQ, "eth0"), IntrExit(14, Kind.IRQ, "")])
    assert a.totals == {(Kind.IRQ, "eth0"): Tally(4, 1)} and a.preempted == {}


def test_a_task_running_when_tracing_began_is_charged_from_the_first_event():
    """No switch-in: the first events (a tick, the switch out) name the task."""
    a = acc()
    a.feed([IntrEnter(5, Kind.IRQ, "local_timer", pid=7), IntrExit(8, Kind.IRQ, "local_timer", pid=7),
            Switch(1000, 7, SLEEPING, 0, "swapper/1", prev_comm="busy")])
    a.advance(1500)
    assert a.totals == {(Kind.TASK, "busy"): Tally(992, 1), (Kind.IRQ, "local_timer"): Tally(3, 1)}
    assert a.inferred == 0 and a.inconsistent == 0


def test_a_switch_the_trace_left_out_is_inferred_from_the_next_events_task():
    """This machine's kernel traces no switch out of CPU 1's idle task: the
    task is seen first in the tick that interrupts it; it was switched in
    right after the interrupt that woke the idle CPU."""
    a = acc()
    a.feed([Switch(0, 300, SLEEPING, 0, "swapper/1", prev_comm="kworker/1:1"),
            IntrEnter(100, Kind.IRQ, "call_function_single", pid=0),
            IntrExit(102, Kind.IRQ, "call_function_single", pid=0),
            # here 0 -> 200 "noise" ran, and the trace has no record of it
            IntrEnter(4102, Kind.IRQ, "local_timer", pid=200), IntrExit(4110, Kind.IRQ, "local_timer", pid=200),
            Switch(9000, 200, SLEEPING, 0, "swapper/1", prev_comm="noise")])
    assert a.totals[(Kind.TASK, "noise")] == Tally(4000 + 4890, 1)
    assert a.inferred == 1
    assert a.totals[(Kind.IRQ, "local_timer")] == Tally(8, 1)


def test_a_left_out_switch_out_of_idle_with_no_event_inside_is_the_gap_since_the_last_event():
    a = acc()
    a.feed([Switch(0, 300, SLEEPING, 0, "swapper/1", prev_comm="x"),
            IntrEnter(50, Kind.IRQ, "reschedule", pid=0), IntrExit(51, Kind.IRQ, "reschedule", pid=0),
            Switch(90, 301, SLEEPING, 0, "swapper/1", prev_comm="kworker/1:2")])
    assert a.totals[(Kind.KTHREAD, "kworker")] == Tally(39, 1) and a.inferred == 1


def test_idle_left_without_a_traced_interrupt_is_not_back_dated():
    """No interrupt woke the idle CPU (the previous record is the switch to
    idle): the gap stays idle, the task is charged from its first record."""
    a = acc()
    a.feed([Switch(0, 300, SLEEPING, 0, "swapper/1", prev_comm="x"),
            IntrEnter(5_000, Kind.IRQ, "local_timer", pid=200), IntrExit(5_010, Kind.IRQ, "local_timer", pid=200),
            Switch(6_000, 200, SLEEPING, 0, "swapper/1", prev_comm="noise")])
    assert a.totals[(Kind.TASK, "noise")] == Tally(990, 1)


def test_an_inferred_task_without_a_traced_comm_is_classified_by_pid():
    seen = []

    def record(pid, comm):
        seen.append((pid, comm))
        return Kind.TASK, comm or f"pid{pid}"

    a = CpuAccount(1, record, ())
    a.feed([Switch(0, 1, SLEEPING, 0, "swapper/1", prev_comm="a"),
            IntrEnter(10, Kind.IRQ, "local_timer", pid=55), IntrExit(12, Kind.IRQ, "local_timer", pid=55)])
    assert (55, "") in seen
    # not the comm an earlier switch named (it may be stale): the kernel's
    # name for the pid now ("" asks the classifier to look it up)
    a.feed([Switch(20, 55, SLEEPING, 56, "named"), Switch(30, 56, SLEEPING, 0, "swapper/1"),
            IntrEnter(40, Kind.IRQ, "local_timer", pid=56), IntrExit(41, Kind.IRQ, "local_timer", pid=56)])
    assert (56, "") in seen and a.totals[(Kind.TASK, "named")].count == 1


def test_a_task_that_renames_itself_while_running_is_charged_to_its_new_name():
    """A process started as python names itself noise (prctl) and keeps
    running: its switch out carries the new name; the whole run is noise's."""
    a = acc()
    a.feed([Switch(0, 0, 0, 200, "python"),
            IntrEnter(4_000, Kind.IRQ, "local_timer", pid=200), IntrExit(4_010, Kind.IRQ, "local_timer", pid=200),
            Switch(9_000, 200, SLEEPING, 0, "swapper/1", prev_comm="noise")])
    assert a.totals[(Kind.TASK, "noise")] == Tally(8_990, 1)
    assert a.totals[(Kind.TASK, "python")] == Tally(0, 0)
    assert a.totals[(Kind.IRQ, "local_timer")] == Tally(10, 1)
    # a run spanning two reads: the rename is seen in the second
    b = acc()
    b.feed([Switch(0, 0, 0, 200, "python"), IntrEnter(4_000, Kind.IRQ, "local_timer", pid=200)])
    b.feed([IntrExit(4_010, Kind.IRQ, "local_timer", pid=200),
            Switch(9_000, 200, SLEEPING, 0, "swapper/1", prev_comm="noise")])
    assert b.totals[(Kind.TASK, "noise")] == Tally(8_990, 1)


def test_an_inferred_task_takes_the_name_of_its_own_switch_out_over_an_older_one():
    """A process seen on the CPU before it renamed itself (python → noise)."""
    a = acc()
    a.feed([Switch(0, 0, 0, 200, "python"), Switch(10, 200, SLEEPING, 0, "swapper/1", prev_comm="python"),
            IntrEnter(20, Kind.IRQ, "reschedule", pid=0), IntrExit(21, Kind.IRQ, "reschedule", pid=0),
            IntrEnter(500, Kind.IRQ, "local_timer", pid=200), IntrExit(501, Kind.IRQ, "local_timer", pid=200),
            Switch(900, 200, SLEEPING, 0, "swapper/1", prev_comm="noise")])
    assert a.totals[(Kind.TASK, "noise")] == Tally(479 + 399, 1)
    assert a.totals[(Kind.TASK, "python")] == Tally(10, 1)


def test_an_inferred_owner_is_not_interference_and_stops_waiting():
    a = acc()
    a.feed([Switch(0, 0, 0, OWNER, "CPU 1/KVM"),
            Switch(100, OWNER, PREEMPTED, 400, "hidden"),   # owner preempted, still runnable
            # hidden -> owner was left out of the trace
            IntrEnter(300, Kind.IRQ, "local_timer", pid=OWNER), IntrExit(305, Kind.IRQ, "local_timer", pid=OWNER)])
    a.advance(1000)
    assert a.totals[(Kind.TASK, "hidden")] == Tally(200, 1)
    assert a.preempted == {OWNER: {Kind.TASK: 200, Kind.IRQ: 5}}


def test_events_without_a_pid_never_infer():
    a = acc()
    a.feed([Switch(0, 0, 0, 200, "noise"), IntrEnter(10, Kind.IRQ, "eth0"), IntrExit(20, Kind.IRQ, ""),
            Switch(30, 200, SLEEPING, 0, "swapper/1")])
    assert a.totals[(Kind.TASK, "noise")] == Tally(20, 1) and a.inferred == 0


def test_lost_events_reset_the_state():
    a = acc()
    a.feed([Switch(0, 0, 0, 200, "noise"), Lost(100), Switch(400, 999, 0, 0, "swapper/1", prev_comm="later")])
    # nothing is charged across the gap: not to the task before it, not to
    # the task the next event names
    assert a.totals[(Kind.TASK, "noise")] == Tally(0, 1) and a.lost == 1
    assert a.totals[(Kind.TASK, "later")] == Tally(0, 1)


def test_a_switch_inside_an_unclosed_irq_clears_it():
    a = acc(())
    a.feed([Switch(0, 0, 0, 200, "noise"), IntrEnter(10, Kind.IRQ, "eth0"), Switch(20, 200, 1, 201, "two"),
            Switch(50, 201, 1, 0, "swapper/1")])
    assert a.totals[(Kind.TASK, "two")] == Tally(30, 1) and a.inconsistent == 1


def test_time_never_runs_backwards():
    a = acc(())
    a.feed([Switch(100, 0, 0, 200, "noise")])
    a.advance(200)
    a.feed([Switch(150, 200, 1, 0, "swapper/1")])   # committed before advance() saw it
    assert a.totals[(Kind.TASK, "noise")] == Tally(100, 1)


def test_source_table_is_bounded():
    a = acc(())
    events = []
    for i in range(itf.MAX_SOURCES + 50):
        events += [Switch(i * 10, 0, 0, 1000 + i, f"name-{chr(65 + i % 26)}{'x' * (i // 26)}"),
                   Switch(i * 10 + 5, 1000 + i, 1, 0, "swapper/1")]
    a.feed(events)
    assert len(a.totals) == itf.MAX_SOURCES + 1
    other = a.totals[(Kind.TASK, itf.OTHER)]
    assert other.count == 50 and other.ns == 250
    assert sum(t.ns for t in a.totals.values()) == (itf.MAX_SOURCES + 50) * 5


@pytest.mark.parametrize("comm, folded", [
    ("kworker/1:2H", "kworker"), ("kworker/u8:0", "kworker/u"), ("ksoftirqd/1", "ksoftirqd"),
    ("migration/1", "migration"), ("irq/24-eth0", "irq/eth0"), ("CPU 1/KVM", "CPU N/KVM"),
    ("worker12", "workerN"), ("rtagent-noise", "rtagent-noise"), ("", "?"), ("rcu_preempt", "rcu_preempt"),
])
def test_fold_comm(comm, folded):
    assert fold_comm(comm) == folded


def test_runnable():
    assert itf.runnable(0) and itf.runnable(0x100)
    assert not itf.runnable(1) and not itf.runnable(0x80) and not itf.runnable(0x102)


# -- export ------------------------------------------------------------------


def totals(**kw):
    return {(Kind.TASK, k): Tally(*v) for k, v in kw.items()}


def test_sticky_top_bounds_and_stays_monotonic():
    top = StickyTop(2)
    first = top.export(totals(a=(10, 1), b=(5, 1), c=(1, 1)))
    assert first == {(Kind.TASK, "a"): (0, 0), (Kind.TASK, "b"): (0, 0), (Kind.TASK, "other"): (16, 3)}
    # c is now the biggest recently but not twice a's: no eviction
    second = top.export(totals(a=(30, 2), b=(5, 1), c=(20, 9)), recent={(Kind.TASK, "a"): 20, (Kind.TASK, "b"): 10, (Kind.TASK, "c"): 19})
    assert second == {(Kind.TASK, "a"): (20, 1), (Kind.TASK, "b"): (0, 0), (Kind.TASK, "other"): (35, 11)}
    for key, (ns, count) in first.items():
        assert second[key][0] >= ns and second[key][1] >= count
    assert sum(v[0] for v in second.values()) == 30 + 5 + 20


def test_sticky_top_evicts_the_weakest_for_a_much_bigger_newcomer():
    top = StickyTop(2)
    top.export(totals(a=(10, 1), b=(5, 1)))
    t = totals(a=(40, 2), b=(6, 2), c=(100, 9))
    out = top.export(t, recent={(Kind.TASK, "a"): 30, (Kind.TASK, "b"): 1, (Kind.TASK, "c"): 100})
    # b (weakest) is evicted: its series ends at its last exported value (0),
    # other gets its growth since then (+1 ns, +1 event) and from now on; c
    # starts at 0, with what it had before in other
    assert out == {(Kind.TASK, "a"): (30, 1), (Kind.TASK, "c"): (0, 0), (Kind.TASK, "other"): (10 + 6 + 100, 12)}
    again = top.export(totals(a=(40, 2), b=(9, 3), c=(150, 10)), recent={(Kind.TASK, "c"): 150})
    assert again[(Kind.TASK, "c")] == (50, 1)
    assert again[(Kind.TASK, "other")] == (out[(Kind.TASK, "other")][0] + 3, out[(Kind.TASK, "other")][1] + 1)


def test_sticky_top_admits_into_free_slots_later():
    top = StickyTop(2)
    top.export(totals(a=(10, 1)))
    out = top.export(totals(a=(10, 1), b=(50, 2)))
    assert out[(Kind.TASK, "b")] == (0, 0)
    out = top.export(totals(a=(10, 1), b=(80, 3)))
    assert out[(Kind.TASK, "b")] == (30, 1) and out[(Kind.TASK, "other")] == (60, 3)


def test_churn_keeps_every_series_monotonic_and_sums_exact():
    """The sum of the exported series' increases between two exports is
    exactly the accounted increase: no jump for rate() to see."""
    import random

    rng = random.Random(7)
    top = StickyTop(3)
    state: dict[str, list[int]] = {}
    last_other = 0
    last_total = 0
    exported_before: dict = {}
    for _ in range(300):
        name = f"s{rng.randrange(12)}"
        state.setdefault(name, [0, 0])
        state[name][0] += rng.randrange(1, 1000)
        state[name][1] += 1
        recent = {(Kind.TASK, n): rng.randrange(0, 5000) for n in state}
        out = top.export(totals(**{n: tuple(v) for n, v in state.items()}), recent=recent)
        other = out[(Kind.TASK, "other")][0]
        assert other >= last_other
        assert len(out) <= 4
        total = sum(v[0] for v in state.values())
        increase = sum(ns - exported_before.get(key, (0, 0))[0] for key, (ns, _c) in out.items()
                       if key in exported_before) + sum(ns for key, (ns, _c) in out.items() if key not in exported_before)
        assert increase == total - last_total
        for key, (ns, _c) in out.items():
            if key in exported_before:
                assert ns >= exported_before[key][0]
        exported_before, last_other, last_total = out, other, total


# -- window ------------------------------------------------------------------


def test_window_share_and_culprits_over_the_last_span():
    w = Window(span_s=60)
    w.add(0.0, {})
    w.add(10.0, totals(a=(int(1e9), 1)))
    w.add(30.0, totals(a=(int(3e9), 3)))
    w.add(70.0, totals(a=(int(6e9), 5), b=(int(1e9), 1)))
    view = w.view(1)
    # the baseline is the newest sample at or before 70 - 60 s
    assert len(w.samples) == 3
    assert view.window_s == pytest.approx(60.0)
    assert view.foreign_s == pytest.approx(6.0)
    assert view.share == pytest.approx(0.1)
    assert [(c.source, c.seconds, c.count) for c in view.culprits] == [("a", 5.0, 4), ("b", 1.0, 1)]
    assert view.to_json()["culprits"][0] == {"kind": "task", "source": "a", "seconds": 5.0, "count": 4}
    assert view.events == 5


def test_empty_window():
    assert Window().view(3).share == 0.0
