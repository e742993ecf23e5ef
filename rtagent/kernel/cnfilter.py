"""An in-kernel filter for the proc connector: only the events of the
processes the daemon watches reach its socket.

The kernel multicasts every fork, exec, comm change and exit on the host to
every proc-connector listener.  Filtered in userspace, that is one wakeup,
one ``recv`` and one parse per event of *any* process — measured as nearly
all of an idle daemon's CPU (0.2-3 % of a core on a busy host).  A classic
BPF socket filter (``SO_ATTACH_FILTER``) runs on each message before it is
queued and drops what we do not need, so nothing wakes the daemon then.

What passes (everything else is dropped, including every event while no
process is watched):

* ``FORK`` whose *child's* tgid is watched: a new thread of a watched QEMU
  (iothread, vhost worker, hotplugged vCPU);
* ``COMM`` and ``EXIT`` whose tgid is watched: a thread named (QEMU names
  vCPU threads after creating them) or gone (its TID may be reused).

A new process (a QEMU being started) is not a watched tgid's thread: its
owner adds its PID to the watched set as soon as it knows it.

The program is a linear chain of ``jeq`` (two instructions a PID, so every
jump stays within classic BPF's 8-bit offsets); with more PIDs than fit the
kernel's instruction limit it falls back to passing those three event kinds
for every process, filtered in userspace as before.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

__all__ = ["program", "attach", "detach", "MAX_PIDS"]

# <linux/filter.h>
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: 32-bit load, network byte order
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_JA = 0x05  # BPF_JMP | BPF_JA
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_BPF_MAXINSNS = 4096
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)

# Offsets in one connector message: nlmsghdr (16), cn_msg (20), then the
# proc_event: what (4), cpu (4), timestamp (8), the event's fields (procconn.py).
_WHAT_AT = 36
_DATA_AT = 52
_FORK_CHILD_TGID_AT = _DATA_AT + 12  # parent_pid, parent_tgid, child_pid, child_tgid
_TGID_AT = _DATA_AT + 4  # comm and exit: process_pid, process_tgid
_FORK, _COMM, _EXIT = 0x00000001, 0x00000200, 0x80000000
_PASS, _DROP = 0xFFFFFFFF, 0

_HEAD = 8  # instructions before the PID chain
MAX_PIDS = (_BPF_MAXINSNS - _HEAD - 2) // 2


def _be(value: int) -> int:
    """A host-order u32 as the ``ld [k]`` of classic BPF sees it (it loads
    in network byte order; the connector writes host order)."""
    return struct.unpack(">I", struct.pack("=I", value & 0xFFFFFFFF))[0]


def program(pids: Iterable[int] | None) -> list[tuple[int, int, int, int]]:
    """The filter as ``(code, jt, jf, k)`` instructions.  ``pids`` None: pass
    FORK/COMM/EXIT of every process (too many to list)."""
    pids = None if pids is None else sorted(set(pids))
    if pids is not None and len(pids) > MAX_PIDS:
        pids = None
    head = [
        (_BPF_LD_W_ABS, 0, 0, _WHAT_AT),
        (_BPF_JEQ_K, 3, 0, _be(_FORK)),  # -> ld child tgid
        (_BPF_JEQ_K, 4, 0, _be(_COMM)),  # -> ld tgid
        (_BPF_JEQ_K, 3, 0, _be(_EXIT)),  # -> ld tgid
        (_BPF_RET_K, 0, 0, _DROP),  # exec, uid, sid, ptrace, coredump, the subscription's ack
        (_BPF_LD_W_ABS, 0, 0, _FORK_CHILD_TGID_AT),
        (_BPF_JA, 0, 0, 1),  # -> the chain
        (_BPF_LD_W_ABS, 0, 0, _TGID_AT),
    ]
    assert len(head) == _HEAD
    if pids is None:
        return head + [(_BPF_RET_K, 0, 0, _PASS)]
    chain = []
    for pid in pids:
        chain += [(_BPF_JEQ_K, 0, 1, _be(pid)), (_BPF_RET_K, 0, 0, _PASS)]
    return head + chain + [(_BPF_RET_K, 0, 0, _DROP)]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def attach(sock: socket.socket, pids: Iterable[int] | None) -> int:
    """Attach (atomically replace) the filter for ``pids``; returns its
    length in instructions.  Raises OSError if the kernel refuses it."""
    insns = program(pids)
    arr = (_SockFilter * len(insns))(*[_SockFilter(*i) for i in insns])
    prog = _SockFprog(len(insns), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    # setsockopt copies the program; arr only has to live through the call.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog)))
    return len(insns)


def detach(sock: socket.socket) -> None:
    """No filter: every event is read (and filtered in userspace)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass  # none was attached
