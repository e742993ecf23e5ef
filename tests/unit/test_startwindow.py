"""The start window's pure parts: the measurement (daemon/startwindow.py),
libvirt's guest directory names, and the cgroup watcher over a plain
directory tree (inotify behaves the same on tmpfs as on cgroupfs for mkdir
and write)."""

from __future__ import annotations

import queue
import time

import pytest

from rtagent.daemon import startwindow
from rtagent.daemon.startwindow import Baseline, Path
from rtagent.kernel.cgroups import RtTree
from rtagent.kernel.cgwatch import CgroupWatcher, GuestDir, Signal, parse_guest_dir, read_tasks
from rtagent.tuning.guest.ledger import BudgetLedger
from rtagent.tuning.guest.rtgroup import share_from_parent

pytestmark = pytest.mark.unit


def test_unprotected_time_counts_from_the_placement():
    e = startwindow.placed(1, 4242, 600_000)
    assert e.baseline is Baseline.PLACEMENT and e.unprotected_ns is None and not e.landed
    e = startwindow.landed(e, 1, 4242, 600_000, Path.EARLY, True)
    assert e.unprotected_ns == 0 and e.path is Path.EARLY
    late = startwindow.landed(startwindow.placed(1, 4242, 600_000), 1, 4242, 1_850_000, Path.EVENT, False)
    assert late.unprotected_ns == 1_250_000
    assert late.to_json()["unprotected_seconds"] == pytest.approx(0.00125)


def test_only_the_first_landing_counts():
    e = startwindow.landed(startwindow.placed(1, 7, 100), 1, 7, 100, Path.EARLY, True)
    again = startwindow.landed(e, 1, 7, 9_000_000, Path.EVENT, False)  # a later drift correction
    assert again == e


def test_without_a_placement_the_thread_start_is_the_baseline():
    e = startwindow.landed(None, 0, 9, 2_000_000, Path.EVENT, False)
    assert e.baseline is Baseline.THREAD_START and e.unprotected_ns == 2_000_000
    # A different thread than the one placed (QEMU re-created it): from its birth.
    e = startwindow.landed(startwindow.placed(0, 8, 1_000), 0, 9, 5_000, Path.EVENT, False)
    assert e.tid == 9 and e.baseline is Baseline.THREAD_START and e.unprotected_ns == 5_000
    assert startwindow.placed(0, 9, None).baseline is Baseline.THREAD_START


@pytest.mark.parametrize("name, parsed", [
    ("qemu-108-rtw-probe1.libvirt-qemu", GuestDir(108, "rtw-probe1")),
    ("machine-qemu\\x2d3\\x2dweb\\x2d1.scope", GuestDir(3, "web-1")),
    ("emulator", None),
    ("vcpu0", None),
    ("qemu-x-name.libvirt-qemu", None),
    ("lxc-1-name.libvirt-lxc", None),
])
def test_guest_directory_names(name, parsed):
    assert parse_guest_dir(name) == parsed


def test_read_tasks(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "tasks").write_text("12\n13\n")
    assert read_tasks(str(tmp_path), "/g") == [12, 13]
    assert read_tasks(str(tmp_path), "/gone") == []


