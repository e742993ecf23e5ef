"""The drift watch's kernel side on the real kernel: a tracefs instance of
its own, real threads of this test process changed by ``taskset``/``chrt``
(other processes, like any tool) and moved between cgroups; the events name
the right thread, the process's own scheduler calls are filtered out in the
kernel, and every instance is removed (ours at stop, a dead PID's at start)."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rtagent.kernel import tracefs
from rtagent.kernel.schedwatch import NOTHING, SchedWatch, instance_name

pytestmark = pytest.mark.threads

PREFIX = "rtd-watch-"
ROOT = Path(tracefs.find_tracefs()) if tracefs.find_tracefs() else None
PIDS = Path("/sys/fs/cgroup/pids")


@pytest.fixture
def parked():
    """Two real threads of this process, parked on an Event; their tids."""
    stop = threading.Event()
    tids: list[int] = []
    ready = threading.Barrier(3)

    def park():
        tids.append(threading.get_native_id())
        ready.wait()
        stop.wait()

    threads = [threading.Thread(target=park, name=f"rtd-parked-{i}") for i in range(2)]
    for t in threads:
        t.start()
    ready.wait()
    original = {tid: os.sched_getaffinity(tid) for tid in tids}
    yield tids
    for tid, cpus in original.items():
        os.sched_setaffinity(tid, cpus)
    stop.set()
    for t in threads:
        t.join()


@pytest.fixture
def watch():
    if ROOT is None:
        pytest.skip("tracefs is not mounted")
    notices: queue.Queue = queue.Queue()
    w = SchedWatch(notices.put, prefix=PREFIX)
    w.start()
    yield w, notices
    w.stop()
    assert not (ROOT / "instances" / w.name).exists(), "the watch left its instance"
    assert not (ROOT / "instances" / (w.name + "-exits")).exists(), "the watch left its exits' instance"


def _until(notices: queue.Queue, pred, what: str):
    seen = []
    while True:
        try:
            n = notices.get(timeout=20)
        except queue.Empty:
            raise AssertionError(f"no notice with {what}; seen {seen}") from None
        seen.append(n)
        if pred(n):
            return seen


def test_taskset_and_chrt_name_the_thread_and_own_calls_are_filtered(watch, parked):
    w, notices = watch
    assert (ROOT / "instances" / instance_name(os.getpid(), PREFIX)).is_dir() and w.running
    mine, theirs = parked
    # This process's own call (the daemon's own corrections): filtered in the kernel.
    os.sched_setaffinity(mine, {0})
    subprocess.run(["taskset", "-pc", "0", str(theirs)], check=True, capture_output=True)
    seen = _until(notices, lambda n: theirs in n.sched, f"tid {theirs}")
    assert all(mine not in n.sched for n in seen), seen
    subprocess.run(["chrt", "-o", "-p", "0", str(mine)], check=True)
    _until(notices, lambda n: mine in n.sched and not n.everything, f"chrt's tid {mine}")
    assert w.intact() is None


def test_only_the_watched_threads_reach_the_caller(watch, parked):
    w, notices = watch
    watched, other = parked
    enter = Path(w.inst.path) / "events/syscalls/sys_enter_sched_setaffinity/filter"
    # The reader thread rewrites the kernel filters (an RCU grace period):
    # a test waits for them, the daemon's backstop resync covers the gap.
    w.set_tids(frozenset({watched}))
    _wait_file(enter, f"pid == {watched} ")
    subprocess.run(["taskset", "-pc", "0", str(other)], check=True, capture_output=True)
    subprocess.run(["chrt", "-o", "-p", "0", str(watched)], check=True)
    seen = _until(notices, lambda n: watched in n.sched, f"the watched tid {watched}")
    assert all(other not in n.sched for n in seen), seen
    # Nothing watched: no enter passes; the exits (they name no target)
    # sit in their own instance, which never wakes the reader.
    w.set_tids(frozenset())
    _wait_file(enter, NOTHING)
    assert (Path(w.exits.path) / "buffer_percent").read_text().strip() == "100"
    w.set_tids(frozenset({watched}))
    _wait_file(enter, f"pid == {watched} ")
    subprocess.run(["taskset", "-pc", "0", str(watched)], check=True, capture_output=True)
    _until(notices, lambda n: watched in n.sched, "the watched tid again")


def _wait_file(path: Path, needle: str) -> None:
    deadline = time.monotonic() + 10
    while needle not in (text := path.read_text()):
        assert time.monotonic() < deadline, f"{path}: {text!r}, not {needle!r}"
        time.sleep(0.01)


@pytest.mark.skipif(not (PIDS / "tasks").exists(), reason="no cgroup v1 pids hierarchy")
def test_a_cgroup_move_names_the_moved_thread(watch, parked):
    _w, notices = watch
    tid = parked[0]
    group = PIDS / f"rtd-{os.getpid()}"
    group.mkdir()
    try:
        (group / "tasks").write_text(str(tid))
        _until(notices, lambda n: tid in n.moved, f"the move of {tid}")
    finally:
        (PIDS / "tasks").write_text(str(tid))
        group.rmdir()


def test_a_dead_daemons_instance_is_removed_at_start():
    if ROOT is None:
        pytest.skip("tracefs is not mounted")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = ROOT / "instances" / instance_name(dead.pid, PREFIX), ROOT / "instances" / instance_name(
        os.getppid(), PREFIX)
    stale_exits = ROOT / "instances" / (stale.name + "-exits")
    stale.mkdir()
    stale_exits.mkdir()
    live.mkdir()
    w = SchedWatch(lambda _n: None, prefix=PREFIX)
    try:
        w.start()
        assert not stale.exists() and not stale_exits.exists(), "a dead PID's instances were left"
        assert live.exists(), "a live PID's instance was removed"
    finally:
        w.stop()
        for path in (stale, stale_exits, live):
            tracefs.remove_instance(ROOT, path.name)


def _intact_says_while_off(w, path, message: str) -> None:
    """``path`` (an enable or tracing_on file) written 0: intact() says
    ``message``; written back 1: intact again."""
    path.write_text("0")
    try:
        assert w.intact() == message
    finally:
        path.write_text("1")
    assert w.intact() is None


def test_intact_names_an_event_disabled_in_the_real_instance(watch):
    """The 30 s look reads the kernel's set_event: a disabled event (or
    tracing turned off) is seen there, as with the enable files."""
    w, _notices = watch
    assert w.intact() is None
    _intact_says_while_off(w, Path(w.inst.path) / "events/syscalls/sys_enter_sched_setaffinity/enable",
                           f"event syscalls:sys_enter_sched_setaffinity disabled in {w.inst.path}")
    _intact_says_while_off(w, Path(w.exits.path) / "tracing_on", f"tracing turned off in {w.exits.path}")
