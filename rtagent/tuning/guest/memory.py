"""Memory checks for a realtime guest: locked and hugepage-backed RAM.

These are verified, never fixed: a process cannot be made to lock memory from
outside (docs/design.md, "Memory").  The caller runs :func:`verify_memory` only for
realtime guests; every realtime guest needs both, so a guest that did not ask
for ``<locked/>`` or ``<hugepages/>`` gets a violation too.
"""

from __future__ import annotations

from ...model import MemorySpec, Violation
from ...vocab import Check
from .observe import ProcessMemory

__all__ = ["verify_memory", "format_bytes"]

_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_bytes(n: int | None) -> str:
    """``67108864`` → ``"64 MiB"``; ``None`` → ``"unlimited"``.

    Inexact values are truncated to one decimal, never rounded up, so that a
    ``<`` between two printed sizes stays true (63.99 MiB prints 63.9 MiB).
    """
    if n is None:
        return "unlimited"
    for unit, size in _UNITS:
        if n >= size:
            if n % size == 0:
                return f"{n // size} {unit}"
            tenths = n * 10 // size
            return f"{tenths // 10}.{tenths % 10} {unit}"
    return f"{n} B"


def _rlimit(mem: ProcessMemory) -> str:
    if mem.memlock_soft == mem.memlock_hard:
        return f"RLIMIT_MEMLOCK {format_bytes(mem.memlock_soft)}"
    return f"RLIMIT_MEMLOCK soft {format_bytes(mem.memlock_soft)}, hard {format_bytes(mem.memlock_hard)}"


def _swapped(mem: ProcessMemory) -> str:
    return f"; VmSwap {format_bytes(mem.swap_bytes)} already swapped out" if mem.swap_bytes else ""


def verify_memory(spec_memory: MemorySpec, mem: ProcessMemory) -> list[Violation]:
    """Violations of a realtime guest's memory requirements.

    ``memlock``: guest RAM must be locked.  Hugetlb mappings are never counted
    in VmLck (mlock skips them; they cannot be swapped anyway), so locked
    coverage is ``VmLck + HugetlbPages``.  ``hugepages``: guest RAM must be
    hugepage-backed, ``HugetlbPages`` covering it.  A ``size_bytes`` of 0
    (unknown) only checks that *something* is locked / hugepage-backed.
    """
    out: list[Violation] = []
    size = spec_memory.size_bytes
    locked = mem.vm_lck_bytes + mem.hugetlb_bytes

    if not spec_memory.locked:
        out.append(
            Violation(
                Check.MEMLOCK,
                "<memoryBacking><locked/> is missing: guest memory may be swapped or reclaimed "
                f"(VmLck {format_bytes(mem.vm_lck_bytes)}, {_rlimit(mem)}){_swapped(mem)}",
            )
        )
    elif (size and locked < size) or (not size and locked == 0):
        shown = f"VmLck {format_bytes(mem.vm_lck_bytes)}"
        if mem.hugetlb_bytes:
            shown += f" + HugetlbPages {format_bytes(mem.hugetlb_bytes)}"
        target = f"guest memory {format_bytes(size)}" if size else "any locked memory"
        hint = ""
        limit = mem.memlock_soft
        if limit is not None and size and limit < size:
            hint = "; the limit is below the guest's memory"
        out.append(Violation(Check.MEMLOCK, f"{shown} < {target} ({_rlimit(mem)}){hint}{_swapped(mem)}"))

    if not spec_memory.hugepages:
        out.append(
            Violation(
                Check.HUGEPAGES,
                "<memoryBacking><hugepages/> is missing: guest memory is backed by normal pages "
                f"(HugetlbPages {format_bytes(mem.hugetlb_bytes)})",
            )
        )
    elif (size and mem.hugetlb_bytes < size) or (not size and mem.hugetlb_bytes == 0):
        target = f"guest memory {format_bytes(size)}" if size else "any hugepage memory"
        out.append(Violation(Check.HUGEPAGES, f"HugetlbPages {format_bytes(mem.hugetlb_bytes)} < {target}"))
    return out
