"""The full check's shortcut over fixture trees: a guest's marks equal those
of its last observation exactly while nothing a judgement reads has changed
(each input changed alone is noticed), and the supervisor reconciles a guest
at a full check only when they differ.

PIDs here are above this kernel's ``pid_max`` (32768 on the test host; the
tree checks it), so even a planned syscall could never reach a real task."""

from __future__ import annotations

import dataclasses
import uuid as uuidlib

import pytest

from rtagent.config import parse_config
from rtagent.daemon import fullcheck
from rtagent.daemon.guests import GuestSupervisor
from rtagent.libvirt_host import RunState
from rtagent.model import RealtimeSpec, Violation
from rtagent.state import StateStore
from rtagent.tuning.guest.engine import Tuner
from rtagent.tuning.guest.marks import marks_of, read_marks
from rtagent.tuning.guest.observe import observe_process
from rtagent.vocab import Check
from tests.guests import pinned_cputune, rt_guest_xml, rt_metadata
from tests.procfixture import FakeThread, ProcTree

pytestmark = pytest.mark.unit

PID, PIT = 40100, 40200  # above pid_max: never a real task
NAME, UUID = "rtf-unit", str(uuidlib.UUID(int=14))
VCPU = "/machine/qemu-1-rtf-unit.libvirt-qemu/vcpu{}"
EMU = "/machine/qemu-1-rtf-unit.libvirt-qemu/emulator"


def _threads(**changed) -> list[FakeThread]:
    """The canonical guest as planned: vCPU 1 FIFO 1 on CPU 1, the rest on CPU 0."""
    ts = {
        PID: FakeThread(PID, "qemu-system-x86", cpus="0", cgroup=EMU),
        PID + 1: FakeThread(PID + 1, "call_rcu", cpus="0", cgroup=EMU),
        PID + 2: FakeThread(PID + 2, "CPU 0/KVM", cpus="0", cgroup=VCPU.format(0)),
        PID + 3: FakeThread(PID + 3, "CPU 1/KVM", cpus="1", policy="fifo", priority=1, cgroup=VCPU.format(1)),
    }
    for tid, fields in changed.items():
        t = int(tid[1:])
        ts[t] = dataclasses.replace(ts[t], **fields)
    return list(ts.values())


def _tree(base, *, threads: list[FakeThread] | None = None, pit: dict | None = None, **process) -> ProcTree:
    with open("/proc/sys/kernel/pid_max") as f:
        assert int(f.read()) < PID, "fixture PIDs must be beyond pid_max"
    tree = ProcTree(base)
    cmdline = ["/usr/bin/qemu-system-x86_64", "-name", f"guest={NAME},debug-threads=on", "-uuid", UUID]
    tree.add_process(PID, "qemu-system-x86", cmdline, threads if threads is not None else _threads(), **process)
    tree.add_kthread(PIT, f"kvm-pit/{PID}", **{"cpus": "0", "policy": "fifo", "priority": 2, **(pit or {})})
    tree.write_pidfile(NAME, PID)
    cpu = tree.base / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    (cpu / "online").write_text("0-1\n")
    return tree


def _marks(tree: ProcTree, kthreads=(PIT,)):
    return read_marks(tree.kernel(), PID, kthreads, live=False)


def test_marks_of_an_unchanged_guest_are_those_of_its_observation(tmp_path):
    tree = _tree(tmp_path)
    observed = observe_process(PID, tree.kernel())
    observed = dataclasses.replace(observed, kthreads=tuple(
        dataclasses.replace(t, role="kthread", kind="kvm-pit") for t in observe_process(PIT, tree.kernel()).threads))
    assert _marks(tree) == marks_of(observed)
    # Counters and VmRSS are no judgement's input: changed alone, still equal.
    busy = _tree(tmp_path / "busy", threads=_threads(t40103={"schedstat": (9, 9, 9), "voluntary": 99,
                                                              "nonvoluntary": 9}), vm_rss_kb=99999)
    assert _marks(busy) == _marks(tree)


