"""CPU set syntaxes used by the kernel, libvirt and Nova.

Three notations meet in rtagent:

* the kernel's list syntax (``0-3,8,10-11``) of ``/sys/devices/system/cpu/*``,
  ``/proc/irq/*/smp_affinity_list`` and libvirt's ``cpuset`` attributes;
* the kernel's comma-separated 32-bit hex masks (``/proc/irq/*/smp_affinity``,
  ``/sys/devices/virtual/workqueue/cpumask``);
* Nova's ``hw:cpu_realtime_mask`` (``^0-1`` = every vCPU except 0-1, ``2-7`` =
  exactly those, ``0-3,^2`` = 0,1,3).

Every parser raises :class:`CpuListError` naming the whole input and the token
at fault, so that config and XML errors can be reported to an operator as-is.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CpuListError",
    "parse_cpulist",
    "format_cpulist",
    "parse_hexmask",
    "format_hexmask",
    "parse_realtime_mask",
]

# A sanity bound: no host has more CPUs than this and a typo like "0-99999999"
# must not allocate a giant set.
MAX_CPU = 8191


class CpuListError(ValueError):
    """A CPU list, mask or Nova realtime mask that cannot be parsed."""

    def __init__(self, text: str, token: str, reason: str):
        self.text = text
        self.token = token
        self.reason = reason
        super().__init__(f"invalid CPU list {text!r}: {reason} at {token!r}")


def _parse_number(text: str, token: str, part: str) -> int:
    part = part.strip()
    if not part.isdigit() or not part.isascii():
        raise CpuListError(text, token, "expected a CPU number")
    value = int(part)
    if value > MAX_CPU:
        raise CpuListError(text, token, f"CPU number above {MAX_CPU}")
    return value


def _parse_item(text: str, token: str) -> set[int]:
    """One comma-separated item: ``N``, ``N-M`` or the kernel's ``N-M:step/group``."""
    body = token.strip()
    if not body:
        raise CpuListError(text, token, "empty item")
    stride = None
    if ":" in body:
        # The kernel accepts "0-15:2/4" (used/group size); keep parity with it.
        body, _, stride_text = body.partition(":")
        used, slash, group = stride_text.partition("/")
        if not slash:
            raise CpuListError(text, token, "stride must be 'used/group'")
        stride = (_parse_number(text, token, used), _parse_number(text, token, group))
        if stride[0] == 0 or stride[1] == 0 or stride[0] > stride[1]:
            raise CpuListError(text, token, "invalid stride")
    if "-" in body:
        lo_text, _, hi_text = body.partition("-")
        lo = _parse_number(text, token, lo_text)
        hi = _parse_number(text, token, hi_text)
        if hi < lo:
            raise CpuListError(text, token, "range end below its start")
    else:
        if stride is not None:
            raise CpuListError(text, token, "stride needs a range")
        lo = hi = _parse_number(text, token, body)
    cpus = range(lo, hi + 1)
    if stride is None:
        return set(cpus)
    used, group = stride
    return {c for c in cpus if (c - lo) % group < used}


# A host has few distinct CPU sets, but the daemon holds one per thread per
# record (observation, plan, steady baseline…): thousands at 100 guests, each
# frozenset ≈ 216 bytes.  Equal sets are shared (bounded: a pathological
# stream of distinct sets just stops being shared).
_INTERNED: dict[frozenset[int], frozenset[int]] = {}
_INTERN_MAX = 4096


def interned(cpus: Iterable[int]) -> frozenset[int]:
    """``frozenset(cpus)``, the one instance of that set where there is one."""
    fs = frozenset(cpus)
    if len(_INTERNED) >= _INTERN_MAX:
        return _INTERNED.get(fs, fs)
    return _INTERNED.setdefault(fs, fs)  # atomic under the GIL: threads may race safely


