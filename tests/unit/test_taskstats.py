"""The taskstats reader against answers built here in the kernel's layout:
fields read at their offsets, a reused TID (another tgid) or an error answer
is a thread gone, answers to an abandoned earlier batch are skipped, and
requests go out many to a datagram.  (The real kernel's answers are checked
against /proc in tests/threads/test_scrape_live.py.)"""

from __future__ import annotations

import struct

import pytest

from rtagent.kernel import taskstats as ts

pytestmark = pytest.mark.unit

FAMILY = 31


def answer(seq: int, tid: int, tgid: int, run: int, delay: int, nivcsw: int, version: int = 16,
           size: int = 560) -> bytes:
    stats = bytearray(size)
    struct.pack_into("=H", stats, 0, version)
    struct.pack_into("=Q", stats, ts._DELAY, delay)
    struct.pack_into("=Q", stats, ts._RUN, run)
    struct.pack_into("=I", stats, ts._PID, tid)
    struct.pack_into("=Q", stats, ts._NIVCSW, nivcsw)
    if size >= ts._TGID + 4:
        struct.pack_into("=I", stats, ts._TGID, tgid)
    inner = struct.pack("=HHI", 8, ts.TASKSTATS_TYPE_PID, tid) + struct.pack("=HH", 4 + size, ts.TASKSTATS_TYPE_STATS) \
        + bytes(stats)
    body = struct.pack("=BBH", ts.TASKSTATS_CMD_GET, 1, 0) + struct.pack("=HH", 4 + len(inner),
                                                                         ts.TASKSTATS_TYPE_AGGR_PID) + inner
    return struct.pack("=IHHII", 16 + len(body), FAMILY, 0, seq, 0) + body


def error(seq: int, errno: int = 3) -> bytes:
    return struct.pack("=IHHIIi", 36, ts.NLMSG_ERROR, 0, seq, 0, -errno) + bytes(16)


class FakeKernel:
    """Answers each TASKSTATS_CMD_GET from a table {tid: (tgid, run, delay, nivcsw)}."""

    def __init__(self, table: dict[int, tuple[int, int, int, int]], stale: list[bytes] = ()):
        self.table = table
        self.queue: list[bytes] = list(stale)
        self.datagrams: list[int] = []  # requests per datagram sent

    def send(self, data: bytes) -> int:
        n = 0
        for off in range(0, len(data), 28):
            _, kind, _, seq, _, cmd, _, _, _, _, tid = ts._REQ.unpack_from(data, off)
            assert (kind, cmd) == (FAMILY, ts.TASKSTATS_CMD_GET)
            row = self.table.get(tid)
            self.queue.append(error(seq) if row is None else answer(seq, tid, *row))
            n += 1
        self.datagrams.append(n)
        return len(data)

    def recv_into(self, buf: bytearray) -> int:
        data = self.queue.pop(0)
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def reader(kernel: FakeKernel) -> ts.Taskstats:
    return ts.Taskstats(kernel, FAMILY)  # type: ignore[arg-type]


def test_fields_at_their_offsets_and_gone_threads():
    k = FakeKernel({101: (100, 5_000, 70, 3), 102: (100, 6_000, 80, 0), 201: (999, 1, 1, 1)})
    got = reader(k).read_many([(100, 101), (100, 102), (100, 103), (100, 201)])
    assert got == {(100, 101): (5_000, 70, 3), (100, 102): (6_000, 80, 0),
                   (100, 103): None,  # ESRCH
                   (100, 201): None}  # the TID belongs to another process now


def test_an_old_kernel_without_tgid_is_read_without_that_check():
    k = FakeKernel({})
    r = reader(k)
    k.send = lambda data: k.queue.append(answer(0, 101, 0, 9, 8, 7, version=10, size=ts._NEED)) or len(data)
    assert r.read_many([(100, 101)]) == {(100, 101): (9, 8, 7)}


def test_a_truncated_or_foreign_answer_is_not_trusted():
    k = FakeKernel({})
    r = reader(k)
    cut = answer(0, 101, 100, 9, 8, 7)[:ts._STATS + ts._NIVCSW]  # ends before nivcsw
    k.send = lambda data: k.queue.append(cut) or len(data)
    assert r.read_many([(100, 101)]) == {(100, 101): None}
    k.send = lambda data: k.queue.append(answer(1, 555, 100, 9, 8, 7)) or len(data)  # another TID's answer
    assert r.read_many([(100, 101)]) == {(100, 101): None}


