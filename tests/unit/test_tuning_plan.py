"""Pure planning: wants, violations and action order, without a host."""

import pytest

from rtagent.config import Partition, RealtimeConfig
from rtagent.model import MemorySpec, RealtimeSpec, VcpuSpec
from rtagent.tuning.guest.observe import Observed, ProcessMemory, ThreadInfo
from rtagent.tuning.guest.plan import SetAffinity, SetScheduler, plan_actions, plan_domain

pytestmark = pytest.mark.unit

P = Partition(online=frozenset({0, 1, 2, 3}), realtime=frozenset({2, 3}), housekeeping=frozenset({0, 1}))
RT = RealtimeConfig()


def thread(tid, name, role="emulator", vcpu=None, kind="other", policy="other", prio=0, cpus=(0, 1, 2, 3),
           cgroup=None):
    if cgroup is None:
        cgroup = f"/machine/g/vcpu{vcpu}" if role == "vcpu" else "/machine/g/emulator"
    return ThreadInfo(tid=tid, name=name, role=role, vcpu=vcpu, kind=kind, policy=policy, priority=prio,
                      cpus=frozenset(cpus), cgroup_cpu=cgroup, run_time_ns=0, run_delay_ns=0, timeslices=0,
                      voluntary_ctxt_switches=0, nonvoluntary_ctxt_switches=0, delayacct_blkio_ticks=0)


def spec(**kw):
    base = dict(
        domain="g", realtime=True, source="metadata",
        vcpus=(VcpuSpec(0, False, "other", 0, frozenset({1})),
               VcpuSpec(1, True, "fifo", 1, frozenset({2})),
               VcpuSpec(2, True, "fifo", 1, frozenset({3}))),
        emulator_cpus=frozenset({0, 1}), memory=MemorySpec(size_bytes=2**26),
    )
    base.update(kw)
    return RealtimeSpec(**base)


def observed(*threads, kthreads=()):
    return Observed(pid=100, threads=tuple(threads), kthreads=tuple(kthreads), memory=ProcessMemory())


def guest_threads(**overrides):
    ts = {
        "main": thread(100, "qemu-system-x86", kind="main", cpus=(0, 1)),
        "v0": thread(101, "CPU 0/KVM", "vcpu", 0, "vcpu", cpus=(1,), cgroup="/machine/g/vcpu0"),
        "v1": thread(102, "CPU 1/KVM", "vcpu", 1, "vcpu", cpus=(2,), cgroup="/machine/g/vcpu1"),
        "v2": thread(103, "CPU 2/KVM", "vcpu", 2, "vcpu", cpus=(3,), cgroup="/machine/g/vcpu2"),
    }
    ts.update(overrides)
    return list(ts.values())


def test_wants_for_each_role():
    pit = thread(200, "kvm-pit/100", "kthread", kind="kvm-pit", cgroup="/")
    plan = plan_domain(spec(), observed(*guest_threads(), kthreads=[pit]), P, RT)
    want = {tp.thread.name: tp.want for tp in plan.threads}
    assert want["CPU 1/KVM"].policy == "fifo" and want["CPU 1/KVM"].cpus == {2}
    assert want["CPU 0/KVM"].policy == "other" and want["CPU 0/KVM"].cpus == {1}
    assert want["qemu-system-x86"].cpus == {0, 1}
    # kvm-pit: FIFO one above the vCPUs, on the first non-realtime vCPU's CPUs.
    assert (want["kvm-pit/100"].policy, want["kvm-pit/100"].priority, want["kvm-pit/100"].cpus) == ("fifo", 2, {1})
    assert plan.realtime_cgroups == {"/machine/g/vcpu1", "/machine/g/vcpu2"}
    assert plan.violations == []


def test_kvm_pit_modes():
    pit = thread(200, "kvm-pit/100", "kthread", kind="kvm-pit", cgroup="/")
    hk = plan_domain(spec(), observed(kthreads=[pit]), P, RealtimeConfig(kvm_pit="housekeeping"))
    assert hk.threads[0].want.cpus == {0, 1} and hk.threads[0].want.policy == "other"
    off = plan_domain(spec(), observed(kthreads=[pit]), P, RealtimeConfig(kvm_pit="off"))
    assert off.threads == []


def test_going_realtime_narrows_affinity_first():
    v1 = thread(102, "CPU 1/KVM", "vcpu", 1, "vcpu", cpus=(0, 1, 2, 3))
    plan = plan_domain(spec(), observed(*guest_threads(v1=v1)), P, RT)
    acts = [a for a in plan_actions(plan.threads) if a.tid == 102]
    assert [type(a) for a in acts] == [SetAffinity, SetScheduler]
    assert acts[1].require_cpus == {2}


