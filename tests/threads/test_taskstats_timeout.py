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