def test_many_requests_a_datagram_and_stale_answers_skipped():
    table = {1000 + i: (100, i, i, i) for i in range(ts.CHUNK * 2 + 3)}
    k = FakeKernel(table, stale=[answer(0x7FFF0000, 1000, 100, 1, 1, 1)])
    got = reader(k).read_many([(100, tid) for tid in table])
    assert got == {(100, tid): (i, i, i) for tid, (_, i, _, _) in table.items()}
    assert k.datagrams == [ts.CHUNK, ts.CHUNK, 3]


class FakeBatch:
    """recvmmsg over FakeKernel's queue: every queued answer (up to the
    slots) in one call, each in its slot, cut at the slot's end."""

    def __init__(self, kernel: FakeKernel, count: int = ts.CHUNK, slot: int = ts.SLOT):
        self.kernel, self.count, self.slot = kernel, count, slot
        self.buffer = bytearray(count * slot)
        self._lengths: tuple[int, ...] = ()
        self.calls = 0

    def recv(self, flags: int = 0) -> int:
        if not self.kernel.queue:
            raise BlockingIOError(11, "no answer within the receive timeout")
        got = self.kernel.queue[:self.count]
        del self.kernel.queue[:self.count]
        for i, data in enumerate(got):
            data = data[:self.slot]
            self.buffer[i * self.slot:i * self.slot + len(data)] = data
        self._lengths = tuple(min(len(d), self.slot) for d in got)
        self.calls += 1
        return len(got)

    def lengths(self, n: int) -> tuple[int, ...]:
        return self._lengths[:n]


def batched(kernel: FakeKernel) -> tuple[ts.Taskstats, FakeBatch]:
    batch = FakeBatch(kernel)
    return ts.Taskstats(kernel, FAMILY, batch), batch  # type: ignore[arg-type]


def test_batched_answers_are_read_all_at_once_and_the_requests_kept():
    table = {1000 + i: (100, 10 * i, i, i % 7) for i in range(ts.CHUNK * 2 + 5)}
    k = FakeKernel(table)
    r, batch = batched(k)
    keys = [(100, tid) for tid in table]
    want = {(100, tid): (run, delay, nivcsw) for tid, (_, run, delay, nivcsw) in table.items()}
    assert r.read_many(keys) == want
    assert batch.calls == 3 and k.datagrams == [ts.CHUNK, ts.CHUNK, 5]  # one recvmmsg a datagram of requests
    table[1003] = (100, 99, 98, 97)
    want[(100, 1003)] = (99, 98, 97)
    assert r.read_many(keys) == want  # the kept requests, with this read's sequence numbers
    assert batch.calls == 6 and len(r._requests) == 3


def test_batched_answers_with_a_gone_thread_a_reused_tid_and_stale_ones():
    """Not the usual answer somewhere in the batch: each one is read alone."""
    table = {101: (100, 5_000, 70, 3), 102: (100, 6_000, 80, 0), 201: (999, 1, 1, 1)}
    k = FakeKernel(table, stale=[answer(0x7FFF0000, 101, 100, 1, 1, 1)])
    r, _ = batched(k)
    got = r.read_many([(100, 101), (100, 102), (100, 103), (100, 201)])
    assert got == {(100, 101): (5_000, 70, 3), (100, 102): (6_000, 80, 0), (100, 103): None, (100, 201): None}
    old = FakeKernel({})
    r, _ = batched(old)
    old.send = lambda data: old.queue.append(answer(0, 101, 0, 9, 8, 7, version=10, size=ts._NEED)) or len(data)
    assert r.read_many([(100, 101)]) == {(100, 101): (9, 8, 7)}  # an old kernel's shorter answer


def test_a_batch_with_an_answer_missing_ends_in_an_oserror():
    k = FakeKernel({101: (100, 1, 1, 1)})
    r, _ = batched(k)
    k.send = lambda data: len(data)  # the kernel dropped every answer
    with pytest.raises(OSError):
        r.read_many([(100, 101)])
