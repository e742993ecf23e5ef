"""inotify(7): the kernel telling us that a directory gained an entry or a
file was written, without polling.

cgroupfs supports it like any filesystem: ``mkdir`` of a group shows as
``IN_CREATE`` on its parent, and a ``write(2)`` to a control file
(``cpuset.cpus``, ``tasks``) as ``IN_MODIFY`` on the group's directory,
whoever the writer is.  That is how the daemon learns that libvirt is
placing a thread (creating ``iothreadN``, moving the thread there) at the
moment it happens: libvirt sends no event for it.

A thin wrapper over the three syscalls (through libc, ctypes: the standard
library has none); the caller owns the descriptor's thread and decides what
an event means.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

__all__ = ["IN_CREATE", "IN_DELETE", "IN_MODIFY", "IN_CLOSE_WRITE", "IN_DELETE_SELF", "IN_IGNORED",
           "IN_ISDIR", "IN_ONLYDIR", "IN_Q_OVERFLOW", "InotifyEvent", "Inotify"]

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("=iIII")  # wd, mask, cookie, len
# The interpreter's own libc (dlopen(NULL), as privileges.py): ctypes.util.find_library
# would run ldconfig in a subprocess and import subprocess, tempfile, shutil… (≈ 0.8 MiB).
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    name: str  # the entry in the watched directory ("" for the directory itself)

    @property
    def overflow(self) -> bool:
        """The kernel's queue overflowed: events were lost."""
        return bool(self.mask & IN_Q_OVERFLOW)


def parse(buf: bytes) -> list[InotifyEvent]:
    """The events in one ``read(2)`` of an inotify descriptor."""
    out = []
    offset = 0
    while offset + _HEADER.size <= len(buf):
        wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        raw = buf[offset:offset + length]
        offset += length
        out.append(InotifyEvent(wd, mask, raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")))
    return out


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


class Inotify:
    """One non-blocking inotify descriptor (``select`` it, then :meth:`read`)."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))

    def fileno(self) -> int:
        return self.fd

    def add(self, path: str, mask: int) -> int:
        """Watch ``path``; the watch descriptor.  Raises OSError (ENOENT:
        gone already; ENOSPC: the per-user watch limit)."""
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask)))

    def remove(self, wd: int) -> None:
        """Stop watching; a watch the kernel already dropped (its directory
        was removed) is not an error."""
        if _libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def read(self) -> list[InotifyEvent]:
        """Every queued event; [] when there is none."""
        try:
            return parse(os.read(self.fd, 65536))
        except BlockingIOError:
            return []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
