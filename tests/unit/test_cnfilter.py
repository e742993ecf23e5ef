"""The proc connector's in-kernel filter (rtagent/kernel/cnfilter.py), run
over connector messages laid out as the kernel sends them by a small
classic-BPF interpreter (the instructions the program uses: ld [k] in
network byte order, jeq, ja, ret).  The real kernel applying it is in
tests/threads/test_procconn_filter.py."""

import struct

import pytest

from rtagent.kernel import cnfilter
from rtagent.kernel.procconn import _CN_MSG, _EVENT, _NLMSGHDR, PROC_EVENT_COMM, PROC_EVENT_EXIT, PROC_EVENT_FORK

pytestmark = pytest.mark.unit
PROC_EVENT_EXEC = 0x00000002


def run(prog, packet: bytes) -> int:
    a, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x20:
            a = struct.unpack_from(">I", packet, k)[0]
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x05:
            pc += k
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


def message(what: int, *fields: int) -> bytes:
    body = _EVENT.pack(what, 0, 123456789) + struct.pack(f"={len(fields)}I", *fields)
    cn = _CN_MSG.pack(1, 1, 0, 0, len(body), 0) + body
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), 3, 0, 0, 0) + cn


def fork(child_tid, child_tgid, parent=1):
    return message(PROC_EVENT_FORK, parent, parent, child_tid, child_tgid)


def comm(tid, tgid):
    return message(PROC_EVENT_COMM, tid, tgid)


def exit_(tid, tgid):
    return message(PROC_EVENT_EXIT, tid, tgid, 0, 9, 1, 1)


def test_only_the_watched_processes_threads_pass():
    prog = cnfilter.program({4242, 70000})
    passes = lambda m: run(prog, m) != 0  # noqa: E731
    assert passes(fork(4300, 4242, parent=4242))  # a new thread of a watched QEMU
    assert passes(comm(4300, 4242)) and passes(exit_(4300, 4242)) and passes(comm(70001, 70000))
    assert not passes(fork(5000, 5000, parent=4242))  # a new *process* forked by it: not its thread
    assert not passes(fork(4301, 4243))
    assert not passes(comm(4242, 4243)) and not passes(exit_(4242, 4243))  # the tid matches, the tgid does not
    assert not passes(message(PROC_EVENT_EXEC, 4242, 4242))
    assert not passes(message(0, 0, 0))  # the subscription's acknowledgement


def test_nothing_passes_while_nothing_is_watched():
    prog = cnfilter.program(())
    for m in (fork(10, 10), comm(10, 10), exit_(10, 10)):
        assert run(prog, m) == 0


def test_too_many_pids_fall_back_to_passing_the_three_kinds_for_everyone():
    many = range(1000, 1000 + cnfilter.MAX_PIDS + 1)
    prog = cnfilter.program(many)
    assert len(prog) < 20
    assert run(prog, fork(7, 7)) and run(prog, comm(7, 7)) and not run(prog, message(PROC_EVENT_EXEC, 7, 7))
    fits = cnfilter.program(range(1000, 1000 + cnfilter.MAX_PIDS))
    assert len(fits) <= 4096 and run(fits, comm(1000 + cnfilter.MAX_PIDS - 1, 1000 + cnfilter.MAX_PIDS - 1))
    assert all(jt <= 255 and jf <= 255 for _c, jt, jf, _k in fits)
