"""Small daemon parts without a daemon: sd_notify, cn_proc decoding, the
state store's histogram and status rendering."""

import socket
import struct
import time

import pytest

from rtagent.commands.status import render
from rtagent.kernel.procconn import _CN_MSG, _EVENT, _NLMSGHDR, parse_event
from rtagent.sdnotify import Notifier
from rtagent.state import Histogram, StateStore

pytestmark = pytest.mark.unit


def test_notifier_sends_datagrams_to_a_real_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_s == 4.0
    assert n.ready("2 realtime guests")
    msg = server.recv(4096).decode()
    assert msg.splitlines()[:2] == ["READY=1", "STATUS=2 realtime guests"]
    assert n.watchdog()
    assert server.recv(4096) == b"WATCHDOG=1"
    n.close()
    server.close()


def test_notifier_abstract_socket_and_disabled():
    name = f"rtagent-test-{id(object())}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert n.status("x")
    assert server.recv(100) == b"STATUS=x"
    server.close()
    off = Notifier({})
    assert not off.enabled and not off.ready("x") and off.watchdog_s is None
    # A watchdog meant for another process is not ours.
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def _msg(what: int, body: bytes) -> bytes:
    payload = _EVENT.pack(what, 0, 123) + body
    cn = _CN_MSG.pack(1, 1, 0, 0, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), 3, 0, 0, 0) + cn


def test_parse_fork_comm_and_ignore_others():
    assert parse_event(_msg(0x1, struct.pack("=IIII", 10, 10, 77, 70))) == ("fork", 70, 77)
    assert parse_event(_msg(0x200, struct.pack("=II", 77, 70) + b"CPU 1/KVM".ljust(16, b"\0"))) == ("comm", 70, 77)
    assert parse_event(_msg(0x80000000, struct.pack("=IIIIII", 77, 70, 0, 0, 1, 1))) == ("exit", 70, 77)
    assert parse_event(_msg(0x2, struct.pack("=II", 77, 70))) is None  # exec: not a thread-set change
    assert parse_event(b"\0" * 10) is None


def test_histogram_is_cumulative():
    h = Histogram(buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 5.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 1), ("1.0", 3), ("+Inf", 4)]
    assert h.count == 4 and h.total == pytest.approx(6.05)


def test_status_render_and_empty_store():
    snap = StateStore().snapshot()
    assert snap["domains"] == [] and snap["compliant"] is True
    lines = render({"daemon": {"libvirt": {"connected": False, "uri": "qemu:///system"}},
                    "host": {"realtime_cpus": "1", "housekeeping_cpus": "0",
                             "checks": [{"name": "nohz_full", "ok": False, "detail": "add nohz_full=1",
                                         "severity": "warning"}]}},
                   [{"name": "rt1", "compliant": False, "realtime_vcpus": "1", "drift_corrections_total": 3,
                     "vcpu_stats": {"1": {"run_delay_rate_ns_per_s": 2500.0, "observed_at": time.time() - 14}},
                     "violations": [{"check": "memlock", "detail": "…"}], "threads": []}], detail=False)
    text = "\n".join(lines)
    assert "DISCONNECTED" in text and "nohz_full" in text
    row = next(line for line in lines if line.startswith("rt1"))
    assert "✗" in row and " 3 " in row and "2.5µs/s" in row and "memlock" in row
    assert "14s ago" in row or "15s ago" in row  # the rate's age: it is the last full observation's
