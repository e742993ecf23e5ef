"""The taskstats socket (real kernel) waits for a lost answer with the
kernel's receive timeout, not Python's: a Python timeout polls before every
recv, one more syscall per thread and scrape.  A lost answer still ends the
wait with an OSError (read_many's callers fall back to /proc for that scrape)."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from rtagent.kernel import taskstats as ts

pytestmark = pytest.mark.threads


@pytest.fixture
def reader():
    try:
        r = ts.Taskstats.open()
    except ts.TaskstatsUnavailable as err:
        pytest.skip(f"no taskstats here: {err}")
    yield r
    r.close()


def test_the_socket_has_no_python_timeout_but_a_kernel_one(reader):
    sock = reader._sock
    assert sock.gettimeout() is None
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == struct.pack("@ll", 2, 0)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16) == struct.pack("@ll", 2, 0)
    key = (os.getpid(), threading.get_native_id())
    run, delay, _ = reader.read_many([key])[key]
    assert run > 0 and delay >= 0


def test_a_lost_answer_ends_in_an_oserror(reader):
    with pytest.raises(OSError):
        reader._sock.recv_into(bytearray(64))  # nothing asked: nothing comes
    key = (os.getpid(), threading.get_native_id())
    assert reader.read_many([key])[key] is not None  # the socket still answers


def test_answers_many_to_a_syscall_read_as_one_at_a_time(reader):
    """The real reader takes its answers with recvmmsg (kernel/mmsg.py); the
    same threads read one datagram at a time give the same counters (those
    that cannot move meanwhile: sleeping threads, and our own run time
    bounded by the two reads)."""
    if reader._batch is None:
        pytest.skip("libc without recvmmsg")
    stop = threading.Event()
    sleepers = [threading.Thread(target=stop.wait, daemon=True) for _ in range(ts.CHUNK + 9)]
    for t in sleepers:
        t.start()
    try:
        keys = [(os.getpid(), t.native_id) for t in sleepers]
        one_by_one = ts.Taskstats(reader._sock, reader._family)  # no batch: recv_into per answer
        batched = reader.read_many(keys)
        single = one_by_one.read_many(keys)
        assert batched == single and all(v is not None for v in batched.values())
        assert reader.read_many(keys) == single  # again, through the kept requests
        gone = (os.getpid(), 2**22 + 12345)  # no such thread: its answer is an error, read alone
        assert reader.read_many([*keys[:3], gone])[gone] is None
    finally:
        stop.set()
        for t in sleepers:
            t.join()
    with pytest.raises(OSError):
        reader._batch.recv()  # nothing asked: nothing comes within the receive timeout
