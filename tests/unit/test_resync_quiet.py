"""A steady resync with nothing new to show leaves the state store alone:
the host side without a host partition and the libvirt responsiveness take
the store's lock only when what they publish changes, and the libvirt
worker answers "no probe due, nothing overdue" without its lock (issue 14:
the fixed part of every resync)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from rtagent.config import Partition, parse_config
from rtagent.daemon.hostside import HostSupervisor
from rtagent.daemon.link import LibvirtLink
from rtagent.libvirt_host import CallWorker
from rtagent.state import StateStore

pytestmark = pytest.mark.unit

PART = Partition(frozenset({0, 1}), frozenset({1}), frozenset({0}))


class CountingStore(StateStore):
    """Counts the writers' lock takes (``updates``) and all of them (``takes``)."""

    def __init__(self) -> None:
        super().__init__()
        self.updates = self.takes = 0

    def update(self, fn):
        self.updates += 1
        self.takes += 1
        return super().update(fn)

    def read(self, fn):
        self.takes += 1
        return super().read(fn)


def _config():
    cfg = parse_config({"host_tuning": {"kthreads": False, "irqs": False, "workqueues": False,
                                        "kthread_priorities": False}}, resolve=False)
    return dataclasses.replace(cfg, partition=PART)


def test_host_side_without_a_partition_writes_the_store_once_per_config():
    store = CountingStore()
    host = HostSupervisor(_config(), store)
    host.next_checks = float("inf")  # host checks not due: they scan the real /proc
    assert host.enforcer is None
    host.enforce(set())
    assert store.updates == 1 and store.daemon.host["realtime_cpus"] == "1"
    for _ in range(3):
        host.enforce(set())
    assert store.updates == 1  # nothing new: no lock, no partition JSON
    store.daemon.host.clear()
    host.configure(_config())  # a reload shows the (new) partition again
    host.next_checks = float("inf")
    host.enforce(set())
    assert store.updates == 2 and store.daemon.host["realtime_cpus"] == "1"


class FakeHost:
    """Only what publish_responsiveness asks of a LibvirtHost."""

    connected = True

    def __init__(self) -> None:
        self.hung: float | None = None
        self.probes = 0

    def probe(self) -> None:
        self.probes += 1

    def unresponsive_s(self) -> float | None:
        return self.hung


def test_responsiveness_takes_the_lock_only_when_it_flips():
    store, host = CountingStore(), FakeHost()
    link = LibvirtLink(host, store, 1.0, lambda _ev: None, lambda _r: None)
    link.publish_responsiveness()
    assert host.probes == 1 and store.updates == 0 and store.daemon.libvirt_unresponsive_since is None
    host.hung = 3.0
    link.publish_responsiveness()
    since = store.daemon.libvirt_unresponsive_since
    assert store.updates == 1 and since is not None
    host.hung = 4.0
    link.publish_responsiveness()
    assert store.updates == 1 and store.daemon.libvirt_unresponsive_since == since  # still since then
    host.hung = None
    link.publish_responsiveness()
    assert store.updates == 2 and store.daemon.libvirt_unresponsive_since is None
    assert host.probes == 4


class CountingLock:
    """The worker's lock, counting how often it is taken."""

    def __init__(self) -> None:
        self._lock, self.taken = threading.Lock(), 0

    def __enter__(self):
        self.taken += 1
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


def test_the_worker_answers_the_resyncs_usual_questions_without_its_lock():
    now = [100.0]
    worker = CallWorker(5.0, clock=lambda: now[0], name="rtf-test-worker")
    worker._lock = lock = CountingLock()
    answered, release = threading.Event(), threading.Event()

    def hangs() -> None:
        answered.set()
        release.wait(10)

    worker.probe(hangs, every_s=5.0)  # sent: under the lock
    assert answered.wait(5) and lock.taken == 1
    now[0] = 103.0
    worker.probe(hangs, every_s=5.0)  # not due: nothing sent, no lock
    assert worker.unresponsive_s() is None and lock.taken == 1
    now[0] = 106.0  # the probe outlived the timeout: hung since it was sent
    assert worker.unresponsive_s() == pytest.approx(6.0) and lock.taken == 2
    release.set()
    for _ in range(200):
        if worker.unresponsive_s() is None:
            break
        threading.Event().wait(0.02)
    assert worker.unresponsive_s() is None


def test_a_steady_resync_takes_the_store_lock_once(tmp_path, monkeypatch):
    from rtagent.daemon import loop

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = parse_config({"daemon": {"lock_file": str(tmp_path / "rtagent.lock")},
                        "host_tuning": {"kthreads": False, "irqs": False, "workqueues": False,
                                        "kthread_priorities": False}}, resolve=False)
    d = loop.Daemon(dataclasses.replace(cfg, partition=PART), None)  # never connected: no libvirt call
    d.store = d.guests.store = d.hostside.store = d.link.store = store = CountingStore()
    d.hostside.next_checks = float("inf")  # not the host checks' /proc scan
    d.resync(full=False)
    takes = store.takes
    d.resync(full=False)
    assert store.takes - takes == 1  # the resync count and the status line's counts, together
    assert store.daemon.resyncs == 2 and d._last_status == "0 realtime guest(s), 0 non-compliant"
