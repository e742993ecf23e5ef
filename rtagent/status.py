"""The status socket: the daemon's state as JSON to local clients.

Read-only by construction: the server never reads a command, it writes one
JSON document per connection and closes.  Connections are served by
:class:`~rtagent.monitor.connserver.ConnectionServer`: at most
``status.max_clients`` at once (the rest wait in a 1,024-deep backlog), each
with ``status.timeout_s`` to take its answer.  The socket is created 0660 and
owned by ``status.group`` so that operators in that group can ask without
being root.
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

from .errors import RtagentError
from .monitor.connserver import ConnectionServer, Limits

log = logging.getLogger(__name__)


class DaemonUnreachable(RtagentError):
    exit_code = 3


# Clients beyond status.max_clients wait in the backlog; a burst of a few
# hundred monitoring agents must not see EAGAIN (the kernel caps it at
# net.core.somaxconn).
LISTEN_BACKLOG = 1024
# One rendered answer serves every client of a burst that arrives within this.
ANSWER_REUSE_S = 0.1
# `rtagent status` retries a full backlog, a refused connection or a missing
# socket (a restart) this long before calling the daemon unreachable.
CONNECT_RETRY_S = 3.0
_TRANSIENT = {errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT, errno.EINTR}


class _StatusHandler:
    """Answers at once and never reads: the status socket takes no commands."""

    reads_request = False
    linger = False

    def __init__(self, snapshot: Callable[[], dict[str, Any] | bytes], reuse_s: float = ANSWER_REUSE_S):
        self.snapshot = snapshot
        self.reuse_s = reuse_s
        self._cached: tuple[float, bytes] | None = None

    def answer(self, request: bytes) -> bytes:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.reuse_s:
            return self._cached[1]
        try:
            # The snapshot holds the store's lock only for its copy, at the
            # loop's priority (statusjson.encode_answer(store,
            # at_loop_priority), wired by the endpoints: the answer already
            # encoded, one guest at a time); conversion and JSON run here at
            # nice 10.  A document (a dict) is encoded here.
            doc = self.snapshot()
            body = doc if isinstance(doc, bytes) else json.dumps(doc).encode() + b"\n"
        except Exception:  # never let a snapshot bug take the socket down
            log.exception("status snapshot failed")
            return b""
        self._cached = (now, body)
        return body


class StatusServer:
    def __init__(self, path: str, group: str, snapshot: Callable[[], dict[str, Any] | bytes], *,
                 max_clients: int = 64, timeout_s: float = 5.0):
        self.path = path
        self.group = group
        self.snapshot = snapshot
        # No request to wait for: the timeout bounds writing the answer to a
        # client that does not read it.
        self.limits = Limits(max_connections=max_clients, idle_timeout_s=timeout_s, request_timeout_s=timeout_s)
        self.server: ConnectionServer | None = None

    def start(self) -> None:
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise RtagentError(f"config error: status.group = {self.group!r}: no such group") from None
        parent = os.path.dirname(self.path)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)  # stale socket of a previous run
            else:
                raise RtagentError(f"config error: status.socket = {self.path!r}: exists and is not a socket")
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Create the socket with no permissions for others from the start
        # (bind honours the umask), then widen to exactly 0660.
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError as err:
            sock.close()
            raise RtagentError(f"config error: status.socket = {self.path!r}: cannot bind: {err.strerror}") from None
        finally:
            os.umask(old)
        os.chown(self.path, 0, gid)
        os.chmod(self.path, 0o660)
        sock.listen(LISTEN_BACKLOG)
        self.server = ConnectionServer(sock, _StatusHandler(self.snapshot), self.limits, name="status-socket")
        self.server.start()

    def close(self, timeout: float = 5.0) -> None:
        if self.server is not None:
            self.server.close(timeout)
            self.server = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _connect(path: str, timeout: float, retry_s: float) -> socket.socket:
    """Connect, retrying transient refusals (a full backlog answers EAGAIN at
    once on a non-blocking Unix socket) with a short backoff for ``retry_s``."""
    deadline = time.monotonic() + retry_s
    pause = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except OSError as err:
            sock.close()
            if err.errno not in _TRANSIENT or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def fetch(path: str, timeout: float = 5.0, retry_s: float = CONNECT_RETRY_S) -> dict[str, Any]:
    """Ask the daemon; raises :class:`DaemonUnreachable` naming the socket."""
    chunks = []
    sock = None
    try:
        sock = _connect(path, timeout, retry_s)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except FileNotFoundError:
        raise DaemonUnreachable(f"rtagent daemon not reachable: no socket at {path} (is `rtagent run` running?)") from None
    except OSError as err:
        raise DaemonUnreachable(f"rtagent daemon not reachable at {path}: {err.strerror or err}") from None
    finally:
        if sock is not None:
            sock.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise DaemonUnreachable(f"rtagent daemon at {path} sent an unreadable answer") from None