def test_leaving_realtime_drops_policy_first():
    # An emulator thread someone made FIFO and moved onto a realtime CPU.
    main_t = thread(100, "qemu-system-x86", kind="main", policy="fifo", prio=50, cpus=(2,))
    plan = plan_domain(spec(), observed(*guest_threads(main=main_t)), P, RT)
    acts = [a for a in plan_actions(plan.threads) if a.tid == 100]
    assert [type(a) for a in acts] == [SetScheduler, SetAffinity]
    assert acts[0].policy == "other" and acts[0].require_cpus is None


def test_compliant_guest_plans_nothing():
    ts = guest_threads(
        v1=thread(102, "CPU 1/KVM", "vcpu", 1, "vcpu", policy="fifo", prio=1, cpus=(2,)),
        v2=thread(103, "CPU 2/KVM", "vcpu", 2, "vcpu", policy="fifo", prio=1, cpus=(3,)),
    )
    plan = plan_domain(spec(), observed(*ts), P, RT)
    assert all(tp.ok for tp in plan.threads)
    assert plan_actions(plan.threads) == []


def test_violation_names_are_stable():
    ts = guest_threads(v1=thread(102, "CPU 1/KVM", "vcpu", 1, "vcpu", policy="fifo", prio=5, cpus=(1, 2)))
    plan = plan_domain(spec(), observed(*ts), P, RT)
    checks = sorted(v.check for tp in plan.threads for v in tp.violations())
    # vCPU 1: wrong priority and a wide mask; vCPU 2: not realtime at all.
    assert checks == ["vcpu_affinity", "vcpu_policy", "vcpu_policy"]


def test_batch_is_acceptable_for_non_realtime_want():
    ts = guest_threads(main=thread(100, "qemu-system-x86", kind="main", policy="batch", cpus=(0, 1)))
    plan = plan_domain(spec(), observed(*ts), P, RT)
    assert next(tp for tp in plan.threads if tp.thread.tid == 100).ok


def test_missing_vcpu_thread_and_partition_violations():
    s = spec(vcpus=(VcpuSpec(0, False, "other", 0, frozenset({1})), VcpuSpec(1, True, "fifo", 1, frozenset({1}))),
             emulator_cpus=frozenset({0}))
    plan = plan_domain(s, observed(guest_threads()[0]), P, RT)
    assert {v.check for v in plan.violations} == {"vcpu_count", "partition"}
    empty = Partition(online=P.online, realtime=frozenset(), housekeeping=P.online)
    plan = plan_domain(spec(), observed(*guest_threads()), empty, RT)
    assert [v.check for v in plan.violations] == ["partition"]


def test_invalid_or_non_realtime_spec_plans_nothing():
    assert plan_domain(spec(errors=("bad",)), observed(*guest_threads()), P, RT).threads == []
    assert plan_domain(spec(realtime=False), observed(*guest_threads()), P, RT).threads == []


def test_unpinned_non_realtime_vcpu_goes_to_emulator_set():
    s = spec(vcpus=(VcpuSpec(0, False, "other", 0, frozenset()), VcpuSpec(1, True, "fifo", 1, frozenset({2}))))
    plan = plan_domain(s, observed(*guest_threads()[:3]), P, RT)
    assert next(tp for tp in plan.threads if tp.thread.vcpu == 0).want.cpus == {0, 1}


def test_iothreads_follow_their_pinning():
    from rtagent.model import IOThreadSpec

    io = thread(150, "IO iothread1", kind="iothread", cpus=(0, 1, 2, 3))
    s = spec(iothreads=(IOThreadSpec(1, frozenset({1})),))
    plan = plan_domain(s, observed(io), P, RT)
    tp = plan.threads[0]
    assert tp.pin_via == "iothread" and tp.iothread == 1 and tp.want.cpus == {1}


def test_vcpu_not_yet_in_its_cgroup_is_not_made_realtime():
    # A hotplugged vCPU thread still in the emulator cgroup: libvirt would
    # fail to move a FIFO thread into a vcpuN cgroup without budget.
    v2 = thread(103, "CPU 2/KVM", "vcpu", 2, "vcpu", cpus=(3,), cgroup="/machine/g/emulator")
    plan = plan_domain(spec(), observed(*guest_threads(v2=v2)), P, RT)
    assert 103 not in {tp.thread.tid for tp in plan.threads}
    assert [v.check for v in plan.violations] == ["vcpu_pending"]
    assert all(a.tid != 103 for a in plan_actions(plan.threads))


def test_no_per_vcpu_cgroups_means_no_waiting():
    ts = [thread(101 + i, f"CPU {i}/KVM", "vcpu", i, "vcpu", cpus=(1 + i,), cgroup="/") for i in range(3)]
    plan = plan_domain(spec(), observed(*ts), P, RT)
    assert {tp.thread.tid for tp in plan.threads} == {101, 102, 103}
