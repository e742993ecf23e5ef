"""The cpuset watch (rtagent/daemon/placement.py) over a fixture tree: a
real inotify descriptor and thread on temporary directories standing in
for the cpuset hierarchy, the way libvirt writes them (mkdir iothreadN,
then the parent's CPUs into its cpuset.cpus)."""

from __future__ import annotations

import time

import pytest

from rtagent.daemon import repin
from rtagent.daemon.placement import CLAMPED, MOVED, GuestPlacement, PlacementWatch, placement_of
from rtagent.kernel.tasks import Sched
from rtagent.libvirt_host import EventKind
from rtagent.model import IOThreadSpec, RealtimeSpec
from rtagent.tuning.guest.observe import observe_process
from rtagent.tuning.guest.plan import ThreadPlan, Want
from rtagent.tuning.guest.report import DomainReport
from tests.procfixture import FakeThread, ProcTree

pytestmark = pytest.mark.unit

PID = 4242
GROUP = "machine/qemu-1-g.libvirt-qemu"


def _tree(tmp_path) -> tuple[ProcTree, object]:
    tree = ProcTree(tmp_path)
    tree.add_process(PID, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "guest=g"],
                     threads=[FakeThread(4243, "IO iothread1", cpus="0"),
                              FakeThread(4245, "CPU 1/KVM", cpus="1", policy="fifo", priority=1)])
    mount = tmp_path / "cgroup" / "cpuset"
    (mount / GROUP / "emulator").mkdir(parents=True)
    (mount / GROUP / "emulator" / "cpuset.cpus").write_text("0\n")
    (mount / GROUP / "cpuset.cpus").write_text("0-1\n")
    tree.path("self").mkdir(parents=True, exist_ok=True)
    tree.path("self", "mounts").write_text(f"cgroup {mount} cgroup rw,cpuset 0 0\n")
    tree.path(str(PID), "task", str(PID), "cgroup").write_text(f"6:cpuset:/{GROUP}/emulator\n2:cpu,cpuacct:/{GROUP}/emulator\n")
    return tree, mount / GROUP


