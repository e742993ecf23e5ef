"""Thread birth, naming and exit events from the kernel's proc connector (cn_proc).

A QEMU thread that appears while a guest runs (a hotplugged vCPU, an
iothread added live, a vhost worker) must be tuned at birth, not at the next
resync.  The kernel multicasts every fork/exec/comm/exit on the host; an
in-kernel socket filter (``cnfilter.py``) lets through only the events of
the QEMU processes being tracked — nothing at all while none is — and we
hand the PID to the daemon's queue.  Under load the kernel drops messages
(ENOBUFS): we report it and ask for an immediate resync, the safety net.

Needs CAP_NET_ADMIN (and root in the initial user namespace).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable

from ..threadname import name_thread
from . import cnfilter

# <linux/connector.h>, <linux/cn_proc.h>
CN_IDX_PROC = 0x1
CN_VAL_PROC = 0x1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_EXIT = 0x80000000

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
# proc_event: what, cpu, timestamp_ns, then the event's own fields.
_EVENT = struct.Struct("=IIQ")
_EVENT_AT = _NLMSGHDR.size + _CN_MSG.size
_DATA_AT = _EVENT_AT + _EVENT.size
_FORK = struct.Struct("=IIII")  # parent_pid, parent_tgid, child_pid, child_tgid
_COMM = struct.Struct("=II")  # process_pid, process_tgid


def parse_event(data: bytes, offset: int = 0) -> tuple[str, int, int] | None:
    """``(event, tgid, tid)`` for FORK, COMM and EXIT messages, None for the
    rest.  An EXIT makes the daemon re-read the thread set: a TID the kernel
    may hand out again must not stay in a guest's cheap-check baseline.

    Hand-decoded with ``struct``: the kernel multicasts every fork on the
    host and this runs for each, so it must be cheap.
    """
    if len(data) < offset + _DATA_AT + _COMM.size:
        return None
    what = _EVENT.unpack_from(data, offset + _EVENT_AT)[0]
    if what == PROC_EVENT_COMM:
        tid, tgid = _COMM.unpack_from(data, offset + _DATA_AT)
        return "comm", tgid, tid
    if what == PROC_EVENT_EXIT:
        tid, tgid = _COMM.unpack_from(data, offset + _DATA_AT)  # exit: process_pid, process_tgid first
        return "exit", tgid, tid
    if what == PROC_EVENT_FORK and len(data) >= offset + _DATA_AT + _FORK.size:
        _ppid, _ptgid, tid, tgid = _FORK.unpack_from(data, offset + _DATA_AT)
        return "fork", tgid, tid
    return None


def _control(op: int) -> bytes:
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


class ProcConnector:
    """Watches the proc connector on its own thread.

    We read the netlink socket directly instead of through pyroute2: its
    0.9 ``ProcEventSocket`` buffers datagrams in its own queue, so
    ``select()`` on its descriptor misses events that arrived together with an
    earlier one, and importing it costs ~19 MiB of RSS for six constants.
    """

    def __init__(self, on_thread: Callable[[int, int, str], None], on_overflow: Callable[[], None]):
        """``on_thread(pid, tid, event)`` for tracked processes; ``on_overflow()``
        when events were lost.  Both are called on the watcher thread and
        must only enqueue."""
        self.on_thread = on_thread
        self.on_overflow = on_overflow
        self.tracked: frozenset[int] = frozenset()
        self.events = 0  # events of tracked processes handed on
        self.received = 0  # messages read from the socket (with the kernel filter: ≈ events)
        self.dropped = 0
        self.kernel_filter = False  # the in-kernel filter is attached (else every event is read)
        self._filter_refused = False
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1  # stop() wakes the watcher: it waits with no timeout
        self._lock = threading.Lock()  # set_tracked: filter and set change together
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Subscribe; raises OSError (EPERM without CAP_NET_ADMIN)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
        try:
            # Filter first: a subscription without it receives every fork on the host.
            self._attach(sock, self.tracked)
            sock.bind((0, CN_IDX_PROC))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.send(_control(PROC_CN_MCAST_LISTEN))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="proc-connector", daemon=True)
        self._thread.start()

    def _attach(self, sock: socket.socket, pids: frozenset[int]) -> None:
        try:
            cnfilter.attach(sock, pids)
            self.kernel_filter = True
        except OSError as err:
            # The old filter would drop the new PIDs' events: none, then.
            cnfilter.detach(sock)
            if self.kernel_filter or not self._filter_refused:
                log.warning("proc connector: in-kernel filter refused (%s); filtering every host event here", err)
            self.kernel_filter, self._filter_refused = False, True

    def set_tracked(self, pids: set[int]) -> None:
        """The processes whose FORK/COMM/EXIT events are wanted.  A newly
        added PID gets one event of its own ("watch") once the filter passes
        its events: a thread born between the caller's last look and the
        filter's change is then not missed."""
        new = frozenset(pids)
        with self._lock:
            added = new - self.tracked
            if new == self.tracked:
                return
            if self._sock is not None:
                self._attach(self._sock, new)
            # Replaced atomically: the watcher thread reads it without a lock.
            self.tracked = new
        if self._sock is not None:
            for pid in sorted(added):
                self.on_thread(pid, pid, "watch")

    def _run(self) -> None:
        name_thread("proc-connector")  # its comm, for top -H and the benchmarks' per-thread CPU
        sock = self._sock
        assert sock is not None
        # poll, not select: the scrape keeps descriptors open (its schedstat
        # pool), so a socket made after it may be numbered past FD_SETSIZE.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            try:
                # No timeout: with the kernel filter an idle host wakes us
                # never; stop() wakes us through the pipe.
                ready = poller.poll()
                if not any(fd == sock.fileno() for fd, _ev in ready):
                    continue
                data = sock.recv(65536)
            except OSError as err:
                if self._stop.is_set():
                    return
                if err.errno == errno.ENOBUFS:
                    # The kernel dropped events: our view may have holes.
                    self.dropped += 1
                    log.warning("proc connector overflow (ENOBUFS): events lost, resyncing")
                    self.on_overflow()
                    continue
                log.error("proc connector failed: %s; relying on the periodic resync", err)
                self.on_overflow()
                return
            offset = 0
            tracked = self.tracked
            while offset + _NLMSGHDR.size <= len(data):
                length = _NLMSGHDR.unpack_from(data, offset)[0]
                if length < _NLMSGHDR.size:
                    break
                self.received += 1
                ev = parse_event(data, offset)
                if ev is not None and ev[1] in tracked:
                    self.events += 1
                    self.on_thread(ev[1], ev[2], ev[0])
                offset += (length + 3) & ~3

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._sock is not None:
            try:
                self._sock.send(_control(PROC_CN_MCAST_IGNORE))
            except OSError:
                pass
            self._sock.close()
            self._sock = None
