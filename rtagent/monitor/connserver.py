"""A bounded, single-threaded, non-blocking connection server.

Why not ``socketserver``/``http.server`` (what prometheus_client's
``start_http_server`` uses): a thread per connection and no timeouts mean
that any local user holding idle connections holds the daemon's threads and,
at ~1,000 connections, all of its file descriptors — after which the
enforcement path cannot open ``/proc`` any more and the accept loop spins on
``EMFILE``.  Here:

- one thread and one ``epoll`` selector serve every client, so a client costs
  one descriptor and a few hundred bytes, never a thread;
- at most ``max_connections`` are open at once.  When the cap is reached a
  new client evicts the oldest connection that is still waiting for its
  client (handshake or request not complete) and is older than
  :data:`EVICT_GRACE_S`; if none can be evicted the listener is left alone
  until one can or a slot frees, and new clients wait in the kernel's listen
  backlog (backlog entries are not the daemon's descriptors).  A flood is
  thus accepted at a bounded rate, at a bounded CPU cost;
- every connection has deadlines: ``idle_timeout_s`` without a byte while
  waiting for the request, ``request_timeout_s`` for the whole request and
  again for writing the answer (a client that never reads is dropped);
- ``EMFILE``/``ENFILE`` on accept evicts one waiting connection and pauses
  accepting for :data:`ACCEPT_BACKOFF_S` (a readable listener that cannot be
  accepted from would otherwise wake the loop forever), logged once a minute.

What a connection does is a :class:`Handler`: the HTTP endpoint
(:mod:`rtagent.monitor.httpd`) reads a request and answers it; the status
socket (:mod:`rtagent.status`) answers at once and never reads.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..threadname import name_thread

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

__all__ = ["ACCEPT_BACKOFF_S", "ConnectionServer", "Handler", "Limits", "ServerStats"]

# Pause accepting this long after EMFILE/ENFILE (descriptors exhausted).
ACCEPT_BACKOFF_S = 0.1
# Accept at most this many clients per wake-up, so one burst cannot starve
# the connections already open.
ACCEPT_BATCH = 64
# After the answer, read (and discard) what the client still sends for at
# most this long before closing: closing with unread bytes makes the kernel
# send a reset that can destroy the answer in flight (a POST body).
LINGER_S = 1.0
RECV_CHUNK = 16384
RECV_PER_WAKE = 8
# A request is never buffered beyond this (the HTTP handler refuses heads
# over 8 KiB); the handler sees the buffer and answers or refuses.
MAX_BUFFERED = 65536
# A connection is never evicted younger than this: a client that waited in
# the backlog gets at least this long to send its request, and a flood of
# connections is accepted at most max_connections per this period.
EVICT_GRACE_S = 0.2
# Nice value of the server threads (the daemon's main loop stays at 0).
CLIENT_NICE = 10
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LOG_EVERY_S = 60.0


class Phase(enum.Enum):
    HANDSHAKE = "handshake"  # TLS handshake in progress
    READING = "reading"  # waiting for the client's request
    WRITING = "writing"  # sending the answer
    LINGER = "linger"  # answer sent, discarding the client's leftovers


@dataclass(frozen=True)
class Limits:
    max_connections: int = 64
    idle_timeout_s: float = 5.0
    request_timeout_s: float = 10.0


class Handler(Protocol):
    """What one connection does.  ``reads_request`` False: :meth:`answer` is
    called right after accept with ``b""``."""

    reads_request: bool
    linger: bool

    def answer(self, request: bytes) -> bytes | None:
        """The full response once ``request`` (everything received so far) is
        complete, else None to wait for more.  Runs in the server thread."""
        ...


@dataclass
class ServerStats:
    """Counters since start (read by the metrics collector without a lock:
    single ints, written by the server thread only)."""

    accepted: int = 0
    answered: int = 0
    open: int = 0
    peak_open: int = 0
    wakeups: int = 0  # loop iterations: a spinning loop shows here
    closed: Counter = field(default_factory=Counter)  # reason -> count


@dataclass
class _Conn:
    sock: socket.socket
    phase: Phase
    opened: float
    last_io: float
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None
    events: int = 0


class _NotRaised(Exception):
    """Stands in for ssl's want-read/want-write errors in a server without TLS."""


def _tls_retry_errors(tls: bool) -> tuple[type[Exception], type[Exception]]:
    """The errors that mean "the TLS layer needs the socket readable / writable"."""
    if not tls:
        return _NotRaised, _NotRaised
    import ssl

    return ssl.SSLWantReadError, ssl.SSLWantWriteError