# Every change the full check is the net for, each alone (tests/unit/test_kept.py too).
CHANGES = [
    {"threads": _threads() + [FakeThread(PID + 4, "IO iothread7", cpus="0", cgroup=EMU)]},  # born, FORK missed
    {"threads": _threads()[:-1]},  # a thread gone, EXIT missed
    {"threads": _threads(t40101={"comm": "worker"})},  # renamed, COMM missed
    {"threads": _threads(t40103={"starttime": 9000})},  # the TID reused by a new thread
    {"threads": _threads(t40102={"cgroup": EMU})},  # moved to another cgroup
    {"threads": _threads(t40101={"cpus": "0-1"})},  # re-pinned
    {"threads": _threads(t40103={"policy": "other", "priority": 0})},  # demoted
    {"threads": _threads(t40103={"priority": 5})},  # another priority
    {"threads": _threads(t40101={"flags": 0x400040 | 0x4000})},  # its flags (a kernel worker now)
    {"vm_lck_kb": 65536},  # memory locked now
    {"hugetlb_kb": 65536},  # hugepage-backed now
    {"swap_kb": 512},  # swapped out
    {"memlock": (4 << 20, 8 << 20)},  # RLIMIT_MEMLOCK changed (prlimit: no event)
    {"pit": {"cpus": "0-1"}},  # the per-VM kthread re-pinned
    {"pit": {"priority": 1}},  # … or its priority
]


@pytest.mark.parametrize("change", CHANGES)
def test_each_input_changed_alone_is_noticed(tmp_path, change):
    before = _marks(_tree(tmp_path / "before"))
    assert _marks(_tree(tmp_path / "after", **change)) != before


def test_a_gone_process_kthread_or_zombie_has_no_marks(tmp_path):
    tree = _tree(tmp_path)
    assert _marks(tree, kthreads=(PIT + 1,)) is None  # kvm-pit gone (or another PID)
    tree.remove_process(PID)
    assert _marks(tree) is None
    zombie = _tree(tmp_path / "z", threads=_threads(t40100={"state": "Z"}))
    assert _marks(zombie) is None


def test_settled_only_when_nothing_is_left_to_do(tmp_path):
    tree = _tree(tmp_path)
    cfg = _config(tmp_path)
    report = Tuner(cfg, kernel=tree.kernel()).inspect(_FakeGuest(tree))
    assert report.threads and all(tp.ok for tp in report.threads)
    assert fullcheck.settled(report)
    for check in (Check.VCPU_PENDING, Check.RT_BUDGET):
        assert not fullcheck.settled(dataclasses.replace(report, violations=[Violation(check, "x")]))
    drifted = _tree(tmp_path / "d", threads=_threads(t40101={"cpus": "0-1"}))
    assert not fullcheck.settled(Tuner(cfg, kernel=drifted.kernel()).inspect(_FakeGuest(drifted)))
    assert not fullcheck.settled(dataclasses.replace(report, observed=None))
    assert not fullcheck.settled(dataclasses.replace(report, withdrawn=True))


# -- the supervisor ---------------------------------------------------------------


class _FakeGuest:
    """libvirt's side of one guest (name, uuid, live XML): the unit tier has
    no libvirtd; the system tier runs the same path against a real one."""

    def __init__(self, tree: ProcTree, state: RunState = RunState.PAUSED, xml_kw: dict | None = None):
        self.name, self.uuid, self.known_state = NAME, UUID, state
        self.pins: list[tuple] = []
        self.xml_kw = {"metadata": ""} if xml_kw is None else xml_kw

    def xml(self) -> str:
        return rt_guest_xml(NAME, **self.xml_kw).replace("</name>", f"</name><uuid>{UUID}</uuid>", 1)

    def state(self) -> RunState:
        return RunState.PAUSED

    def pin_vcpu(self, *a) -> None:
        self.pins.append(("vcpu", *a))

    def pin_emulator(self, *a) -> None:
        self.pins.append(("emulator", *a))

    def pin_iothread(self, *a) -> None:
        self.pins.append(("iothread", *a))