def _next(q: queue.Queue, want: Signal, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sig = q.get(timeout=max(0.01, deadline - time.monotonic()))
        if sig.signal == want:
            return sig
    raise AssertionError(f"no {want} signal")


def test_watcher_follows_libvirts_layout(tmp_path):
    """The sequence libvirt makes: guest group, vcpuN, the tid written into
    vcpuN/tasks, the group removed."""
    (tmp_path / "machine").mkdir()
    q: queue.Queue = queue.Queue()
    w = CgroupWatcher(str(tmp_path), q.put, "cpuset")
    w.start()
    try:
        guest = tmp_path / "machine" / "qemu-7-rtw-a.libvirt-qemu"
        guest.mkdir()
        sig = _next(q, Signal.GUEST)
        assert sig.group == "/machine/qemu-7-rtw-a.libvirt-qemu" and sig.guest == GuestDir(7, "rtw-a")
        assert sig.hierarchy == "cpuset"
        (guest / "emulator").mkdir()
        (guest / "vcpu1").mkdir()
        assert _next(q, Signal.VCPU).vcpu == 1
        (guest / "vcpu1" / "tasks").write_text("4242\n")
        placed = _next(q, Signal.PLACED)
        assert placed.vcpu == 1 and read_tasks(str(tmp_path), placed.group + "/vcpu1") == [4242]
        assert w.watched_guests() == 1
        (guest / "vcpu1" / "tasks").unlink()
        (guest / "vcpu1").rmdir()
        (guest / "emulator").rmdir()
        guest.rmdir()
        assert _next(q, Signal.GONE).group == sig.group
        assert w.watched_guests() == 0
    finally:
        w.stop()


def test_watcher_sees_a_guests_parent_created_later(tmp_path):
    q: queue.Queue = queue.Queue()
    w = CgroupWatcher(str(tmp_path), q.put)
    w.start()
    try:
        # The guest group may be made before the watcher has a watch on its
        # new parent: it looks inside once it has.
        (tmp_path / "machine").mkdir()
        (tmp_path / "machine" / "qemu-1-x.libvirt-qemu").mkdir()
        assert _next(q, Signal.GUEST).guest == GuestDir(1, "x")
    finally:
        w.stop()


# -- the start window's budget: reserve, place, settle (a fixture hierarchy) ------


def _group(root, path: str, runtime: int, tasks: str = "") -> None:
    d = root / path.lstrip("/") if path != "/" else root
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.rt_runtime_us").write_text(f"{runtime}\n")
    (d / "cpu.rt_period_us").write_text("1000000\n")
    (d / "tasks").write_text(tasks)


def _runtime(root, path: str) -> int:
    return int((root / path.lstrip("/") / "cpu.rt_runtime_us").read_text())


def _invariant_holds(root) -> bool:
    tree = RtTree(str(root), "v1")

    def ok(group: str) -> bool:
        kids = tree.children(group)
        return sum(tree.runtime(k) for k in kids) <= tree.runtime(group) and all(ok(k) for k in kids)

    return ok("/")


def test_share_from_parent_takes_what_the_parent_holds_beyond_its_children(tmp_path):
    _group(tmp_path, "/", 950_000)
    _group(tmp_path, "/machine", 20_000)
    _group(tmp_path, "/machine/g", 20_000)
    _group(tmp_path, "/machine/g/vcpu0", 5_000)
    _group(tmp_path, "/machine/g/vcpu1", 0)
    tree = RtTree(str(tmp_path), "v1")
    assert share_from_parent(tree, "/machine/g/vcpu1", 2) == 7_000  # 15 ms free, two to come, whole ms
    assert _runtime(tmp_path, "/machine/g/vcpu1") == 7_000 and _invariant_holds(tmp_path)
    _group(tmp_path, "/machine/g/vcpu2", 0)
    assert share_from_parent(tree, "/machine/g/vcpu2", 1) == 8_000
    _group(tmp_path, "/machine/g/vcpu3", 0)
    assert share_from_parent(tree, "/machine/g/vcpu3", 1) is None  # nothing left: plan in full
    assert _runtime(tmp_path, "/machine/g/vcpu3") == 0


def test_children_hold_counts_what_is_there(tmp_path, monkeypatch):
    _group(tmp_path, "/", 950_000)
    _group(tmp_path, "/machine", 30_000)
    _group(tmp_path, "/machine/a", 10_000)
    _group(tmp_path, "/machine/b", 15_000)
    tree = RtTree(str(tmp_path), "v1")
    assert tree.children_hold("/machine") == 25_000
    assert tree.children_hold("/machine", besides="/machine/a") == 15_000
    assert tree.children_hold("/machine/a") == 0  # no children
    # A child listed and gone before its budget is read (a guest destroyed
    # meanwhile) holds nothing: no FileNotFoundError for the caller.
    listed = tree.children("/machine")
    (tmp_path / "machine/b/cpu.rt_runtime_us").unlink()
    monkeypatch.setattr(RtTree, "children", lambda self, group: listed)
    assert tree.children_hold("/machine") == 10_000


def test_a_start_reserves_places_and_settles_to_the_equal_share(tmp_path):
    _group(tmp_path, "/", 950_000)
    _group(tmp_path, "/machine", 0)
    _group(tmp_path, "/machine/other", 0)
    _group(tmp_path, "/machine/other/vcpu1", 0, "10\n")
    ledger = BudgetLedger(RtTree(str(tmp_path), "v1"))
    ledger.claim("other", {"/machine/other/vcpu1"})
    ledger.grant()
    assert _runtime(tmp_path, "/machine/other/vcpu1") == 950_000
    # The starting guest's group appears: half for it, as if it were a leaf.
    _group(tmp_path, "/machine/new", 0, "20\n")
    ledger.reserve("new", "/machine/new")
    assert _runtime(tmp_path, "/machine/new") == 475_000 and _invariant_holds(tmp_path)
    # Its two realtime vCPU groups appear one after the other: one write each.
    _group(tmp_path, "/machine/new/vcpu1", 0)
    ledger.place("new", {"/machine/new/vcpu1"}, "/machine/new", "/machine/new/vcpu1", 2)
    assert _runtime(tmp_path, "/machine/new/vcpu1") == 237_000 and _invariant_holds(tmp_path)
    _group(tmp_path, "/machine/new/vcpu2", 0)
    ledger.place("new", {"/machine/new/vcpu1", "/machine/new/vcpu2"}, "/machine/new", "/machine/new/vcpu2", 1)
    assert _runtime(tmp_path, "/machine/new/vcpu2") == 238_000 and _invariant_holds(tmp_path)
    # The start is over: three realtime vCPU groups, an equal share each.
    ledger.settle("/machine/new")
    assert [_runtime(tmp_path, p) for p in ("/machine/other/vcpu1", "/machine/new/vcpu1", "/machine/new/vcpu2")] \
        == [316_000] * 3
    assert _runtime(tmp_path, "/machine/new") == 632_000 and _invariant_holds(tmp_path)
    assert "/machine/new" not in ledger.granted
