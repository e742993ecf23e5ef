"""Host partition planning from fixture /proc and /sys trees (no root, no host state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtagent.config import HostTuningConfig, Partition, parse_config
from rtagent.kernel import Kernel
from rtagent.kernel.tasks import PF_KTHREAD, PF_NO_SETAFFINITY, parse_stat
from rtagent.tuning.host import kthreads
from rtagent.tuning.host.conflicts import IrqConflictDetector
from rtagent.tuning.host.enforcer import HostPartitionEnforcer
from rtagent.tuning.host.plan import plan_host_partition, read_snapshot
from rtagent.vocab import HostKind

pytestmark = pytest.mark.unit

NOAFF = PF_NO_SETAFFINITY


def part(online="0-1", realtime="1", housekeeping=None):
    from rtagent.cpulist import parse_cpulist

    on = parse_cpulist(online)
    rt = parse_cpulist(realtime, allow_empty=True)
    hk = parse_cpulist(housekeeping) if housekeeping else on - rt
    return Partition(frozenset(on), frozenset(rt), frozenset(hk))


def stat_line(pid, comm, flags, *, ppid=2, starttime=None, policy=0, rt_priority=0):
    rest = ["0"] * 50
    rest[0] = "S"
    rest[1] = str(ppid)
    rest[6] = str(flags)
    rest[19] = str(starttime if starttime is not None else 1000 + pid)
    rest[37] = str(rt_priority)
    rest[38] = str(policy)
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


class Tree:
    """A fake /proc and /sys under tmp_path."""

    def __init__(self, root: Path):
        self.proc = root / "proc"
        self.sys = root / "sys"
        self.proc.mkdir()
        self.sys.mkdir()

    def kernel(self) -> Kernel:
        return Kernel(str(self.proc), str(self.sys))

    def task(self, pid, comm, cpus, *, kthread=True, noaff=False, policy=0, prio=0, ppid=2, threads=()):
        flags = (PF_KTHREAD if kthread else 0) | (NOAFF if noaff else 0)
        d = self.proc / str(pid)
        d.mkdir()
        (d / "stat").write_text(stat_line(pid, comm, flags, ppid=ppid, policy=policy, rt_priority=prio))
        status = f"Name:\t{comm}\nPid:\t{pid}\nCpus_allowed:\t3\nCpus_allowed_list:\t{cpus}\n"
        (d / "status").write_text(status)
        (d / "comm").write_text(comm + "\n")
        t = d / "task"
        t.mkdir()
        for tid, tcomm, tcpus in ((pid, comm, cpus), *threads):
            td = t / str(tid)
            td.mkdir()
            (td / "status").write_text(f"Name:\t{tcomm}\nCpus_allowed_list:\t{tcpus}\n")
            (td / "comm").write_text(tcomm + "\n")
        return d

    def irq(self, n, cpus, actions=(), effective=None):
        d = self.proc / "irq" / str(n)
        d.mkdir(parents=True)
        (d / "smp_affinity_list").write_text(cpus + "\n")
        if effective is not None:
            (d / "effective_affinity_list").write_text(effective + "\n")
        for a in actions:
            (d / a).mkdir()

    def default_irq(self, mask):
        (self.proc / "irq").mkdir(exist_ok=True)
        (self.proc / "irq" / "default_smp_affinity").write_text(mask + "\n")

    def wq(self, name, mask, writable=True):
        base = self.sys / "devices/virtual/workqueue"
        base.mkdir(parents=True, exist_ok=True)
        d = base / name if name else base
        d.mkdir(exist_ok=True)
        f = d / "cpumask"
        f.write_text(mask + "\n")
        if not writable:
            f.chmod(0o444)
        return f


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


def plan(tree, partition=None, tuning=None, **kw):
    snap = read_snapshot(tree.kernel())
    return plan_host_partition(snap, partition or part(), tuning or HostTuningConfig(), **kw)


def by_item(p):
    return {a.item: a for a in p.actions}


def left_items(p):
    return {a.item: a.reason for a in p.left_alone}


# ---------------------------------------------------------------------------
# kernel threads


def test_parse_stat_comm_with_spaces_and_parens():
    line = stat_line(42, "weird) (name x", PF_KTHREAD, starttime=77, policy=1, rt_priority=5)
    st = parse_stat(line)
    assert st.comm == "weird) (name x"
    assert st.flags == PF_KTHREAD and st.starttime == 77
    assert st.policy == "fifo" and st.rt_priority == 5


def test_only_kernel_threads_are_read_never_pid1(tree):
    tree.task(1, "systemd", "0-1", kthread=False, ppid=0)
    tree.task(2, "kthreadd", "0-1", ppid=0)
    tree.task(500, "bash", "0-1", kthread=False, ppid=1)
    tree.task(15, "rcu_preempt", "0-1")
    pids = [k.pid for k in tree.kernel().tasks.kthreads()]
    assert pids == [2, 15]
    p = plan(tree)
    assert {a.pid for a in p.actions} == {2, 15}


def test_movable_kthread_on_realtime_cpu_moves_to_housekeeping(tree):
    tree.task(15, "rcu_preempt", "0-1")
    tree.task(36, "kcompactd0", "0")  # already fine
    p = plan(tree)
    a = by_item(p)["kthread 15 (rcu_preempt)"]
    assert (a.kind, a.before, a.after, a.cpus) == ("kthread_affinity", "0-1", "0", frozenset({0}))
    assert "kthread 36 (kcompactd0)" not in by_item(p)
    assert any(k.startswith("kthread_affinity:36:") for k in p.compliant)


def test_target_keeps_housekeeping_part_of_affinity(tree):
    tree.task(45, "kswapd0", "1-2")  # node-local thread on CPUs 1-2
    tree.task(46, "kswapd1", "2-3")
    p = plan(tree, part("0-3", "2-3"))
    assert by_item(p)["kthread 45 (kswapd0)"].after == "1"
    assert by_item(p)["kthread 46 (kswapd1)"].after == "0-1"


def test_pinned_kthreads_left_alone_and_reported(tree):
    tree.task(21, "migration/1", "1", noaff=True, policy=1, prio=99)
    tree.task(20, "cpuhp/1", "1", noaff=True)
    tree.task(60, "idle_inject/1", "1", noaff=True)
    tree.task(23, "kworker/1:0-events", "1", noaff=True)
    tree.task(12, "kworker/u8:0-events_unbound", "0-1", noaff=True)
    tree.task(18, "migration/0", "0", noaff=True, policy=1, prio=99)
    p = plan(tree)
    assert p.actions == ()
    left = left_items(p)
    assert set(left) == {"kthread 21 (migration/1)", "kthread 20 (cpuhp/1)", "kthread 60 (idle_inject/1)",
                         "kthread 23 (kworker/1:0-events)", "kthread 12 (kworker/u8:0-events_unbound)"}
    assert "stopper" in left["kthread 21 (migration/1)"]
    assert "bound per-CPU kworker" in left["kthread 23 (kworker/1:0-events)"]
    assert "workqueue cpumask" in left["kthread 12 (kworker/u8:0-events_unbound)"]


@pytest.mark.parametrize("name", ["kvm-pit/4242", "kvm-nx-lpage-recovery-4242", "vhost-4242"])
def test_guest_kthreads_never_moved(tree, name):
    tree.task(77, name, "0-1")
    p = plan(tree)
    assert p.actions == ()
    assert "guest tuning" in left_items(p)[f"kthread 77 ({name})"]


@pytest.mark.parametrize("name,vcpu,expected", [
    ("ksoftirqd/1", 1, 2), ("ktimers/1", 1, 2), ("ktimersoftd/1", 1, 3),
    ("rcuc/1", 1, 4), ("rcub/1", 1, 4), ("ksoftirqd/1", 10, 11), ("rcuc/1", 98, 99), ("ksoftirqd/1", 99, 99),
])
def test_percpu_kthreads_raised_above_vcpus(tree, name, vcpu, expected):
    tree.task(22, name, "1", noaff=True)
    p = plan(tree, vcpu_priority=vcpu)
    (a,) = p.actions
    assert (a.kind, a.policy, a.priority) == ("kthread_priority", "fifo", expected)
    assert (a.before, a.after) == ("other 0", f"fifo {expected}")
    assert kthreads.rt_priority_for(name, vcpu) == expected


def test_percpu_kthread_on_housekeeping_or_already_high_untouched(tree):
    tree.task(14, "ksoftirqd/0", "0", noaff=True)
    tree.task(22, "ksoftirqd/1", "1", noaff=True, policy=1, prio=5)
    p = plan(tree)
    assert p.actions == ()
    assert any(k.startswith("kthread_priority:22:") for k in p.compliant)


def test_irq_thread_follows_irq(tree):
    tree.irq(25, "0-1", ["acpi"])
    tree.task(51, "irq/25-acpi", "1")
    p = plan(tree)
    assert by_item(p)["kthread 51 (irq/25-acpi)"].after == "0"
    # its IRQ refused before: the thread stays with it
    p = plan(tree, refused_irqs={25: "managed"})
    assert "kthread 51 (irq/25-acpi)" not in by_item(p)
    assert "refuses" in left_items(p)["kthread 51 (irq/25-acpi)"]
    # IRQ tuning off: the kernel would move the thread back, leave it
    p = plan(tree, tuning=HostTuningConfig(irqs=False))
    assert by_item(p) == {}
    assert "host_tuning.irqs is off" in left_items(p)["kthread 51 (irq/25-acpi)"]


# ---------------------------------------------------------------------------
# IRQs and workqueues


def test_irqs_and_default_affinity(tree):
    tree.default_irq("3")
    tree.irq(24, "0-1", ["ACPI:Ged"], effective="1")
    tree.irq(26, "0", ["ttyS0"])
    tree.irq(36, "0-1", ["virtio1-req.0"])
    p = plan(tree, refused_irqs={36: "refused: managed IRQ"})
    items = by_item(p)
    assert items["default_smp_affinity"].before == "3" and items["default_smp_affinity"].after == "1"
    assert (items["irq 24 (ACPI:Ged)"].before, items["irq 24 (ACPI:Ged)"].after) == ("0-1", "0")
    assert "irq 26 (ttyS0)" not in items and "irq_affinity:26" in p.compliant
    assert "irq 36 (virtio1-req.0)" not in items
    assert left_items(p)["irq 36 (virtio1-req.0)"] == "refused: managed IRQ"


def test_workqueue_masks(tree):
    tree.wq("", "3")
    tree.wq("writeback", "3")
    tree.wq("blkcg_punt_bio", "1")
    tree.wq("readonly_wq", "3", writable=False)
    (tree.sys / "devices/virtual/workqueue/power").mkdir()
    masks = tree.kernel().workqueues.all()
    names = [m.name for m in masks]
    assert names[0] == "" and "writeback" in names and "readonly_wq" not in names
    p = plan(tree)
    items = by_item(p)
    assert items["workqueue cpumask (global)"].after == "1"
    assert items["workqueue writeback cpumask"].after == "1"
    assert "workqueue blkcg_punt_bio cpumask" not in items
    # global mask before per-workqueue ones, workqueues before IRQs and threads
    assert p.actions[0].item == "workqueue cpumask (global)"


def test_wide_masks(tree):
    tree.wq("", "ffffffff,ffffffff")
    p = plan(tree, part("0-63", "32-63"))
    assert by_item(p)["workqueue cpumask (global)"].after == "ffffffff"
    p = plan(tree, part("0-63", "0-31"))
    assert by_item(p)["workqueue cpumask (global)"].after == "ffffffff,00000000"


def test_tuning_switches_and_empty_partition(tree):
    tree.wq("", "3")
    tree.default_irq("3")
    tree.irq(24, "0-1")
    tree.task(15, "rcu_preempt", "0-1")
    tree.task(22, "ksoftirqd/1", "1", noaff=True)
    all_kinds = {a.kind for a in plan(tree).actions}
    assert all_kinds == set(HostKind)
    off = HostTuningConfig(kthreads=False, kthread_priorities=False, irqs=False, workqueues=False)
    p = plan(tree, tuning=off)
    assert p.actions == ()
    assert "host_tuning.kthreads is off" in left_items(p)["kthread 15 (rcu_preempt)"]
    assert plan(tree, part("0-1", "")).actions == ()


def test_plan_with_config_from_parse_config(tree):
    cfg = parse_config({"host": {"realtime_cpus": "1"}})
    tree.task(15, "rcu_preempt", "0-1")
    p = plan(tree, cfg.partition, cfg.host_tuning)
    assert by_item(p)["kthread 15 (rcu_preempt)"].after == format(min(cfg.partition.housekeeping))


def test_config_state_file_key():
    cfg = parse_config({"host": {"realtime_cpus": "1"},
                        "host_tuning": {"state_file": "/tmp/x.json", "irq_conflict_threshold": 3}})
    assert cfg.host_tuning.state_file == "/tmp/x.json"
    assert HostTuningConfig().state_file == "/var/lib/rtagent/host-saved.json"


# ---------------------------------------------------------------------------
# apply / restore on fixture files (IRQs and workqueues are plain files here;
# kernel-thread syscalls are exercised by tests/threads/test_hostpart.py)


def _enforcer(tree, tmp_path, **kw):
    tuning = HostTuningConfig(kthreads=False, kthread_priorities=False,
                              irq_conflict_threshold=2, irq_conflict_window_s=100.0)
    clock = iter(range(0, 10_000, 1))
    return HostPartitionEnforcer(
        part(), tuning, kernel=Kernel(str(tree.proc), str(tree.sys), etc=str(tmp_path / "etc")),
        state_file=str(tmp_path / "state" / "saved.json"),
        clock=lambda: float(next(clock)), **kw)


def _read(p):
    return Path(p).read_text().strip()


def test_apply_saves_originals_counts_corrections_and_restores(tree, tmp_path):
    tree.default_irq("3")
    tree.irq(24, "0-1", ["a"])
    tree.irq(25, "0", ["b"])
    g = tree.wq("", "3")
    e = _enforcer(tree, tmp_path)
    r = e.enforce()
    assert r.ok and r.counts["changed"] == 3
    assert r.changes_by_kind == {"kthread_affinity": 0, "kthread_priority": 0,
                                 "irq_affinity": 2, "workqueue_cpumask": 1}
    assert r.corrections_by_kind == dict.fromkeys(HostKind, 0)
    assert _read(tree.proc / "irq/24/smp_affinity_list") == "0"
    assert _read(tree.proc / "irq/default_smp_affinity") == "1"
    assert _read(g) == "1"
    saved = json.loads((tmp_path / "state/saved.json").read_text())["entries"]
    assert saved["irq_affinity:24"]["value"] == "0-1"
    assert saved["irq_affinity:default"]["value"] == "3"

    # nothing drifted: nothing to do
    r = e.enforce()
    assert r.counts["changed"] == 0

    # drift behind the enforcer's back, including an IRQ that was fine at first
    (tree.proc / "irq/24/smp_affinity_list").write_text("1\n")
    (tree.proc / "irq/25/smp_affinity_list").write_text("0-1\n")
    r = e.enforce()
    assert r.corrections_by_kind["irq_affinity"] == 2
    assert all(x.correction for x in r.changed)
    saved = json.loads((tmp_path / "state/saved.json").read_text())["entries"]
    assert saved["irq_affinity:24"]["value"] == "0-1"  # the first original is kept
    assert saved["irq_affinity:25"]["value"] == "0-1"

    # a fresh enforcer (daemon restart) continues the same state file
    e2 = _enforcer(tree, tmp_path)
    (tree.proc / "irq/24/smp_affinity_list").write_text("0-1\n")
    r = e2.enforce()
    assert r.corrections_by_kind["irq_affinity"] == 1

    r = e2.restore()
    assert r.ok
    assert _read(tree.proc / "irq/24/smp_affinity_list") == "0-1"
    assert _read(tree.proc / "irq/25/smp_affinity_list") == "0-1"
    assert _read(tree.proc / "irq/default_smp_affinity") == "3"
    assert _read(g) == "3"
    assert not (tmp_path / "state/saved.json").exists()
    # nothing left to restore
    assert e2.restore().results == []


def test_irq_conflict_reported(tree, tmp_path):
    tree.irq(24, "0-1", ["a"])
    e = _enforcer(tree, tmp_path)
    e.enforce()
    conflicts = []
    for _ in range(4):
        (tree.proc / "irq/24/smp_affinity_list").write_text("0-1\n")
        conflicts.append(e.enforce().conflicts)
    assert conflicts[0] == [] and conflicts[1] == []
    assert conflicts[2] and conflicts[2][0]["irq"] == 24 and conflicts[2][0]["corrections"] == 3


def test_conflict_detector_window():
    d = IrqConflictDetector(threshold=2, window_s=10)
    assert not d.record(5, 0) and not d.record(5, 1)
    assert d.record(5, 2)
    assert not d.record(5, 30)  # the old ones fell out of the window
    assert d.count(5, 30) == 1


def test_refused_and_vanished_are_not_failures(tree, tmp_path, monkeypatch):
    import errno

    tree.irq(24, "0-1")
    tree.irq(36, "0-1")
    tree.irq(40, "0-1")
    e = _enforcer(tree, tmp_path)
    real = e.kernel.irqs.set_affinity

    def fake(irq, cpus):
        if irq == 36:
            raise OSError(errno.EIO, "Input/output error")
        if irq == 40:
            raise FileNotFoundError(errno.ENOENT, "gone")
        return real(irq, cpus)

    monkeypatch.setattr(e.kernel.irqs, "set_affinity", fake)
    r = e.enforce()
    assert r.ok
    assert [x.item for x in r.refused] == ["irq 36"] and "managed IRQ" in r.refused[0].detail
    assert [x.item for x in r.vanished] == ["irq 40"]
    saved = json.loads((tmp_path / "state/saved.json").read_text())["entries"]
    assert set(saved) == {"irq_affinity:24"}  # refused/vanished are not saved
    # the refused IRQ is not retried, it is reported as left alone
    r = e.enforce()
    assert r.results == [] or all(x.item != "irq 36" for x in r.results)
    assert any(a.item == "irq 36" for a in r.left_alone)
    e.restore()


def test_state_file_unwritable_changes_nothing(tree, tmp_path):
    tree.irq(24, "0-1")
    (tmp_path / "blocker").write_text("a file, not a directory")
    e = HostPartitionEnforcer(part(), HostTuningConfig(), kernel=Kernel(str(tree.proc), str(tree.sys)),
                              state_file=str(tmp_path / "blocker/saved.json"))
    r = e.enforce()
    assert not r.ok and r.errors
    assert [x.status for x in r.results] == ["error"]
    assert _read(tree.proc / "irq/24/smp_affinity_list") == "0-1"


def test_report_json_shape(tree, tmp_path):
    tree.irq(24, "0-1", ["a"])
    tree.task(21, "migration/1", "1", noaff=True)
    e = _enforcer(tree, tmp_path)
    data = e.enforce().to_json()
    json.dumps(data)
    assert set(data) >= {"operation", "ok", "partition", "counts", "changes_by_kind",
                         "corrections_by_kind", "results", "left_alone", "conflicts", "errors"}
    assert data["results"][0] == {"kind": "irq_affinity", "item": "irq 24 (a)", "before": "0-1", "after": "0",
                                  "status": "changed", "detail": "", "correction": False}
    assert data["left_alone"][0]["item"] == "kthread 21 (migration/1)"
    e.restore()


def test_kthread_syscall_guards_refuse_pid1_and_reused_pids(tree, tmp_path):
    e = HostPartitionEnforcer(part(), HostTuningConfig(), kernel=Kernel(str(tree.proc), str(tree.sys)),
                              state_file=str(tmp_path / "saved.json"))
    with pytest.raises(PermissionError):
        e._kthread(1, 1, "init")
    tree.task(15, "rcu_preempt", "0-1")
    kt = e._kthread(15, 1015, "rcu_preempt")
    assert kt.comm == "rcu_preempt"
    with pytest.raises(ProcessLookupError):
        e._kthread(15, kt.starttime + 1, "rcu_preempt")
    # A reused PID is vanished, never touched: the planned action reports it so.
    action = kthreads_action(kt)
    [r] = e.apply([action]).results
    assert r.status == "vanished"


def kthreads_action(kt):
    from rtagent.tuning.host.plan import KThreadAffinity

    return KThreadAffinity("kthread_affinity:15:1", kt.label, "0-1", "0", pid=15, starttime=1, comm=kt.comm,
                           cpus=frozenset({0}))
