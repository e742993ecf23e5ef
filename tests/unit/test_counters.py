"""The scrape-time counter reader over a fixture /proc: kept descriptors
within their budget, status re-read only when the count can have moved,
threads that leave are forgotten and their descriptors closed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rtagent.kernel import Kernel
from rtagent.kernel.counters import CounterReader, ThreadCounters
from rtagent.monitor.counters import CounterCache

pytestmark = pytest.mark.unit

PID = 4242


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def task(root: Path, tid: int) -> Path:
    return root / str(PID) / "task" / str(tid)


def write(root: Path, tid: int, run: int, delay: int, nvcsw: int) -> None:
    """Rewrites in place (same inode), so a kept descriptor sees the new text,
    as it sees the kernel's on /proc."""
    d = task(root, tid)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "schedstat", "w") as f:
        f.write(f"{run} {delay} 7\n")
    with open(d / "status", "w") as f:
        f.write(f"Name:\tCPU 1/KVM\nvoluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t{nvcsw}\n")


@pytest.fixture
def proc(tmp_path):
    for tid in (4243, 4244, 4245):
        write(tmp_path, tid, 1000, 20, 3)
    return tmp_path


def reader(proc: Path, clock: Clock, max_fds: int = 16) -> CounterReader:
    return CounterReader(Kernel(proc=str(proc)), clock=clock, max_fds=max_fds, nvcsw_max_age_s=30.0)


def test_reads_both_files_and_keeps_descriptors_within_the_budget(proc):
    r = reader(proc, Clock(), max_fds=3)
    got = r.read_many([(PID, 4243), (PID, 4244), (PID, 4245)])
    assert got[(PID, 4243)] == ThreadCounters(1000, 20, 3)
    assert r.open_fds == 3  # schedstat + status of the first, schedstat of the second: first come
    write(proc, 4243, 2000, 20, 3)
    write(proc, 4245, 3000, 25, 4)
    got = r.read_many([(PID, 4243), (PID, 4244), (PID, 4245)])
    assert got[(PID, 4243)] == ThreadCounters(2000, 20, 3)  # through its kept descriptor
    assert got[(PID, 4245)][0] == 3000  # by path: over the budget
    assert r.open_fds == 3


def test_status_is_read_only_when_the_run_delay_moved_and_the_value_is_old(proc):
    clock = Clock()
    r = reader(proc, clock)
    key = (PID, 4243)
    r.read_many([key])
    assert r.status_reads == 1
    # ran (CPU time grew) but never waited: not preempted, the count is exact
    write(proc, 4243, 5000, 20, 9)
    clock.t += 3600
    assert r.read_many([key])[key] == ThreadCounters(5000, 20, 3)
    assert r.status_reads == 1
    # waited (delay grew) and the value is older than 1.5 × the max age: re-read
    write(proc, 4243, 6000, 30, 9)
    assert r.read_many([key])[key] == ThreadCounters(6000, 30, 9)
    assert r.status_reads == 2
    # waited again, but the value is younger than 0.5 × the max age: reused
    write(proc, 4243, 7000, 40, 11)
    clock.t += 10
    assert r.read_many([key])[key] == ThreadCounters(7000, 40, 9)
    assert r.status_reads == 2
    # it stops waiting: once the value is due, the exact count, and kept
    clock.t += 3600
    assert r.read_many([key])[key] == ThreadCounters(7000, 40, 11)
    assert r.status_reads == 3
    clock.t += 3600
    assert r.read_many([key])[key] == ThreadCounters(7000, 40, 11)
    assert r.status_reads == 3


def test_a_thread_that_left_is_none_and_its_descriptors_are_closed(proc):
    r = reader(proc, Clock(), max_fds=0)
    for f in task(proc, 4244).iterdir():
        f.unlink()
    task(proc, 4244).rmdir()
    got = r.read_many([(PID, 4243), (PID, 4244)])
    assert got[(PID, 4244)] is None and got[(PID, 4243)] is not None

    r = reader(proc, Clock())
    r.read_many([(PID, 4243), (PID, 4245)])
    fds = {(key, name): fd for name, kept in r._fds.items() for key, fd in kept.items()}
    assert len(fds) == 4
    r.keep({(PID, 4245)})
    assert r.open_fds == 2
    for (key, _), fd in fds.items():
        if key == (PID, 4243):
            with pytest.raises(OSError):
                os.fstat(fd)  # closed
    r.close()
    assert r.open_fds == 0


def test_a_kernel_without_sched_info_still_gives_the_switches(proc):
    (task(proc, 4243) / "schedstat").unlink()
    r = reader(proc, Clock(), max_fds=0)
    assert r.read(PID, 4243) == ThreadCounters(None, None, 3)


def test_the_cache_reads_in_one_batch_and_closes_what_left(proc):
    clock = Clock()
    r = reader(proc, clock)
    cache = CounterCache(r, ttl_s=7.5, clock=clock)
    keys = [(PID, 4243), (PID, 4244)]
    assert cache.get(keys)[(PID, 4243)] == ThreadCounters(1000, 20, 3)
    assert cache.reads == 2 and r.open_fds == 4
    write(proc, 4243, 2000, 20, 3)
    assert cache.get(keys)[(PID, 4243)][0] == 1000  # within the TTL
    clock.t += 7.5
    assert cache.get([(PID, 4243)])[(PID, 4243)][0] == 2000
    assert r.open_fds == 2  # 4244 left the exports
    cache.close()
    assert r.open_fds == 0


def test_the_cache_with_the_same_threads_again_and_with_others():
    """The usual scrape asks for the threads of the last one (read at one
    time: no age per key); a changed set still reads only what is due."""
    clock, calls = Clock(), []

    def read(pid: int, tid: int) -> ThreadCounters:
        calls.append(tid)
        return ThreadCounters(clock.t, tid, 0)  # type: ignore[arg-type]  (when it was read)

    cache = CounterCache(read, ttl_s=7.5, clock=clock)
    keys = ((PID, 1), (PID, 2))
    first = cache.get(keys)
    assert first == {(PID, 1): (1000, 1, 0), (PID, 2): (1000, 2, 0)} and calls == [1, 2]
    clock.t += 5
    assert cache.get(keys) == first and calls == [1, 2]  # within the TTL: nothing read
    assert cache.get(list(keys)) == first and calls == [1, 2]  # the same threads in a list
    clock.t += 2.5
    assert cache.get(keys)[(PID, 1)][0] == 1007.5 and calls == [1, 2, 1, 2]  # all due at once
    clock.t += 1
    got = cache.get(((PID, 2), (PID, 3)))  # one new thread, one fresh, one gone
    assert got == {(PID, 2): (1007.5, 2, 0), (PID, 3): (1008.5, 3, 0)} and calls == [1, 2, 1, 2, 3]
    clock.t += 7  # 2 is due (read at 1007.5), 3 is not (1008.5)
    assert cache.get(((PID, 2), (PID, 3)))[(PID, 2)][0] == 1015.5 and calls[-1] == 2 and len(calls) == 6
    assert cache.reads == 6
