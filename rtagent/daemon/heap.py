"""Giving freed heap back to the kernel after a full check.

A full check re-reads every managed guest (its live XML, a few dozen
``/proc`` files a guest): megabytes of short-lived buffers that glibc's
malloc keeps once freed, since only a free chunk at the very top of the
heap above ``M_TRIM_THRESHOLD`` is ever returned by ``free()``.  The pages
of the free chunks inside the heap stay resident — the daemon's RSS grew
with every full check's high-water mark.  ``malloc_trim(0)`` gives every
whole free page back (``MADV_DONTNEED``; glibc ≥ 2.8); the next full check
faults in what it needs again.

Not glibc (musl): no ``malloc_trim``, nothing to do.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)


def _malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the interpreter's own libc
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def available() -> bool:
    return _TRIM is not None


def trim() -> bool:
    """Return free heap pages to the kernel; True if any were."""
    return bool(_TRIM(0)) if _TRIM is not None else False