class _FakeHost:
    """The one listing the full check asks libvirt for."""

    def __init__(self, tree: ProcTree):
        self.tree = tree
        self.listings = 0
        self.connections = 1  # LibvirtHost's count of connections opened
        self.xml_kw = {"metadata": ""}  # what the guest's live XML is made of

    def active_guests(self, names=None):
        self.listings += 1
        g = _FakeGuest(self.tree, xml_kw=dict(self.xml_kw))
        return {g.uuid: g} if names is None or names(g.name) else {}


def _config(tmp_path):
    """CPU 1 realtime (the fixture's sysfs has CPUs 0-1), vCPU 1 of rtf-* by a rule."""
    return parse_config({"host": {"realtime_cpus": "1"}, "realtime": {"rt_budget_us": 1000},
                         "daemon": {"lock_file": str(tmp_path / "rt.lock"), "guest_names": ["rtf-*"]},
                         "rule": [{"match_name": "rtf-*", "realtime_mask": "^0", "priority": 1}]},
                        kernel=_tree(tmp_path / "cfg").kernel())


class _CountingTuner(Tuner):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.inspected = 0

    def inspect_process(self, *a, **kw):
        self.inspected += 1
        return super().inspect_process(*a, **kw)


def _supervisor(tmp_path, tree: ProcTree, wall: list[float]):
    tuner = _CountingTuner(_config(tmp_path), kernel=tree.kernel())
    sup = GuestSupervisor(tuner.config, _FakeHost(tree), StateStore(), tuner=tuner, wall=lambda: wall[0])
    return sup, tuner


def test_a_full_check_reconciles_only_a_guest_whose_marks_changed(tmp_path):
    tree = _tree(tmp_path / "t")
    wall = [1000.0]
    sup, tuner = _supervisor(tmp_path, tree, wall)
    assert sup.resync() and tuner.inspected >= 1  # first sight: the full path
    first, seen = sup.last[UUID], tuner.inspected
    assert fullcheck.settled(first) and not first.changes

    wall[0] = 1030.0
    assert sup.resync() and tuner.inspected == seen, "an unchanged guest was re-read in full"
    assert sup.last[UUID] is first
    # What the skipped reconcile would have refreshed: the status's vCPU counters.
    vcpus = sup.store.read(lambda s: dict(s.guests[UUID].vcpus))
    assert {v: c.observed_at for v, c in vcpus.items()} == {0: 1030.0, 1: 1030.0}

    # A thread whose FORK event was missed: the next full check sees it.
    tree.add_thread(PID, FakeThread(PID + 4, "IO iothread7", cpus="0-1", cgroup=EMU))
    wall[0] = 1060.0
    assert sup.resync() and tuner.inspected > seen
    after = sup.last[UUID]
    assert PID + 4 in {tp.thread.tid for tp in after.threads}


@pytest.mark.parametrize("why", ["intent", "retry", "spec", "starting"])
def test_a_guest_with_a_reason_to_look_is_reconciled(tmp_path, why):
    tree = _tree(tmp_path / "t")
    sup, tuner = _supervisor(tmp_path, tree, [1000.0])
    sup.resync()
    if why == "intent":
        sup.intent_changed.add(UUID)
    elif why == "retry":
        sup.retry.schedule(UUID, 3)
    elif why == "spec":
        sup.specs[UUID] = (PID, RealtimeSpec(domain=NAME, uuid=UUID, realtime=True))  # re-derived (SIGHUP)
    guest = _FakeGuest(tree, RunState.STARTING if why == "starting" else RunState.PAUSED)
    assert not sup._stands(UUID, guest)


def test_a_changed_pcpu_owner_is_judged_again(tmp_path):
    tree = _tree(tmp_path / "t")
    sup, tuner = _supervisor(tmp_path, tree, [1000.0])
    sup.resync()
    last = sup.last[UUID]
    assert not last.conflicts
    # Another guest, started earlier, now claims CPU 1 for its realtime vCPU.
    rival = dataclasses.replace(last.claims, uuid=str(uuidlib.UUID(int=15)), name="rtf-rival", started=0.0)
    sup.claims.record(rival.uuid, rival)
    assert not sup._stands(UUID, _FakeGuest(tree))


