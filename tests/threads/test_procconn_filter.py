"""The proc connector with its in-kernel filter, on the real kernel: the
tracked process's new thread, its rename and its exit reach the watcher;
the forks and exits of processes nobody tracks are not even read from the
socket (``received`` counts every message read)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from rtagent.kernel.procconn import ProcConnector

pytestmark = pytest.mark.threads

# Waits for a line on stdin, then starts a thread, renames it, lets it exit.
CHILD = """
import sys, threading, time
sys.stdin.readline()
def body():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write("IO rtc-test")
    time.sleep(0.2)
t = threading.Thread(target=body)
t.start(); t.join()
print("done", t.native_id, flush=True)
sys.stdin.readline()
"""


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_the_kernel_passes_only_the_tracked_processes_thread_events():
    got: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def on_thread(pid, tid, what):
        with lock:
            got.append((pid, tid, what))

    pc = ProcConnector(on_thread, lambda: None)
    pc.start()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert pc.kernel_filter
        for _ in range(10):  # untracked forks and exits while nothing is tracked
            subprocess.run(["true"], check=True)
        time.sleep(0.2)
        assert pc.received == 0 and got == []
        pc.set_tracked({child.pid})
        assert _wait(lambda: got == [(child.pid, child.pid, "watch")])  # the look after the filter changed
        child.stdin.write("go\n")
        child.stdin.flush()
        tid = int(child.stdout.readline().split()[1])
        for _ in range(10):  # untracked processes while one is tracked
            subprocess.run(["true"], check=True)
        want = {(child.pid, tid, "fork"), (child.pid, tid, "comm"), (child.pid, tid, "exit")}
        assert _wait(lambda: want <= set(got))
        time.sleep(0.2)
        # Nothing but the tracked process's own events was read from the socket.
        assert pc.received == pc.events == len(got) - 1
        assert all(pid == child.pid for pid, _t, _w in got)
        pc.set_tracked(set())
        child.stdin.write("bye\n")
        child.stdin.flush()
        child.wait(timeout=5)
        time.sleep(0.2)
        assert (child.pid, child.pid, "exit") not in got  # untracked again before it exited
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        pc.stop()
