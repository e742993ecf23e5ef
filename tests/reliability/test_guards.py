"""Starvation guards on every path: plan, apply, drift correction.

* never SCHED_FIFO/RR on a thread whose affinity includes a CPU that a
  SCHED_OTHER thread of the same guest may use;
* never above ``realtime.max_priority`` for guest threads (the per-VM
  kvm-pit kthread is the documented exception: one above the highest vCPU,
  placed on a *non-realtime* vCPU's CPUs as KubeVirt does);
* the agent itself is never realtime and never on realtime CPUs
  (tests/reliability/test_privileges.py checks the daemon's threads).

The plan is checked by property over random guests and random observed
thread states; the executor against real threads (threads tier), where the
guard must hold even when the plan was right but the kernel disagrees.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtagent.config import Partition, RealtimeConfig
from rtagent.intent import derive_spec
from rtagent.tuning.guest.apply import execute
from rtagent.tuning.guest.observe import Observed, ProcessMemory, ThreadInfo
from rtagent.tuning.guest.plan import (
    REALTIME,
    SetAffinity,
    SetScheduler,
    plan_actions,
    plan_domain,
)
from tests.unit.test_intent_properties import CFG, MAX_PRIORITY, PCPUS, any_guests

pytestmark = pytest.mark.reliability

PART = Partition(online=frozenset(PCPUS), realtime=frozenset(range(2, 8)), housekeeping=frozenset({0, 1}))
POLICIES = ["other", "fifo", "rr", "batch", "idle"]


def _thread(tid, name, role, vcpu, kind, policy, prio, cpus):
    cgroup = f"/machine/g/vcpu{vcpu}" if role == "vcpu" else "/machine/g/emulator"
    return ThreadInfo(tid=tid, name=name, role=role, vcpu=vcpu, kind=kind, policy=policy,
                      priority=prio if policy in REALTIME else 0, cpus=frozenset(cpus), cgroup_cpu=cgroup,
                      run_time_ns=0, run_delay_ns=0, timeslices=0, voluntary_ctxt_switches=0,
                      nonvoluntary_ctxt_switches=0, delayacct_blkio_ticks=0)


@st.composite
def observed_states(draw, nvcpus: int, niothreads: int):
    """Whatever the threads look like now: any policy, priority, affinity."""
    cpus = st.frozensets(st.sampled_from(PCPUS), min_size=1, max_size=8)
    pol = st.sampled_from(POLICIES)
    prio = st.integers(1, 99)
    threads = [_thread(100, "qemu-system-x86", "emulator", None, "main", draw(pol), draw(prio), draw(cpus))]
    for v in range(nvcpus):
        threads.append(_thread(101 + v, f"CPU {v}/KVM", "vcpu", v, "vcpu", draw(pol), draw(prio), draw(cpus)))
    for i in range(1, niothreads + 1):
        threads.append(_thread(200 + i, f"IO iothread{i}", "emulator", None, "iothread", draw(pol), draw(prio),
                               draw(cpus)))
    threads.append(_thread(300, "worker", "emulator", None, "worker", draw(pol), draw(prio), draw(cpus)))
    pit = _thread(400, "kvm-pit/100", "kthread", None, "kvm-pit", draw(pol), draw(prio), draw(cpus))
    return Observed(pid=100, threads=tuple(threads), kthreads=(pit,), memory=ProcessMemory())


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(any_guests, st.data())
def test_plans_never_make_a_thread_realtime_next_to_a_sched_other_sibling(guest, data):
    spec = derive_spec(guest.xml(), CFG)
    if not spec.valid:
        return  # invalid intents plan nothing at all (checked below)
    observed = data.draw(observed_states(guest.nvcpus, len(guest.iothreadpins)))
    plan = plan_domain(spec, observed, PART, CFG.realtime)
    rt_wants = [tp for tp in plan.threads if tp.want.policy in REALTIME and tp.thread.kind != "kvm-pit"]
    other_cpus = set()
    for tp in plan.threads:
        if tp.want.policy not in REALTIME:
            assert tp.want.cpus, f"a SCHED_OTHER thread of the guest left unpinned: {tp.thread.name}"
            other_cpus |= tp.want.cpus
    for tp in rt_wants:
        assert tp.thread.role == "vcpu"
        assert len(tp.want.cpus) == 1, tp
        assert not (tp.want.cpus & other_cpus), (tp.thread.name, tp.want.cpus, other_cpus)
        assert 1 <= tp.want.priority <= MAX_PRIORITY
    pit = [tp for tp in plan.threads if tp.thread.kind == "kvm-pit"]
    for tp in pit:
        if tp.want.policy in REALTIME:
            top = max(v.priority for v in spec.realtime_vcpus)
            assert tp.want.priority == min(top + 1, 99)
            rt_pcpus = {c for v in spec.realtime_vcpus for c in v.cpus}
            assert not (tp.want.cpus & rt_pcpus), "kvm-pit never on a realtime vCPU's pCPU"
    # Order: a thread goes realtime only after (and only if) its narrowing,
    # and the executor re-checks the exact CPU set right before the syscall.
    actions = plan_actions(plan.threads)
    seen_affinity = set()
    for a in actions:
        if isinstance(a, SetAffinity):
            seen_affinity.add(a.tid)
        elif a.policy in REALTIME:
            tp = next(t for t in plan.threads if t.thread.tid == a.tid)
            assert a.require_cpus == tp.want.cpus
            assert tp.affinity_ok or a.tid in seen_affinity
            assert a.priority <= (MAX_PRIORITY if tp.thread.kind != "kvm-pit" else 99)
        else:
            # Leaving realtime happens before any widening of the same thread.
            assert a.tid not in seen_affinity


@pytest.mark.unit
@settings(max_examples=150, deadline=None)
@given(any_guests, st.data())
def test_invalid_intents_plan_nothing(guest, data):
    spec = derive_spec(guest.xml(), CFG)
    if spec.valid:
        return
    observed = data.draw(observed_states(guest.nvcpus, len(guest.iothreadpins)))
    plan = plan_domain(spec, observed, PART, RealtimeConfig(max_priority=MAX_PRIORITY))
    assert plan.threads == [] and plan_actions(plan.threads) == []


# -- the executor against real threads ------------------------------------------


def _policy(tid):
    return os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority, os.sched_getaffinity(tid)


@pytest.mark.threads
def test_executor_refuses_fifo_when_affinity_is_not_exactly_the_planned_cpu(qemu_like):
    h = qemu_like("--vcpus", "2")
    tid = h.vcpu_tids[1]
    os.sched_setaffinity(tid, {0, 1})
    try:
        # A plan that "forgot" the narrowing: the executor still refuses.
        res = execute([SetScheduler(tid=tid, policy="fifo", priority=1, name="CPU 1/KVM",
                                    require_cpus=frozenset({1}))])
        assert [r.outcome for r in res] == ["skipped"]
        assert _policy(tid)[0] == os.SCHED_OTHER
        # Narrowing that fails (CPU 4095 does not exist): no FIFO either.
        res = execute([SetAffinity(tid=tid, cpus=frozenset({4095}), name="CPU 1/KVM"),
                       SetScheduler(tid=tid, policy="fifo", priority=1, name="CPU 1/KVM",
                                    require_cpus=frozenset({4095}))])
        assert [r.outcome for r in res] == ["failed", "skipped"]
        assert _policy(tid)[0] == os.SCHED_OTHER
    finally:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


@pytest.mark.threads
def test_executor_demotes_a_realtime_thread_it_cannot_narrow(qemu_like):
    """Drift correction: a FIFO thread found with a wide mask whose narrowing
    fails is put back to SCHED_OTHER rather than left realtime next to others.
    (The helper's threads only sleep; the FIFO spell is harmless.)"""
    h = qemu_like("--vcpus", "2")
    tid = h.vcpu_tids[1]
    os.sched_setaffinity(tid, {0, 1})
    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
    try:
        res = execute([SetAffinity(tid=tid, cpus=frozenset({4095}), name="CPU 1/KVM", before=frozenset({0, 1}))])
        assert [r.outcome for r in res] == ["failed", "changed"]
        assert "demoted" in res[1].detail
        assert _policy(tid)[0] == os.SCHED_OTHER
    finally:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