def test_a_kthread_rescan_due_takes_the_full_path(tmp_path):
    tree = _tree(tmp_path / "t")
    sup, tuner = _supervisor(tmp_path, tree, [1000.0])
    sup.resync()
    assert sup._stands(UUID, _FakeGuest(tree))
    tuner.rescan_kthreads(PID)  # DEVICE_ADDED, or the rescan period over
    assert not sup._stands(UUID, _FakeGuest(tree))



def test_a_reconnect_re_derives_an_intent_whose_metadata_changed_while_no_connection_was_open(tmp_path):
    tree = _tree(tmp_path / "t")
    sup, tuner = _supervisor(tmp_path, tree, [1000.0])
    assert sup.resync()
    assert sup.specs[UUID][1].source == "rule"
    sup.host.xml_kw = {"metadata": rt_metadata(priority=2)}  # its METADATA_CHANGE event was lost
    seen = tuner.inspected
    assert sup.resync() and tuner.inspected == seen  # same connection: the cached intent stands

    sup.host.connections += 1  # a reconnect
    assert sup.resync() and tuner.inspected > seen
    spec = sup.specs[UUID][1]
    assert spec.source == "metadata" and spec.vcpu(1).priority == 2


def test_a_reconnect_keeps_an_intent_whose_metadata_did_not_change(tmp_path):
    tree = _tree(tmp_path / "t")
    sup, tuner = _supervisor(tmp_path, tree, [1000.0])
    assert sup.resync()
    spec, seen = sup.specs[UUID][1], tuner.inspected
    # A live re-pin rewrites the live XML's <cputune>: drift, never intent.
    sup.host.xml_kw = {"metadata": "", "cputune": pinned_cputune({0: "0", 1: "0-1"})}
    sup.host.connections += 1
    assert sup.resync()
    assert sup.specs[UUID][1] is spec and tuner.inspected == seen and UUID not in sup.intent_changed


def test_the_host_checks_get_the_managed_qemus_threads_as_observed(tmp_path, monkeypatch):
    """thread_names(): what the host checks' scan takes instead of reading a
    managed QEMU's threads again — the last observation's TIDs and names,
    a new thread once a reconcile has seen it."""
    from rtagent.daemon.hostside import HostSupervisor
    from rtagent.monitor import hostchecks

    tree = _tree(tmp_path / "t")
    sup, _tuner = _supervisor(tmp_path, tree, [1000.0])
    assert sup.thread_names() == {}
    sup.resync()
    names = sup.thread_names()
    assert set(names) == {PID}
    assert names[PID] == {t.tid: t.name for t in sup.last[UUID].observed.threads} and PID in names[PID]
    tree.add_thread(PID, FakeThread(PID + 4, "IO iothread7", cpus="0-1", cgroup=EMU))
    sup.resync()
    assert sup.thread_names()[PID][PID + 4] == "IO iothread7"

    seen = {}
    monkeypatch.setattr(hostchecks, "run_host_checks", lambda *a, **kw: seen.update(kw) or [])
    # No host enforcer: this is about the checks' scan, and an enforcer is
    # real (it would partition this machine with the default state file).
    no_tuning = dataclasses.replace(sup.config, host_tuning=dataclasses.replace(
        sup.config.host_tuning, kthreads=False, kthread_priorities=False, irqs=False, workqueues=False))
    hs = HostSupervisor(no_tuning, sup.store, known_threads=sup.thread_names)
    assert hs.enforcer is None
    hs.enforce({PID})
    assert seen["known_threads"] == sup.thread_names() and seen["exclude_pids"] == {PID}


# -- the cgroup read through the groups' task lists (kernel/members.py) -----------


def _grouped(tree: ProcTree, members: dict[str, list[int]], version: str = "v1"):
    """A cpu hierarchy whose groups list ``members`` (no RT budget files)."""
    from rtagent.kernel.members import GroupMembers

    mount = tree.mount_cgroups(version, rt=False)
    for group, tids in members.items():
        tree.add_cgroup(mount, group, runtime=None, tasks="".join(f"{t}\n" for t in tids), version=version)
    return mount, GroupMembers(tree.kernel())