def parse_cpulist(text: str, *, allow_empty: bool = False) -> frozenset[int]:
    """Parse the kernel's CPU list syntax into a set of CPU numbers.

    An empty string (or only whitespace, as in an empty sysfs file) is an empty
    set only when ``allow_empty``: for configuration an empty list is almost
    always a mistake.
    """
    if not isinstance(text, str):
        raise CpuListError(repr(text), repr(text), "expected a string")
    stripped = text.strip()
    if not stripped:
        if allow_empty:
            return frozenset()
        raise CpuListError(text, text, "empty CPU list")
    cpus: set[int] = set()
    for token in stripped.split(","):
        cpus |= _parse_item(text, token)
    return interned(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Canonical kernel list, as the kernel prints it: sorted, every run of
    two or more consecutive CPUs written ``a-b`` (``0-1,3,5-7``)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_hexmask(text: str) -> frozenset[int]:
    """Parse a kernel bitmap (``ff``, ``00000000,00000003``) into CPU numbers."""
    stripped = text.strip()
    if not stripped:
        raise CpuListError(text, text, "empty mask")
    value = 0
    for group in stripped.split(","):
        word = group.strip()
        if word.lower().startswith("0x"):
            word = word[2:]
        if not word or len(word) > 8 or any(c not in "0123456789abcdefABCDEF" for c in word):
            # Name the group as written ("0x", not the empty rest of it).
            raise CpuListError(text, group.strip(), "expected up to 8 hex digits per comma group")
        value = (value << 32) | int(word, 16)
    cpus = set()
    bit = 0
    while value:
        if value & 1:
            if bit > MAX_CPU:
                raise CpuListError(text, stripped, f"CPU number above {MAX_CPU}")
            cpus.add(bit)
        value >>= 1
        bit += 1
    return interned(cpus)


def format_hexmask(cpus: Iterable[int]) -> str:
    """Format CPUs as the kernel prints bitmaps: 32-bit groups, comma separated."""
    value = 0
    for cpu in cpus:
        if cpu < 0 or cpu > MAX_CPU:
            raise CpuListError(str(cpu), str(cpu), "CPU number out of range")
        value |= 1 << cpu
    groups = []
    while True:
        groups.append(f"{value & 0xFFFFFFFF:08x}")
        value >>= 32
        if not value:
            break
    return ",".join(reversed(groups))


def format_kernel_hexmask(cpus: Iterable[int]) -> str:
    """:func:`format_hexmask` without leading zeros when it fits one group
    (``3``, ``1``): the form the kernel prints a short bitmap in, so that
    before and after read alike."""
    text = format_hexmask(cpus)
    if "," in text:
        return text
    return text.lstrip("0") or "0"


def parse_realtime_mask(text: str, vcpus: Iterable[int]) -> frozenset[int]:
    """Apply Nova's ``hw:cpu_realtime_mask`` to the guest's vCPU numbers.

    Nova's semantics (``nova.virt.hardware.vcpus_realtime_topology``): the mask
    is a list of included and ``^``-excluded items.  Without any included item
    the base is every vCPU of the guest; each ``^item`` is removed afterwards.
    ``^0-1`` → all but 0 and 1; ``2-3`` → exactly 2 and 3; ``0-3,^2`` → 0,1,3.

    Included vCPUs that the guest does not have raise an error: a mask naming
    vCPU 7 on a 4-vCPU guest is a mistake, not a no-op.
    """
    all_vcpus = frozenset(vcpus)
    stripped = text.strip() if isinstance(text, str) else ""
    if not stripped:
        raise CpuListError(str(text), str(text), "empty realtime mask")
    included: set[int] = set()
    excluded: set[int] = set()
    any_included = False
    for token in stripped.split(","):
        body = token.strip()
        if body.startswith("^"):
            if not body[1:].strip():
                raise CpuListError(text, token, "'^' without a vCPU")
            try:
                items = _parse_item(text, body[1:])
            except CpuListError as err:
                # Name the token as written, caret included ("^a-b", not "a-b").
                raise CpuListError(text, body, err.reason) from None
            missing = items - all_vcpus
            if missing:
                raise CpuListError(
                    text, body, f"excluded vCPU {format_cpulist(missing)} not in the guest's vCPUs "
                    f"{format_cpulist(all_vcpus) or '(none)'}"
                )
            excluded |= items
        else:
            any_included = True
            items = _parse_item(text, body)
            missing = items - all_vcpus
            if missing:
                raise CpuListError(
                    text, token, f"vCPU {format_cpulist(missing)} not in the guest's vCPUs "
                    f"{format_cpulist(all_vcpus) or '(none)'}"
                )
            included |= items
    base = included if any_included else set(all_vcpus)
    return frozenset(base - excluded)
