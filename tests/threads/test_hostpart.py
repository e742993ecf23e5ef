"""The host partition enforced on this real machine (realtime CPU 1), read back
from the kernel, corrected after drift, and restored to the exact BEFORE state.

Only kernel threads, IRQs and workqueue cpumasks are touched (never PID 1,
never a user process); every test restores in ``finally`` even on failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rtagent import cli
from rtagent.config import parse_config
from rtagent.cpulist import parse_cpulist, parse_hexmask
from rtagent.monitor.hostchecks import CHECK_NAMES, SEVERITIES, run_host_checks
from rtagent.kernel import Kernel
from rtagent.tuning.host import kthreads
from rtagent.tuning.host.enforcer import HostPartitionEnforcer

pytestmark = pytest.mark.threads


def _read_kthreads() -> list[kthreads.KThread]:
    return [kthreads.KThread.from_task(t) for t in Kernel().tasks.kthreads()]

RT_CPU = 1
WQ = Path("/sys/devices/virtual/workqueue")


def _need_two_cpus():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    if not {0, RT_CPU} <= online:
        pytest.skip("needs CPUs 0 and 1 online")


def _config(tmp_path):
    return parse_config({"host": {"realtime_cpus": str(RT_CPU)},
                         "host_tuning": {"state_file": str(tmp_path / "host-saved.json")}})


def _kthread_state():
    """(pid, starttime) -> (comm, affinity, policy, priority), read with syscalls."""
    out = {}
    for kt in _read_kthreads():
        if kthreads.is_guest_thread(kt.comm):
            continue  # owned by the guest tuning engine (and other tests' guests)
        try:
            aff = frozenset(os.sched_getaffinity(kt.pid))
            policy = os.sched_getscheduler(kt.pid)
            prio = os.sched_getparam(kt.pid).sched_priority
        except ProcessLookupError:
            continue
        out[(kt.pid, kt.starttime)] = (kt.comm, aff, policy, prio)
    return out


def _irq_state():
    out = {}
    for d in Path("/proc/irq").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = (d / "smp_affinity_list").read_text().strip()
            except FileNotFoundError:
                pass
    return out


def _wq_state():
    out = {}
    for p in [WQ / "cpumask", WQ / "cpumask_requested", *sorted(WQ.glob("*/cpumask"))]:
        if p.exists():
            out[str(p)] = p.read_text().strip()
    return out


def snapshot():
    return {
        "kthreads": _kthread_state(),
        "irqs": _irq_state(),
        "default_smp_affinity": Path("/proc/irq/default_smp_affinity").read_text().strip(),
        "workqueues": _wq_state(),
    }


def assert_same(before, after):
    """Everything that existed before and still exists is back to its BEFORE
    value.  Kernel threads are matched by (pid, start time); kworkers that
    came and went meanwhile are the kernel's business, not a difference."""
    common = before["kthreads"].keys() & after["kthreads"].keys()
    assert len(common) > 10
    diffs = {}
    for key in common:
        b, a = before["kthreads"][key], after["kthreads"][key]
        if b[1:] != a[1:]:
            diffs[key] = (b, a)
    assert diffs == {}
    assert {k: v for k, v in after["irqs"].items() if k in before["irqs"]} == \
        {k: v for k, v in before["irqs"].items() if k in after["irqs"]}
    assert after["default_smp_affinity"] == before["default_smp_affinity"]
    assert after["workqueues"] == before["workqueues"]


def _pid_of(comm):
    for kt in _read_kthreads():
        if kt.comm == comm:
            return kt
    return None


