"""One daemon per host: an flock(2) on ``[daemon] lock_file``.

Two daemons on one host fight (each counts the other's corrections as
drift) and a second start used to delete the first one's status socket.
The lock is taken before anything else exists — before the status socket
is bound or the metrics port opened — so a refused start touches nothing
of the running daemon's.  flock, not a PID file check: the kernel drops the
lock when the holder dies, however it dies, so a stale file never blocks a
restart.  The file is never unlinked (unlinking a lock file lets a third
daemon lock a fresh inode while the second still holds the old one).
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import RtagentError


class AlreadyRunning(RtagentError):
    exit_code = 1


class InstanceLock:
    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our PID into the file, or raise
        :class:`AlreadyRunning` naming the holder's PID."""
        os.makedirs(os.path.dirname(self.path) or "/", mode=0o755, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise RtagentError(f"cannot open lock file {self.path} (daemon.lock_file): {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise RtagentError(f"cannot lock {self.path} (daemon.lock_file): {err.strerror}") from None
            who = f"PID {holder}" if holder else "another process"
            raise AlreadyRunning(f"another rtagent daemon is running ({who} holds {self.path}); not starting") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # drops the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