class ConnectionServer:
    """Serve ``handler`` on a bound, listening ``listener`` from one thread."""

    def __init__(self, listener: socket.socket, handler: Handler, limits: Limits, *, name: str,
                 ssl_context: ssl.SSLContext | None = None):
        self.listener = listener
        self.handler = handler
        self.limits = limits
        self.name = name
        self.ssl_context = ssl_context
        # Every connection is TLS or none is; ssl is imported only for TLS (its
        # 1.9 MiB of RSS is not paid by a daemon without it).
        self._tls = ssl_context is not None
        self._want_read, self._want_write = _tls_retry_errors(self._tls)
        self.stats = ServerStats()
        listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._accepting = False
        self._resume_at: float | None = None  # accept paused until (None: until a slot frees)
        self._evict_at: float | None = None
        self._conns: dict[int, _Conn] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter = Counter()

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        self._set_accepting(True)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for conn in list(self._conns.values()):
            self._close(conn, "shutdown")
        self._sel.close()
        for s in (self._wake_r, self._wake_w, self.listener):
            s.close()

    # -- the loop -------------------------------------------------------------

    def _run(self) -> None:
        name_thread(self.name)
        try:
            # Clients come second: under a flood the kernel runs the
            # enforcement loop first (it shares one housekeeping CPU and the GIL).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CLIENT_NICE)
        except OSError as err:
            log.debug("%s: cannot lower its priority: %s", self.name, err)
        while not self._stop.is_set():
            try:
                self._once()
            except Exception:  # never let a client end the server thread
                log.exception("%s: unexpected error in the connection loop", self.name)
                time.sleep(ACCEPT_BACKOFF_S)

    def _once(self) -> None:
        now = time.monotonic()
        events = self._sel.select(self._timeout(now))
        self.stats.wakeups += 1
        for key, _mask in events:
            if key.fileobj is self._wake_r:
                try:
                    self._wake_r.recv(64)
                except OSError:
                    pass
            elif key.fileobj is self.listener:
                self._accept()
            else:
                conn = self._conns.get(key.fd)
                if conn is not None:
                    self._step(conn)
        now = time.monotonic()
        self._expire(now)
        if not self._accepting and not self._stop.is_set():
            if (self._resume_at is not None and now >= self._resume_at) or (
                    self._resume_at is None and len(self._conns) < self.limits.max_connections):
                self._set_accepting(True)

    def _timeout(self, now: float) -> float | None:
        due = [c.deadline for c in self._conns.values()]
        due += [c.last_io + self.limits.idle_timeout_s for c in self._conns.values()
                if c.phase in (Phase.HANDSHAKE, Phase.READING)]
        if not self._accepting and self._resume_at is not None:
            due.append(self._resume_at)
        if not due:
            return None  # nothing to time out: sleep until a client or close()
        return max(0.0, min(due) - now)

    def _set_accepting(self, on: bool, resume_at: float | None = None) -> None:
        if on and not self._accepting:
            self._sel.register(self.listener, selectors.EVENT_READ, None)
        elif not on and self._accepting:
            self._sel.unregister(self.listener)
        self._accepting = on
        self._resume_at = None if on else resume_at

    # -- accepting --------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self._conns) >= self.limits.max_connections and not self._evict():
                # Resume when a connection may be evicted, or when a slot frees.
                self._set_accepting(False, self._evict_at)
                return
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _RESOURCE_ERRNOS:
                    self._note("accept", f"accept failed: {err.strerror}; pausing {ACCEPT_BACKOFF_S}s")
                    self.stats.closed["accept_" + errno.errorcode.get(err.errno, str(err.errno)).lower()] += 1
                    self._evict()
                    self._set_accepting(False, time.monotonic() + ACCEPT_BACKOFF_S)
                    return
                if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client went away between SYN and accept
                self._note("accept", f"accept failed: {err}; pausing {ACCEPT_BACKOFF_S}s")
                self._set_accepting(False, time.monotonic() + ACCEPT_BACKOFF_S)
                return
            self._open(sock)

    def _open(self, sock: socket.socket) -> None:
        now = time.monotonic()
        sock.setblocking(False)
        phase = Phase.READING
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                sock.close()
                return
            phase = Phase.HANDSHAKE
        conn = _Conn(sock=sock, phase=phase, opened=now, last_io=now,
                     deadline=now + self.limits.request_timeout_s)
        self._conns[sock.fileno()] = conn
        self.stats.accepted += 1
        self.stats.open = len(self._conns)
        self.stats.peak_open = max(self.stats.peak_open, self.stats.open)
        if phase is Phase.READING and not self.handler.reads_request:
            self._respond(conn, self.handler.answer(b"") or b"")
            return
        self._want(conn, selectors.EVENT_READ)
        # A client that waited in the backlog has usually sent its request
        # already: answer it now, before newer clients can evict it.
        self._step(conn)

    def _evict(self) -> bool:
        """Close a connection still waiting for its client — one that has sent
        nothing first, the oldest first — but none younger than
        :data:`EVICT_GRACE_S`, so a real client always has that long to send
        its request.  False if none can go (then :attr:`_evict_at` says when
        one could, or is None if every open connection is being answered)."""
        now = time.monotonic()
        waiting = [c for c in self._conns.values() if c.phase in (Phase.HANDSHAKE, Phase.READING, Phase.LINGER)]
        old = [c for c in waiting if now - c.opened >= EVICT_GRACE_S]
        if not old:
            self._evict_at = min(c.opened for c in waiting) + EVICT_GRACE_S if waiting else None
            return False
        victim = min(old, key=lambda c: (c.phase is not Phase.LINGER, bool(c.inbuf), c.opened))
        self._close(victim, "evicted")
        return True

    # -- one connection ---------------------------------------------------------

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._sel.modify(conn.sock, events, None)
        else:
            self._sel.register(conn.sock, events, None)
        conn.events = events

    def _step(self, conn: _Conn) -> None:
        try:
            if conn.phase is Phase.HANDSHAKE:
                self._handshake(conn)
            elif conn.phase is Phase.READING:
                self._read(conn)
            elif conn.phase is Phase.WRITING:
                self._write(conn)
            else:
                self._drain(conn)
        except self._want_read:
            self._want(conn, selectors.EVENT_READ)
        except self._want_write:
            self._want(conn, selectors.EVENT_WRITE)
        except OSError as err:  # ssl.SSLError is an OSError
            log.debug("%s: client error: %s", self.name, err)
            self._close(conn, "client_error")

    def _handshake(self, conn: _Conn) -> None:
        conn.sock.do_handshake()  # an ssl.SSLSocket: only a TLS server has this phase
        conn.phase = Phase.READING
        conn.last_io = time.monotonic()
        self._read(conn)

    def _recv_all(self, conn: _Conn) -> bool:
        """Read what is there, but at most :data:`RECV_PER_WAKE` chunks and
        :data:`MAX_BUFFERED` bytes (a client streaming without end must not
        hold the loop or grow the buffer); False on EOF."""
        for _ in range(RECV_PER_WAKE):
            if len(conn.inbuf) >= MAX_BUFFERED:
                return True
            try:
                data = conn.sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return True
            if not data:
                return False
            conn.last_io = time.monotonic()
            if conn.phase is Phase.READING:
                conn.inbuf += data
            if self._tls and not conn.sock.pending():
                return True
        return True

    def _read(self, conn: _Conn) -> None:
        alive = self._recv_all(conn)
        response = self.handler.answer(bytes(conn.inbuf)) if conn.inbuf else None
        if response is not None:
            self._respond(conn, response)
        elif len(conn.inbuf) >= MAX_BUFFERED:
            self._close(conn, "request_too_large")  # the handler should have refused it
        elif not alive:
            self._close(conn, "client_closed")
        else:
            self._want(conn, selectors.EVENT_READ)

    def _respond(self, conn: _Conn, response: bytes) -> None:
        conn.phase = Phase.WRITING
        conn.inbuf = bytearray()
        conn.out = memoryview(response)
        conn.deadline = time.monotonic() + self.limits.request_timeout_s
        self.stats.answered += 1
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        while conn.out:
            try:
                n = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                self._want(conn, selectors.EVENT_WRITE)
                return
            conn.out = conn.out[n:]
        if not self.handler.linger or self._tls:
            self._close(conn, "done")
            return
        conn.phase = Phase.LINGER
        conn.deadline = time.monotonic() + LINGER_S
        conn.sock.shutdown(socket.SHUT_WR)
        self._want(conn, selectors.EVENT_READ)

    def _drain(self, conn: _Conn) -> None:
        if not self._recv_all(conn):
            self._close(conn, "done")

    def _expire(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if conn.phase is Phase.LINGER and now >= conn.deadline:
                self._close(conn, "done")
            elif now >= conn.deadline:
                self._close(conn, "request_timeout" if conn.phase is not Phase.WRITING else "write_timeout")
            elif conn.phase in (Phase.HANDSHAKE, Phase.READING) and now >= conn.last_io + self.limits.idle_timeout_s:
                self._close(conn, "idle_timeout")

    def _close(self, conn: _Conn, reason: str) -> None:
        fd = conn.sock.fileno()
        if conn.events:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        self._conns.pop(fd, None)
        try:
            conn.sock.close()
        except OSError:
            pass
        self.stats.closed[reason] += 1
        self.stats.open = len(self._conns)

    def _note(self, what: str, message: str) -> None:
        """Log ``message`` at most once a minute per ``what``, with a count."""
        now = time.monotonic()
        last = self._last_log.get(what)
        if last is not None and now - last < _LOG_EVERY_S:
            self._suppressed[what] += 1
            return
        extra = f" ({self._suppressed[what]} more since the last message)" if self._suppressed[what] else ""
        self._suppressed[what] = 0
        self._last_log[what] = now
        log.warning("%s: %s%s", self.name, message, extra)