def test_enforce_drift_and_restore_on_this_machine(tmp_path):
    _need_two_cpus()
    cfg = _config(tmp_path)
    before = snapshot()
    enforcer = HostPartitionEnforcer(cfg.partition, cfg.host_tuning, vcpu_priority=1)
    assert enforcer.state_file == str(tmp_path / "host-saved.json")
    try:
        r1 = enforcer.enforce()
        assert r1.ok, (r1.failed, r1.errors)
        print("\nfirst enforce:", r1.counts, r1.changes_by_kind)
        print("refused:", [(x.item, x.detail) for x in r1.refused])
        assert r1.corrections_by_kind == dict.fromkeys(r1.corrections_by_kind, 0)
        assert Path(enforcer.state_file).exists()
        refused_irqs = {int(x.key.split(":")[1]) for x in r1.refused if x.kind == "irq_affinity"
                        and x.key != "irq_affinity:default"}

        # no movable kernel thread (that existed when we enforced) may run on CPU 1
        at_enforce = {(k[0], k[1]) for k in before["kthreads"]}
        offenders = []
        for kt in _read_kthreads():
            if (kt.pid, kt.starttime) not in at_enforce or not kt.movable or kthreads.is_guest_thread(kt.comm):
                continue
            if kthreads.rt_priority_for(kt.comm, 1) is not None:
                continue  # rcub/N: stays, raised instead
            m = kt.comm.startswith("irq/") and int(kt.comm[4:].split("-")[0])
            if m is not False and m in refused_irqs:
                continue  # follows an IRQ that refused to move
            try:
                if RT_CPU in os.sched_getaffinity(kt.pid):
                    offenders.append(kt.label)
            except ProcessLookupError:
                pass
        assert offenders == []

        # every IRQ that accepted is off CPU 1, read back from the kernel
        moved_irqs = [int(x.key.split(":")[1]) for x in r1.changed
                      if x.kind == "irq_affinity" and x.key != "irq_affinity:default"]
        for irq, text in _irq_state().items():
            if irq in refused_irqs:
                continue
            assert RT_CPU not in parse_cpulist(text, allow_empty=True), f"IRQ {irq} still on CPU {RT_CPU}: {text}"
        assert parse_hexmask(Path("/proc/irq/default_smp_affinity").read_text()) == {0}

        # ksoftirqd/1 above the vCPUs (FIFO 1) → FIFO 2
        ks = _pid_of(f"ksoftirqd/{RT_CPU}")
        assert ks is not None
        assert os.sched_getscheduler(ks.pid) == os.SCHED_FIFO
        assert os.sched_getparam(ks.pid).sched_priority == 2

        assert parse_hexmask((WQ / "cpumask").read_text()) == {0}

        # nothing to do on the next pass
        r_idle = enforcer.enforce()
        assert r_idle.ok and sum(r_idle.corrections_by_kind.values()) == 0

        # drift behind the enforcer's back: one kthread and one IRQ
        victim = next(kt for kt in _read_kthreads()
                      if kt.comm in ("khungtaskd", "kcompactd0", "oom_reaper", "kauditd", "rcu_preempt")
                      and kt.movable)
        os.sched_setaffinity(victim.pid, {0, RT_CPU})
        assert moved_irqs, "no IRQ accepted a new affinity on this machine"
        irq = moved_irqs[0]
        Path(f"/proc/irq/{irq}/smp_affinity_list").write_text("0-1\n")
        assert RT_CPU in parse_cpulist(Path(f"/proc/irq/{irq}/smp_affinity_list").read_text())

        r2 = enforcer.enforce()
        assert r2.ok
        print("after drift:", r2.counts, r2.corrections_by_kind)
        assert r2.corrections_by_kind["kthread_affinity"] >= 1
        assert r2.corrections_by_kind["irq_affinity"] >= 1
        corrected = {x.item for x in r2.changed if x.correction}
        assert victim.label in corrected
        assert any(item.startswith(f"irq {irq}") for item in corrected)
        assert RT_CPU not in os.sched_getaffinity(victim.pid)
        assert RT_CPU not in parse_cpulist(Path(f"/proc/irq/{irq}/smp_affinity_list").read_text())
        # the saved original is still the first one
        saved = json.loads(Path(enforcer.state_file).read_text())["entries"]
        assert saved[f"irq_affinity:{irq}"]["value"] == before["irqs"][irq]
    finally:
        r3 = enforcer.restore()
    assert r3.ok, (r3.failed, r3.errors)
    assert not Path(enforcer.state_file).exists()
    assert_same(before, snapshot())


def test_cli_host_apply_and_restore(tmp_path, capsys):
    _need_two_cpus()
    conf = tmp_path / "rtagent.toml"
    conf.write_text(f'[host]\nrealtime_cpus = "{RT_CPU}"\n[host_tuning]\nstate_file = "{tmp_path}/saved.json"\n')
    before = snapshot()
    try:
        rc = cli.main(["host", "apply", "--config", str(conf), "--json"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["ok"]
        assert out["counts"]["changed"] > 0
        assert (tmp_path / "saved.json").exists()
        rc = cli.main(["host", "apply", "--config", str(conf)])
        text = capsys.readouterr().out
        assert rc == 0 and "host partition: realtime CPUs 1, housekeeping CPUs 0" in text
    finally:
        rc = cli.main(["host", "restore", "--config", str(conf)])
        text = capsys.readouterr().out
    assert rc == 0 and "restore:" in text
    assert not (tmp_path / "saved.json").exists()
    assert_same(before, snapshot())


def test_cli_config_error_exit_2(tmp_path, capsys):
    assert cli.main(["host", "apply", "--config", str(tmp_path / "missing.toml")]) == 2
    conf = tmp_path / "bad.toml"
    conf.write_text('[host_tuning]\nstate_file = 3\n')
    assert cli.main(["host", "restore", "--config", str(conf)]) == 2


def test_host_checks_on_this_machine():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cfg = parse_config({"host": {"realtime_cpus": str(RT_CPU)}})
    checks = run_host_checks(cfg.partition, exclude_pids={os.getpid()})
    assert [c.name for c in checks] == list(CHECK_NAMES)
    for c in checks:
        assert isinstance(c.ok, bool) and c.detail and c.severity in SEVERITIES
        assert (c.severity == "info") if c.ok else c.severity in SEVERITIES
        print(f"\n{c.severity:7} {'ok' if c.ok else 'NOT OK':6} {c.name}: {c.detail}", end="")
    # and with the partition this machine resolves by itself ("auto")
    auto = run_host_checks(parse_config({}).partition)
    assert [c.name for c in auto] == list(CHECK_NAMES)


def test_cli_apply_without_realtime_cpus_does_nothing(tmp_path, capsys):
    if parse_config({}).partition.realtime:
        pytest.skip("this host has isolcpus/nohz_full CPUs: 'auto' is not empty")
    conf = tmp_path / "auto.toml"
    conf.write_text(f'[host_tuning]\nstate_file = "{tmp_path}/saved.json"\n')
    before = snapshot()
    assert cli.main(["host", "apply", "--config", str(conf)]) == 0
    assert "no realtime CPUs are configured" in capsys.readouterr().out
    assert not (tmp_path / "saved.json").exists()
    assert cli.main(["host", "restore", "--config", str(conf)]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    assert_same(before, snapshot())
