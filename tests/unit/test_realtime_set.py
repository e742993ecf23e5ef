"""No FIFO outside the host's realtime CPUs (issue: ``realtime_cpus = "auto"``
with no isolated CPUs made vCPUs FIFO anyway), and the start-up warning."""

from __future__ import annotations

import pytest

from rtagent.config import Partition, RealtimeConfig, parse_config, partition_warning
from rtagent.kernel import Kernel
from rtagent.tuning.guest.plan import REALTIME, plan_domain
from tests.unit.test_tuning_plan import P, guest_threads, observed, spec, thread

pytestmark = pytest.mark.unit

RT = RealtimeConfig()
NONE = Partition(online=frozenset({0, 1, 2, 3}), realtime=frozenset(), housekeeping=frozenset({0, 1, 2, 3}))


def wants(partition):
    pit = thread(200, "kvm-pit/100", "kthread", kind="kvm-pit", cgroup="/")
    plan = plan_domain(spec(), observed(*guest_threads(), kthreads=[pit]), partition, RT)
    return {tp.thread.name: tp.want for tp in plan.threads}, plan.violations


def test_no_realtime_cpus_means_no_fifo_at_all():
    want, violations = wants(NONE)
    assert not [n for n, w in want.items() if w.policy in REALTIME], want
    # Still pinned as the intent says, and the reason is reported.
    assert want["CPU 1/KVM"].cpus == {2}
    assert [v.check for v in violations] == ["partition"]
    assert "no vCPU is made realtime" in violations[0].detail


def test_a_vcpu_pinned_outside_the_realtime_set_is_not_made_realtime():
    only3 = Partition(online=P.online, realtime=frozenset({3}), housekeeping=frozenset({0, 1, 2}))
    want, violations = wants(only3)
    assert want["CPU 1/KVM"].policy == "other"  # pinned to CPU 2, not realtime here
    assert want["CPU 2/KVM"].policy == "fifo"  # pinned to CPU 3, realtime
    assert want["kvm-pit/100"].policy == "fifo"  # still serves the realtime vCPU 2
    assert any(v.check == "partition" and "CPU 2" in v.detail for v in violations)


def test_the_realtime_set_keeps_fifo():
    want, _ = wants(P)
    assert want["CPU 1/KVM"].policy == want["CPU 2/KVM"].policy == "fifo"


def test_start_up_warning_for_auto_with_no_isolated_cpus(tmp_path):
    cpu = tmp_path / "sys/devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text("0-1\n")
    (cpu / "isolated").write_text("\n")
    (cpu / "nohz_full").write_text("(null)\n")
    cfg = parse_config({}, kernel=Kernel(sys=str(tmp_path / "sys")))
    text = partition_warning(cfg)
    assert text is not None and 'host.realtime_cpus = "auto"' in text and "no vCPU will be made realtime" in text
    (cpu / "isolated").write_text("1\n")
    assert partition_warning(parse_config({}, kernel=Kernel(sys=str(tmp_path / "sys")))) is None
    assert partition_warning(parse_config({"host": {"realtime_cpus": "1"}}, kernel=Kernel(sys=str(tmp_path / "sys")))) is None


@pytest.mark.parametrize("section, key, value", [
    ("metrics", "max_connections", 0), ("metrics", "max_connections", 10001),
    ("metrics", "idle_timeout_s", 0), ("metrics", "request_timeout_s", 301),
    ("status", "max_clients", 0), ("status", "timeout_s", -1), ("status", "max_clients", "many"),
])
def test_client_limits_are_validated(section, key, value):
    from rtagent.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({section: {key: value}}, resolve=False)
    assert f"{section}.{key}" in str(err.value)


def test_a_fifo_vcpu_outside_the_realtime_set_is_put_back_to_other():
    from rtagent.tuning.guest.plan import SetScheduler, plan_actions

    ts = guest_threads(v1=thread(102, "CPU 1/KVM", "vcpu", 1, "vcpu", policy="fifo", prio=1, cpus=(2,),
                                 cgroup="/machine/g/vcpu1"))
    plan = plan_domain(spec(), observed(*ts), NONE, RT)
    acts = [a for a in plan_actions(plan.threads) if isinstance(a, SetScheduler) and a.tid == 102]
    assert [(a.policy, a.priority) for a in acts] == [("other", 0)]
