"""Kernel preflight checks over fixture trees: both values of each."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtagent.config import Partition
from rtagent.kernel import Kernel
from rtagent.kernel import features as kf
from rtagent.monitor import preflight as pf
from rtagent.monitor.hostchecks import parse_cmdline
from tests.procfixture import KTHREAD_FLAGS, USER_FLAGS, stat_line

pytestmark = pytest.mark.unit

PART = Partition(frozenset({0, 1, 2, 3}), frozenset({2, 3}), frozenset({0, 1}))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- fair_server ----------------------------------------------------------------


def kern(tmp_path) -> Kernel:
    return Kernel(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"))


def fair(tmp_path, runtimes: dict[int, str]) -> Kernel:
    for cpu, value in runtimes.items():
        write(tmp_path / f"sys/kernel/debug/sched/fair_server/cpu{cpu}/runtime", value)
        write(tmp_path / f"sys/kernel/debug/sched/fair_server/cpu{cpu}/period", "1000000000\n")
    return kern(tmp_path)


def test_fair_server_on_a_realtime_cpu_warns(tmp_path):
    c = pf.check_fair_server(PART, fair(tmp_path, {0: "50000000\n", 2: "50000000\n", 3: "0\n"}))
    assert (c.ok, c.severity, c.value) == (False, "warning", 1)
    assert "CPU 2: 50000000 ns" in c.detail and "write 0 to" in c.detail and "CPU 2-3" in c.detail


def test_fair_server_off_on_realtime_cpus(tmp_path):
    c = pf.check_fair_server(PART, fair(tmp_path, {0: "50000000\n", 2: "0\n", 3: "0\n"}))
    assert (c.ok, c.value) == (True, 0)


def test_fair_server_absent_or_unknowable(tmp_path):
    c = pf.check_fair_server(PART, kern(tmp_path))
    assert c.ok and c.value is None and "mount -t debugfs" in c.detail
    (tmp_path / "sys/kernel/debug/sched").mkdir(parents=True)
    assert pf.check_fair_server(PART, kern(tmp_path)).detail.startswith("no fair deadline server")
    # present but unreadable (restricted debugfs)
    (tmp_path / "sys/kernel/debug/sched/fair_server/cpu2").mkdir(parents=True)
    c = pf.check_fair_server(PART, kern(tmp_path))
    assert c.ok and c.value is None and "cannot read" in c.detail


# -- rt_group_sched_boot --------------------------------------------------------


def test_rt_group_sched_in_effect(tmp_path):
    write(tmp_path / "sys/fs/cgroup/cpu/cpu.rt_runtime_us", "950000\n")
    c = pf.check_rt_group_sched_boot(parse_cmdline("quiet"), kern(tmp_path))
    assert (c.ok, c.value) == (True, 1) and "rt_group_sched=0" in c.detail
    c = pf.check_rt_group_sched_boot(parse_cmdline("rt_group_sched=1"), kern(tmp_path))
    assert (c.ok, c.value) == (True, 1) and "rt_group_sched=1" in c.detail


def test_rt_group_sched_off_at_boot(tmp_path):
    c = pf.check_rt_group_sched_boot(parse_cmdline("rt_group_sched=0"), kern(tmp_path))
    assert (c.ok, c.value) == (True, 0)
    assert pf.check_rt_group_sched_boot(parse_cmdline(""), kern(tmp_path)).value == 0


def test_rt_group_sched_boot_parameter_ignored(tmp_path):
    write(tmp_path / "sys/fs/cgroup/cpu,cpuacct/cpu.rt_runtime_us", "950000\n")
    c = pf.check_rt_group_sched_boot(parse_cmdline("rt_group_sched=0"), kern(tmp_path))
    assert (c.ok, c.severity, c.value) == (False, "warning", 1) and "ignores it" in c.detail


# -- tracefs ---------------------------------------------------------------------


def tracefs_tree(root: Path, events=kf.TRACE_EVENTS) -> None:
    (root / "instances").mkdir(parents=True)
    for e in events:
        write(root / "events" / e / "format", "name: x\nID: 1\n")


def test_tracefs_mounted_with_events(tmp_path):
    tracefs_tree(tmp_path / "tr")
    write(tmp_path / "proc/self/mounts", f"nodev {tmp_path / 'tr'} tracefs rw 0 0\n")
    c = pf.check_tracefs(kern(tmp_path))
    assert (c.ok, c.value) == (True, 1)


def test_tracefs_missing_or_incomplete(tmp_path):
    write(tmp_path / "proc/self/mounts", "proc /proc proc rw 0 0\n")
    c = pf.check_tracefs(kern(tmp_path))
    assert (c.ok, c.severity, c.value) == (False, "warning", 0) and "mount -t tracefs" in c.detail
    tracefs_tree(tmp_path / "sys/kernel/tracing", events=kf.TRACE_EVENTS[:1])
    c = pf.check_tracefs(kern(tmp_path))
    assert not c.ok and "irq/irq_handler_entry" in c.detail


# -- smt_siblings ------------------------------------------------------------------


def topo(tmp_path, siblings: dict[int, str]) -> Kernel:
    for cpu, text in siblings.items():
        write(tmp_path / f"sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list", text + "\n")
    return kern(tmp_path)


def test_smt_sibling_running_other_work_warns(tmp_path):
    part = Partition(frozenset(range(4)), frozenset({2}), frozenset({0, 1, 3}))
    c = pf.check_smt_siblings(part, topo(tmp_path, {2: "2-3", 3: "2-3"}))
    assert (c.ok, c.severity, c.value) == (False, "warning", 1) and "2↔3" in c.detail and "nosmt" in c.detail


def test_smt_siblings_both_realtime_or_no_smt(tmp_path):
    assert pf.check_smt_siblings(PART, topo(tmp_path, {2: "2-3", 3: "2-3"})).value == 0
    assert pf.check_smt_siblings(PART, topo(tmp_path / "b", {2: "2", 3: "3"})).ok


# -- vhost_worker --------------------------------------------------------------------


def proc_tree(tmp: Path, osrelease: str, procs: dict[int, tuple[str, list[tuple[int, str]]]],
              kthreads: frozenset[int] = frozenset()) -> Kernel:
    root = tmp / "proc"
    write(root / "sys/kernel/osrelease", osrelease + "\n")
    for pid, (comm, threads) in procs.items():
        write(root / str(pid) / "comm", comm + "\n")
        flags = KTHREAD_FLAGS if pid in kthreads else USER_FLAGS
        write(root / str(pid) / "stat", stat_line(pid, comm, flags=flags, ppid=2 if pid in kthreads else 1))
        (root / str(pid) / "task").mkdir(parents=True, exist_ok=True)
        for tid, tcomm in threads:
            write(root / str(pid) / "task" / str(tid) / "comm", tcomm + "\n")
    return kern(tmp)


def test_vhost_workers_as_threads_inside_qemu(tmp_path):
    proc = proc_tree(tmp_path, "6.8.0", {100: ("qemu-system-x86", [(100, "qemu-system-x86"), (105, "vhost-100")])})
    c = pf.check_vhost_worker(proc)
    assert (c.ok, c.value) == (True, 1) and "inside QEMU (1 seen)" in c.detail


def test_vhost_workers_as_kthreads(tmp_path):
    proc = proc_tree(tmp_path, "5.15.0", {100: ("qemu-system-x86", [(100, "qemu-system-x86")]),
                                          101: ("vhost-100", [(101, "vhost-100")])}, kthreads=frozenset({101}))
    c = pf.check_vhost_worker(proc)
    assert (c.ok, c.value) == (True, 0) and "kernel threads (1 vhost-<pid> kthreads)" in c.detail


@pytest.mark.parametrize("release, value", [("6.4.0", 1), ("6.1.55-rt", 0)])
def test_vhost_mode_from_the_kernel_version_when_none_runs(tmp_path, release, value):
    assert pf.check_vhost_worker(proc_tree(tmp_path, release, {})).value == value


def test_preflight_names_in_order(tmp_path):
    out = pf.preflight_checks(PART, kern(tmp_path), {})
    assert tuple(c.name for c in out) == pf.PREFLIGHT_NAMES
