"""The libvirt worker and a hung connect: an ``open`` that times out holds
the one worker thread (no thread or connection per attempt); the
connection it returns once libvirtd answers is never adopted."""

from __future__ import annotations

import threading

import pytest

from rtagent import libvirt_host
from rtagent.errors import LibvirtUnavailable
from rtagent.libvirt_host import LibvirtHost

pytestmark = pytest.mark.unit


class _Conn:
    def __init__(self) -> None:
        self.closed_on: str | None = None

    def close(self) -> None:
        self.closed_on = threading.current_thread().name


def _until(pred, what: str) -> None:
    for _ in range(200):
        if pred():
            return
        threading.Event().wait(0.02)
    raise AssertionError(what)


def test_a_hung_open_holds_one_thread_and_its_late_connection_is_not_adopted(monkeypatch):
    gate = threading.Event()
    opened: list[_Conn] = []

    def slow_open(_uri: str) -> _Conn:
        gate.wait()
        opened.append(_Conn())
        return opened[-1]

    monkeypatch.setattr(libvirt_host.libvirt, "open", slow_open)
    host = LibvirtHost("qemu:///hung", call_timeout_s=0.05)
    before = threading.active_count()
    with pytest.raises(LibvirtUnavailable):
        host.connect()  # times out
    for _ in range(20):  # reconnect attempts while libvirtd hangs: refused at once, nothing piles up
        with pytest.raises(LibvirtUnavailable, match="not attempted"):
            host.connect()
    assert threading.active_count() <= before + 1 and not opened
    gate.set()
    _until(lambda: opened, "the late open returned")
    assert len(opened) == 1
    assert host._conn is None  # never adopted: the daemon reconnects on its own schedule


class _StartingConn:
    """Stands in for a ``virConnect``: the real failure — libvirt freeing a
    connection that ``close()`` drops while another thread is inside
    ``lookupByID`` on it — is a segfault of the whole test process.  This
    one records whether it was closed while a lookup was in flight."""

    def __init__(self) -> None:
        self.in_lookup = threading.Event()
        self.answer = threading.Event()
        self.closed = threading.Event()
        self.closed_during_lookup = False
        self._looking = False

    def lookupByID(self, _domain_id: int):
        self._looking = True
        self.in_lookup.set()
        self.answer.wait(10)
        self._looking = False
        return self

    xml_asked = 0

    def XMLDesc(self, _flags: int) -> str:
        self.xml_asked += 1
        return "<domain/>"

    def UUIDString(self) -> str:
        return "6f1c3f2e-0000-4000-8000-000000000001"

    def name(self) -> str:
        return "rtt-starting"

    def domainEventDeregisterAny(self, _cid: int) -> None:
        pass

    def unregisterCloseCallback(self) -> None:
        pass

    def close(self) -> None:
        self.closed_during_lookup = self.closed_during_lookup or self._looking
        self.closed.set()


def _host_with(conn: _StartingConn) -> LibvirtHost:
    host = LibvirtHost("test:///default", call_timeout_s=5.0)
    host._conn = conn
    return host


def test_a_close_waits_for_the_start_lookup_in_flight_on_the_connection():
    conn = _StartingConn()
    host = _host_with(conn)
    got: list = []
    looker = threading.Thread(target=lambda: got.append(host.starting(7)))
    looker.start()
    assert conn.in_lookup.wait(5)
    closer = threading.Thread(target=lambda: host.close(timeout_s=10.0))
    closer.start()
    assert not conn.closed.wait(0.3)  # held by the lookup
    conn.answer.set()
    looker.join(5)
    closer.join(5)
    assert conn.closed.is_set() and not conn.closed_during_lookup
    assert got and got[0][0].name == "rtt-starting"


def test_a_close_that_timed_out_behind_a_lookup_still_closes_after_it():
    conn = _StartingConn()
    host = _host_with(conn)
    looker = threading.Thread(target=lambda: host.starting(7))
    looker.start()
    assert conn.in_lookup.wait(5)
    host.close(timeout_s=0.2)  # returns (not waited for): the lookup still holds the call slot
    assert not conn.closed.is_set()
    conn.answer.set()
    looker.join(5)
    assert conn.closed.wait(5) and not conn.closed_during_lookup


def test_no_start_lookup_begins_on_a_closed_connection():
    conn = _StartingConn()
    host = _host_with(conn)
    host.close(timeout_s=1.0)
    assert conn.closed.is_set()
    with pytest.raises(LibvirtUnavailable):
        host.starting(7)
    assert not conn.in_lookup.is_set()


def test_the_two_workers_never_have_two_libvirt_calls_in_flight_at_once():
    """The loop's worker and the start worker share one call slot."""
    host = LibvirtHost("test:///default", call_timeout_s=5.0)
    inside, overlaps, gate = [0], [0], threading.Event()

    def call() -> None:
        inside[0] += 1
        overlaps[0] = max(overlaps[0], inside[0])
        gate.wait(0.05)
        inside[0] -= 1

    threads = [threading.Thread(target=lambda: [host.worker.call("main", call) for _ in range(10)]),
               threading.Thread(target=lambda: [host.start_worker.call("start", call) for _ in range(10)])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert overlaps[0] == 1


def test_a_start_the_selector_leaves_alone_costs_no_xml():
    """The start watch's lookup: a guest whose name the selector does not
    take is answered without its XML (one RPC, not two); a taken one with it."""
    conn = _StartingConn()
    conn.answer.set()
    host = _host_with(conn)
    guest, xml = host.starting(7, lambda name: name.startswith("rtf-"))
    assert guest.name == "rtt-starting" and xml is None and conn.xml_asked == 0
    guest, xml = host.starting(7, lambda name: name.startswith("rtt-"))
    assert xml == "<domain/>" and conn.xml_asked == 1
    assert host.starting(7)[1] == "<domain/>" and conn.xml_asked == 2  # no selector given: as before


@pytest.mark.parametrize("kind", ["libvirt", "other"])
def test_a_failed_call_leaves_no_cycle_behind(kind):
    """An error through the worker (a libvirt one: a guest gone, "domain
    not found"; or any other, a bug) is freed by refcounting, with
    everything its call's frames held: nothing waits for the cyclic
    collector."""
    import gc
    import weakref

    import libvirt

    from rtagent.errors import LibvirtError

    class Held:
        pass

    worker = libvirt_host.CallWorker(timeout_s=5.0, name="rtagent-test-worker")

    def failing_call() -> weakref.ref:
        held = Held()

        def fn():
            _ = held
            if kind == "libvirt":
                raise libvirt.libvirtError("Domain not found: no domain with matching uuid")
            raise OSError(5, "Input/output error")

        try:
            worker.call("state", fn)
        except (LibvirtError, OSError):
            pass
        return weakref.ref(held)

    gc.disable()
    try:
        gc.collect()
        ref = failing_call()
        _until(lambda: ref() is None, "the failed call's frames were kept by a reference cycle")
    finally:
        gc.enable()
