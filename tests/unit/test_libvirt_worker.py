"""The libvirt worker and a hung connect: an ``open`` that times out holds
the one worker thread (no thread or connection per attempt), and the
connection it returns once libvirtd answers is closed on the worker."""

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


def test_a_hung_open_holds_one_thread_and_its_late_connection_is_closed_on_the_worker(monkeypatch):
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
    _until(lambda: opened and opened[0].closed_on, "the late connection closed")
    assert len(opened) == 1 and opened[0].closed_on == "rtagent-libvirt"
    assert host._conn is None  # never adopted: the daemon reconnects on its own schedule