def _wait(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def _libvirt_adds(guest_dir, group: str, cpus: str = "0-1") -> None:
    (guest_dir / group).mkdir()
    (guest_dir / group / "cpuset.cpus").write_text("")  # cgroupfs makes the file; empty until written
    with open(guest_dir / group / "cpuset.cpus", "w") as f:
        f.write(cpus)


def test_a_new_iothread_group_gets_the_planned_cpus_and_nothing_else_is_written(tmp_path):
    tree, guest_dir = _tree(tmp_path)
    kernel = tree.kernel()
    assert kernel.cpusets.guest_dir(PID) == str(guest_dir)
    watch = PlacementWatch(kernel)
    watch.start()
    try:
        watch.set_guests({PID: GuestPlacement("u", "g", frozenset({0}), {9: frozenset({0, 1})})})
        _libvirt_adds(guest_dir, "iothread7")
        assert _wait(lambda: (guest_dir / "iothread7" / "cpuset.cpus").read_text() == "0")
        # The guest's own <iothreadpin> for that id wins over the emulator set.
        _libvirt_adds(guest_dir, "iothread9", "1")
        assert _wait(lambda: (guest_dir / "iothread9" / "cpuset.cpus").read_text() == "0-1")
        # A vCPU group (libvirt writes its vcpupin there) is not ours to write.
        _libvirt_adds(guest_dir, "vcpu2")
        time.sleep(0.2)
        assert (guest_dir / "vcpu2" / "cpuset.cpus").read_text() == "0-1"
        assert watch.clamped == 2
        # Not managed any more: a new group is left as libvirt made it.
        watch.set_guests({})
        _libvirt_adds(guest_dir, "iothread8")
        time.sleep(0.2)
        assert (guest_dir / "iothread8" / "cpuset.cpus").read_text() == "0-1"
    finally:
        watch.stop()


def test_a_foreign_write_of_an_existing_group_is_put_back_only_when_it_widens(tmp_path):
    tree, guest_dir = _tree(tmp_path)
    (guest_dir / "vcpu1").mkdir()
    (guest_dir / "vcpu1" / "cpuset.cpus").write_text("1\n")
    (guest_dir / "vcpu1" / "tasks").write_text("")
    seen: list = []
    watch = PlacementWatch(tree.kernel(), lambda ev, at: seen.append(ev))
    watch.start()
    try:
        watch.set_guests({PID: GuestPlacement("u", "g", frozenset({0}), groups={"vcpu1": frozenset({1}),
                                                                              "emulator": frozenset({0})})})

        def write(cpus: str) -> None:
            with open(guest_dir / "vcpu1" / "cpuset.cpus", "w") as f:
                f.write(cpus)

        write("0-1")  # virsh vcpupin g 1 0-1 --live: a widening, put back at once
        assert _wait(lambda: seen and (guest_dir / "vcpu1" / "cpuset.cpus").read_text() == "1")
        assert seen[-1].event == EventKind.CPUSET and seen[-1].keys == ("vcpu1", CLAMPED)
        assert seen[-1].uuid == "u"
        write("1")  # the plan itself (our own pin call through libvirt): nothing
        time.sleep(0.2)
        assert len(seen) == 1
        write("0")  # disjoint from the plan: not written back (libvirt's call would fail), handed over
        assert _wait(lambda: len(seen) >= 2)
        assert seen[-1].keys == ("vcpu1", MOVED)
        assert (guest_dir / "vcpu1" / "cpuset.cpus").read_text() == "0"
        assert watch.clamped == 1
    finally:
        watch.stop()


def test_a_process_outside_libvirts_layout_is_not_watched(tmp_path):
    tree, _ = _tree(tmp_path)
    tree.path(str(PID), "task", str(PID), "cgroup").write_text("6:cpuset:/user.slice\n")
    assert tree.kernel().cpusets.guest_dir(PID) is None
    watch = PlacementWatch(tree.kernel())
    watch.set_guests({PID: GuestPlacement("u", "g", frozenset({0}))})
    watch.set_guests({})  # nothing was watched: nothing to drop
    watch.stop()


def _report(tree, spec: RealtimeSpec) -> DomainReport:
    observed = observe_process(PID, tree.kernel())
    wants = {"main": Want(cpus=frozenset({0})), "iothread": Want(cpus=frozenset({0})),
             "vcpu": Want(policy="fifo", priority=1, cpus=frozenset({1}))}
    return DomainReport(name="g", uuid="u", spec=spec, pid=PID, observed=observed,
                        threads=[ThreadPlan(t, wants.get(t.kind, Want(cpus=frozenset({0}))), t.role)
                                 for t in observed.threads])


def test_placement_follows_the_plan_of_the_emulator_threads(tmp_path):
    tree, _ = _tree(tmp_path)
    spec = RealtimeSpec(domain="g", uuid="u", realtime=True, iothreads=(IOThreadSpec(3, frozenset({1})),))
    p = placement_of(_report(tree, spec))
    # The fixture's threads all sit in the emulator group (its cpu-controller path).
    assert p == GuestPlacement("u", "g", frozenset({0}), {3: frozenset({1})}, groups={})
    assert p.iothread_cpus(3) == {1} and p.iothread_cpus(7) == {0}
    assert placement_of(DomainReport(name="g", uuid="u", spec=spec)) is None  # no process


class _Tasks:
    def __init__(self, sched: dict[int, Sched], gone: set[int] = frozenset()):
        self._sched, self._gone = sched, gone

    def sched(self, tid: int, pid: int | None = None) -> Sched:
        if tid in self._gone:
            raise ProcessLookupError(tid)
        return self._sched[tid]


def test_a_repin_refreshes_only_scheduling_and_gives_up_on_a_gone_thread(tmp_path):
    tree, _ = _tree(tmp_path)
    last = _report(tree, RealtimeSpec(domain="g", uuid="u", realtime=True))
    now = {t.tid: Sched(t.policy, t.priority, t.cpus) for t in last.observed.threads}
    now[4245] = Sched("fifo", 1, frozenset({0, 1}))  # virsh vcpupin 1 0-1 --live
    fresh = repin.refreshed(last, _Tasks(now))
    assert fresh.thread(4245).cpus == {0, 1} and fresh.thread(4245).name == "CPU 1/KVM"
    assert fresh.thread(4243) is last.observed.thread(4243)  # unchanged: the same record
    assert fresh.memory == last.observed.memory and fresh.pid == PID
    assert repin.refreshed(last, _Tasks(now, gone={4243})) is None  # the thread set changed: observe in full
    assert repin.refreshed(None, _Tasks(now)) is None
