"""Scrapes of real threads through one long-lived collector (as the daemon
keeps it): the kept schedstat/status descriptors give the kernel's current
values, a thread that exits loses its counter series and its descriptors,
and a scrape — stalled in the middle of its kernel reads, or answering a
client that never reads — never holds the state store's lock."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid as uuidlib

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rtagent.config import MetricsConfig
from rtagent.kernel import Kernel
from rtagent.kernel.counters import CounterReader
from rtagent.monitor.counters import CounterCache
from rtagent.monitor.exposition import choose_encoder
from rtagent.monitor.metrics import RtagentCollector, serve
from rtagent.state import StateStore
from tests.threads.test_metrics_kernel import _name_self, nonvoluntary, partition, put_report, schedstat, spec_for
from tests.unit.test_metrics import make_report

pytestmark = pytest.mark.threads

ENCODE, _ = choose_encoder("text/plain; version=0.0.4")


class Vcpu:
    """A thread of this process named like vCPU 1, on one housekeeping CPU,
    that spins for ``work()`` and can be ended."""

    def __init__(self, cpu: int):
        self.cpu = cpu
        self.go, self.done, self.stop = threading.Event(), threading.Event(), threading.Event()
        self.tid = 0
        self._t = threading.Thread(target=self._body, daemon=True)
        self._t.start()
        while not self.tid:
            time.sleep(0.01)

    def _body(self) -> None:
        _name_self("CPU 1/KVM")
        os.sched_setaffinity(0, {self.cpu})
        self.tid = threading.get_native_id()
        while True:
            self.go.wait()
            if self.stop.is_set():
                return
            self.go.clear()
            end = time.monotonic() + 0.2
            while time.monotonic() < end:  # SCHED_OTHER work
                pass
            self.done.set()

    def work(self) -> None:
        self.done.clear()
        self.go.set()
        assert self.done.wait(10)

    def end(self) -> None:
        self.stop.set()
        self.go.set()
        self._t.join(5)


def samples(reg) -> dict:
    text = ENCODE(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def vcpu1(name: str, domain: str) -> tuple:
    return name, (("domain", domain), ("vcpu", "1"))


@pytest.mark.parametrize("taskstats", [True, False], ids=["taskstats", "proc-files"])
def test_the_counters_follow_the_kernel_and_leave_with_the_thread(taskstats):
    """Through taskstats (the daemon's first choice) and through kept /proc
    descriptors (its fallback): the kernel's values, scrape after scrape."""
    part = partition()
    v = Vcpu(min(part.housekeeping))
    try:
        spec = spec_for("kept", str(uuidlib.uuid4()), part)
        store = StateStore()
        put_report(store, os.getpid(), spec, part)
        # Every scrape reads the kernel (no TTL) and re-reads status whenever
        # the run-queue delay moved (no age limit).
        reader = CounterReader(Kernel(), max_fds=64, nvcsw_max_age_s=0.0, taskstats=taskstats)
        reg = CollectorRegistry()
        reg.register(RtagentCollector(store, counters=CounterCache(reader, ttl_s=0.0)))
        samples(reg)
        if taskstats:
            assert reader.source == "taskstats" and reader.open_fds == 0
        else:
            assert reader.source == "proc" and reader.open_fds == 2  # schedstat and status of the realtime vCPU

        last_cpu = 0.0
        for _ in range(2):
            v.work()  # runs 0.2 s, and waits behind this process's other threads
            # The thread is on its way back to sleep: the scrape lies between
            # two direct reads of the kernel, and after the work.
            before = (*schedstat(os.getpid(), v.tid), nonvoluntary(os.getpid(), v.tid))
            got = samples(reg)
            after = (*schedstat(os.getpid(), v.tid), nonvoluntary(os.getpid(), v.tid))
            scraped = (got[vcpu1("rtagent_vcpu_cpu_seconds_total", "kept")] * 1e9,
                       got[vcpu1("rtagent_vcpu_run_delay_seconds_total", "kept")] * 1e9,
                       got[vcpu1("rtagent_vcpu_involuntary_context_switches_total", "kept")])
            assert all(b - 1 <= g <= a + 1 for b, g, a in zip(before, scraped, after, strict=True)), \
                (before, scraped, after)  # ±1 ns: the float seconds round trip
            assert scraped[0] > last_cpu  # fresh: this round's work is in it
            last_cpu = scraped[0]

        v.end()
        # Python's join returns a moment before the kernel has reaped the thread.
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/self/task/{v.tid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        got = samples(reg)
        assert vcpu1("rtagent_vcpu_cpu_seconds_total", "kept") not in got
        assert got[vcpu1("rtagent_vcpu_tuned", "kept")] == 0  # the report's rows stay until the next reconcile
        assert reader.open_fds == 0
        reader.close()
    finally:
        v.end()


def test_taskstats_answers_match_proc_for_many_threads_and_none_for_a_foreign_tid():
    """A batch larger than one datagram of requests; a TID given with the
    wrong process is refused (as a reused TID would be)."""
    from rtagent.kernel.taskstats import CHUNK, Taskstats

    ts = Taskstats.open()
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(CHUNK * 2 + 5)]
    for t in threads:
        t.start()
    try:
        pid = os.getpid()
        keys = [(pid, t.native_id) for t in threads]
        before = {key: (*schedstat(*key), nonvoluntary(*key)) for key in keys}
        got = ts.read_many(keys)
        after = {key: (*schedstat(*key), nonvoluntary(*key)) for key in keys}
        for key in keys:  # a thread just started may still be on its way to sleep: bounds
            assert all(b <= g <= a for b, g, a in zip(before[key], got[key], after[key], strict=True)), \
                (before[key], got[key], after[key])
        assert ts.read_many([(1, keys[0][1])]) == {(1, keys[0][1]): None}
    finally:
        stop.set()
        for t in threads:
            t.join()
    gone = keys[0]
    deadline = time.monotonic() + 10  # join returns a moment before the kernel reaps the thread
    while os.path.exists(f"/proc/self/task/{gone[1]}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ts.read_many([gone]) == {gone: None}
    ts.close()


def _big_store(n: int = 300) -> StateStore:
    """Enough guests for an answer (≈ 500 KiB) that does not fit in socket buffers."""
    store = StateStore()

    def fill(s: StateStore) -> None:
        for i in range(n):
            uid = str(uuidlib.UUID(int=i + 1))
            g = s.guest(uid, f"g{i:03d}")
            g.report = make_report(f"g{i:03d}", uid)
            g.corrections.update({"vcpu_policy": i})
    store.update(fill)
    return store


class StalledReads:
    """A counter source that stops in the middle of a scrape until released."""

    def __init__(self, store: StateStore):
        self.store = store
        self.inside, self.release = threading.Event(), threading.Event()
        self.lock_held_inside: list[bool] = []

    def __call__(self, pid: int, tid: int):
        self.lock_held_inside.append(self.store._lock.locked())
        self.inside.set()
        self.release.wait(30)
        return None


def _writer_finishes(store: StateStore) -> bool:
    done = threading.Event()

    def write() -> None:
        store.update(lambda s: setattr(s.daemon, "resyncs", s.daemon.resyncs + 1))
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done.wait(10)


def test_a_scrape_stalled_in_its_kernel_reads_does_not_hold_the_state_lock():
    store = _big_store(3)
    stalled = StalledReads(store)
    reg = CollectorRegistry()
    reg.register(RtagentCollector(store, counters=CounterCache(stalled, ttl_s=0.0)))
    t = threading.Thread(target=ENCODE, args=(reg,), daemon=True)
    t.start()
    try:
        assert stalled.inside.wait(10)
        assert not store._lock.locked()
        assert _writer_finishes(store), "the resync's write waited for a stalled scrape"
    finally:
        stalled.release.set()
        t.join(30)
    assert stalled.lock_held_inside and not any(stalled.lock_held_inside)


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n")
        chunks = []
        while b := s.recv(1 << 16):
            chunks.append(b)
    return b"".join(chunks)


def test_a_client_that_never_reads_delays_neither_the_writer_nor_other_scrapes():
    store = _big_store()
    srv = serve(store, MetricsConfig(listen="127.0.0.1:0", request_timeout_s=30.0), reuse_s=0.0)
    stuck = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: stuck\r\n\r\n")
            stuck.append(s)
        deadline = time.monotonic() + 10
        # Accepted is not yet rendered: wait until both answers are made (the
        # lock check below would otherwise race the second render's copy).
        while (srv.server.stats.open < 2 or srv.server.stats.answered < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.server.stats.open == 2  # both answered only as far as their buffers take
        assert not store._lock.locked()
        assert _writer_finishes(store)
        body = _get(srv.port)
        head, payload = body.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 200")
        assert f"Content-Length: {len(payload)}".encode() in head  # complete, not cut
        text = payload.decode()
        fams = {f.name for f in text_string_to_metric_families(text)}
        assert "rtagent_domain_compliant" in fams
        assert text.count("rtagent_domain_info{") == 300
        assert srv.server.stats.open == 2  # the stalled ones are still held, the others served
    finally:
        for s in stuck:
            s.close()
        srv.close()


class _Recording(StateStore):
    """Records the nice value of the thread that holds the lock for a reader."""

    def __init__(self) -> None:
        super().__init__()
        self.nice_inside: list[int] = []

    def read(self, fn):
        self.nice_inside.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return super().read(fn)


def test_a_scrape_from_a_nice_client_thread_holds_the_lock_at_the_loops_priority():
    store = _Recording()
    reg = CollectorRegistry()
    reg.register(RtagentCollector(store, counters=CounterCache(lambda pid, tid: None)))
    seen: dict[str, int] = {}

    def client() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 10)  # as the endpoints' threads run
        ENCODE(reg)
        seen["after"] = os.getpriority(os.PRIO_PROCESS, tid)

    t = threading.Thread(target=client)
    t.start()
    t.join(30)
    loop = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert store.nice_inside == [loop]
    assert seen["after"] == 10  # back to the client's priority after the copy
