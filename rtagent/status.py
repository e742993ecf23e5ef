"""The status socket: the daemon's state as JSON to local clients.

Read-only by construction: the server never reads a command, it writes one
JSON document per connection and closes.  The socket is created 0660 and
owned by ``status.group`` so that operators in that group can ask without
being root.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

from .errors import RtagentError

log = logging.getLogger(__name__)


class DaemonUnreachable(RtagentError):
    exit_code = 3


class StatusServer:
    def __init__(self, path: str, group: str, snapshot: Callable[[], dict[str, Any]]):
        self.path = path
        self.group = group
        self.snapshot = snapshot
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

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
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="status-socket", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                conn.settimeout(2.0)
                body = json.dumps(self.snapshot()).encode() + b"\n"
                conn.sendall(body)
            except OSError as err:
                log.debug("status client went away: %s", err)
            except Exception:  # never let a client kill the server thread
                log.exception("status snapshot failed")
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


def fetch(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon; raises :class:`DaemonUnreachable` naming the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        chunks = []
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
        sock.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise DaemonUnreachable(f"rtagent daemon at {path} sent an unreadable answer") from None