_AS_OBSERVED = {EMU: [PID, PID + 1], VCPU.format(0): [PID + 2], VCPU.format(1): [PID + 3]}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_marks_from_the_groups_task_lists_equal_the_per_thread_read(tmp_path, version):
    tree = _tree(tmp_path)
    _mount, members = _grouped(tree, _AS_OBSERVED, version)
    groups = members.read([EMU, VCPU.format(0), VCPU.format(1), None, "/"])
    assert groups == {PID: EMU, PID + 1: EMU, PID + 2: VCPU.format(0), PID + 3: VCPU.format(1)}
    assert read_marks(tree.kernel(), PID, (PIT,), live=False, groups=groups) == _marks(tree)


def test_grouped_marks_read_no_cgroup_file_of_a_listed_thread(tmp_path, monkeypatch):
    from rtagent.kernel import fs

    tree = _tree(tmp_path)
    _mount, members = _grouped(tree, _AS_OBSERVED)
    groups = members.read(_AS_OBSERVED)
    paths = []
    real = fs.read_text
    monkeypatch.setattr(fs, "read_text", lambda p: paths.append(p) or real(p))
    read_marks(tree.kernel(), PID, (PIT,), live=False, groups=groups)
    assert not [p for p in paths if p.endswith("/cgroup") and f"/{PID}/task/" in p]
    assert [p for p in paths if p.endswith(f"/{PIT}/task/{PIT}/cgroup")]  # kvm-pit: its own file, as before


def test_a_move_is_noticed_through_the_groups(tmp_path):
    """Moved to another of the guest's groups, or out of all of them (its own
    cgroup file is read then): either way the marks differ."""
    before = _marks(_tree(tmp_path / "before"))
    moved = _tree(tmp_path / "moved", threads=_threads(t40102={"cgroup": EMU}))
    _m, members = _grouped(moved, {EMU: [PID, PID + 1, PID + 2], VCPU.format(0): [], VCPU.format(1): [PID + 3]})
    marks = read_marks(moved.kernel(), PID, (PIT,), live=False, groups=members.read(_AS_OBSERVED))
    assert marks != before and marks.threads[2].cgroup_cpu == EMU
    away = _tree(tmp_path / "away", threads=_threads(t40102={"cgroup": "/elsewhere"}))
    _m, members = _grouped(away, {EMU: [PID, PID + 1], VCPU.format(0): [], VCPU.format(1): [PID + 3]})
    groups = members.read(_AS_OBSERVED)
    assert PID + 2 not in groups
    marks = read_marks(away.kernel(), PID, (PIT,), live=False, groups=groups)
    assert marks != before and marks.threads[2].cgroup_cpu == "/elsewhere"


def test_no_hierarchy_or_an_unreadable_group_lists_nothing(tmp_path):
    from rtagent.kernel.members import GroupMembers

    tree = _tree(tmp_path)
    assert GroupMembers(tree.kernel()).read(_AS_OBSERVED) == {}  # no cgroup mount in the tree
    _m, members = _grouped(tree, {EMU: [PID, PID + 1]})
    assert members.read(_AS_OBSERVED) == {PID: EMU, PID + 1: EMU}  # the vcpu groups are missing


def test_a_full_check_through_the_groups_reconciles_a_missed_move(tmp_path):
    tree = _tree(tmp_path / "t")
    mount, _members = _grouped(tree, _AS_OBSERVED)
    sup, tuner = _supervisor(tmp_path, tree, [1000.0])
    sup.resync()
    seen = tuner.inspected
    sup.resync()
    assert tuner.inspected == seen, "an unchanged guest was re-read in full"
    # vCPU 0's thread moved into the emulator group; no event.
    tree.add_thread(PID, FakeThread(PID + 2, "CPU 0/KVM", cpus="0", cgroup=EMU))
    (mount / EMU.lstrip("/") / "tasks").write_text(f"{PID}\n{PID + 1}\n{PID + 2}\n")
    (mount / VCPU.format(0).lstrip("/") / "tasks").write_text("")
    sup.resync()
    assert tuner.inspected > seen
