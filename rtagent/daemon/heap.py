"""Giving freed heap back to the kernel after a full check.

A full check re-reads every managed guest (its live XML, a few dozen
``/proc`` files a guest): megabytes of short-lived buffers that glibc's
malloc keeps once freed, since only a free chunk at the very top of the
heap above ``M_TRIM_THRESHOLD`` is ever returned by ``free()``.  The pages
of the free chunks inside the heap stay resident — the daemon's RSS grew
with every full check's high-water mark.  ``malloc_trim(0)`` gives every
whole free page back (``MADV_DONTNEED``; glibc ≥ 2.8); the next full check
faults in what it needs again.

Large buffers, the other way in: glibc serves a request above
``M_MMAP_THRESHOLD`` (128 KiB) with its own mapping, unmapped at ``free()``
— but after the first such free it raises the threshold to that size, so
the next status answer (≈ 360 KiB of JSON at 100 guests) and its encoding
come from the heap and stay there.  :func:`configure` fixes the threshold
at 128 KiB (setting it turns the adjustment off).

Arenas: glibc makes a malloc arena per thread that allocates, up to 8 per
CPU, each a heap of its own with its own free pages; the daemon's threads
(libvirt's event loop, the libvirt worker, the proc connector, the status
and metrics servers, the watches) mostly wait.  :func:`configure` caps
them at 2 before the first thread exists, as ``MALLOC_ARENA_MAX=2`` would,
so the daemon does not depend on its environment for it.

A status answer: its encoding (statusjson.py: one guest's dict at a time)
leaves ≈ 0.3 MiB of freed buffers in the heap at 100 guests; the status
thread trims after each answer it renders (:func:`trimmed`; ≈ 1 ms of its
CPU at nice 10, once per answer, not per burst client).

Not glibc (musl): no ``malloc_trim``/``mallopt``, nothing to do.
"""

from __future__ import annotations

import ctypes
import logging
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


M_MMAP_THRESHOLD = -3  # <malloc.h>
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 << 10  # glibc's default, kept fixed
ARENA_MAX = 2


def _libc_fn(name: str, argtypes: list):
    try:
        fn = getattr(ctypes.CDLL(None), name)  # the interpreter's own libc
    except (AttributeError, OSError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


_TRIM = _libc_fn("malloc_trim", [ctypes.c_size_t])
_MALLOPT = _libc_fn("mallopt", [ctypes.c_int, ctypes.c_int])


def configure() -> bool:
    """Keep buffers above 128 KiB out of the heap, at most 2 arenas (see
    above); at start, before any thread."""
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(_MALLOPT(M_ARENA_MAX, ARENA_MAX))


def available() -> bool:
    return _TRIM is not None


def trim() -> bool:
    """Return free heap pages to the kernel; True if any were."""
    return bool(_TRIM(0)) if _TRIM is not None else False


def trimmed(value: T) -> T:
    """``value``, once the buffers that made it are back with the kernel."""
    trim()
    return value
