"""verify_memory: locked and hugepage-backed guest RAM."""

from __future__ import annotations

import pytest

from rtagent.model import MemorySpec, Violation
from rtagent.tuning.guest.memory import format_bytes, verify_memory
from rtagent.tuning.guest.observe import ProcessMemory

pytestmark = pytest.mark.unit

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LIMIT = 8 * MiB


def mem(lck=0, huge=0, soft=LIMIT, hard=LIMIT, swap=0, rss=40 * MiB) -> ProcessMemory:
    return ProcessMemory(vm_lck_bytes=lck, vm_rss_bytes=rss, hugetlb_bytes=huge, memlock_soft=soft,
                         memlock_hard=hard, swap_bytes=swap)


def spec(size=64 * MiB, locked=True, hugepages=True) -> MemorySpec:
    return MemorySpec(size_bytes=size, locked=locked, hugepages=hugepages)


def checks(vs: list[Violation]) -> list[str]:
    return [v.check for v in vs]


@pytest.mark.parametrize(
    "n,text",
    [
        (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
        (4 * MiB, "4 MiB"), (64 * MiB, "64 MiB"), (8 * GiB, "8 GiB"), (3 * GiB // 2, "1.5 GiB"),
        (64 * MiB - 1, "63.9 MiB"),  # truncated, never rounded up to "64.0"
        (None, "unlimited"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_fully_compliant_guest_has_no_violation():
    # hugetlb pages are not counted in VmLck (mlock skips hugetlb VMAs): they
    # count as locked.
    assert verify_memory(spec(), mem(lck=2 * MiB, huge=64 * MiB)) == []


def test_locked_normal_pages_cover_guest():
    assert checks(verify_memory(spec(hugepages=False), mem(lck=70 * MiB, soft=None, hard=None))) == ["hugepages"]


def test_vmlck_below_guest_memory():
    vs = verify_memory(spec(hugepages=False), mem(lck=0))
    assert vs[0] == Violation("memlock", "VmLck 0 B < guest memory 64 MiB (RLIMIT_MEMLOCK 8 MiB); "
                                         "the limit is below the guest's memory")


def test_vmlck_plus_hugetlb_below_guest_memory():
    vs = verify_memory(spec(), mem(lck=1 * MiB, huge=32 * MiB, soft=None, hard=None))
    assert vs == [
        Violation("memlock", "VmLck 1 MiB + HugetlbPages 32 MiB < guest memory 64 MiB (RLIMIT_MEMLOCK unlimited)"),
        Violation("hugepages", "HugetlbPages 32 MiB < guest memory 64 MiB"),
    ]


def test_soft_and_hard_limit_shown_separately():
    vs = verify_memory(spec(hugepages=True), mem(lck=0, huge=64 * MiB - 4 * KiB, soft=64 * KiB, hard=None))
    assert vs[0].check == "memlock"
    assert "(RLIMIT_MEMLOCK soft 64 KiB, hard unlimited)" in vs[0].detail
    assert "HugetlbPages 63.9 MiB" in vs[0].detail


def test_limit_hint_only_when_limit_below_size():
    vs = verify_memory(spec(size=4 * MiB, hugepages=False), mem(lck=2 * MiB))
    assert vs[0].detail == "VmLck 2 MiB < guest memory 4 MiB (RLIMIT_MEMLOCK 8 MiB)"


def test_missing_locked_is_a_violation_even_if_memory_happens_to_be_locked():
    vs = verify_memory(spec(locked=False), mem(lck=64 * MiB, huge=64 * MiB))
    assert checks(vs) == ["memlock"]
    assert "<memoryBacking><locked/> is missing" in vs[0].detail
    assert "VmLck 64 MiB" in vs[0].detail and "RLIMIT_MEMLOCK 8 MiB" in vs[0].detail


def test_missing_hugepages_is_a_violation():
    vs = verify_memory(spec(hugepages=False), mem(lck=64 * MiB))
    assert vs == [Violation("hugepages", "<memoryBacking><hugepages/> is missing: guest memory is backed by "
                                         "normal pages (HugetlbPages 0 B)")]


def test_nothing_asked_nothing_done():
    vs = verify_memory(spec(locked=False, hugepages=False), mem())
    assert checks(vs) == ["memlock", "hugepages"]


def test_swap_is_mentioned():
    vs = verify_memory(spec(hugepages=False), mem(lck=0, swap=3 * MiB))
    assert vs[0].detail.endswith("; VmSwap 3 MiB already swapped out")
    vs = verify_memory(spec(locked=False, hugepages=False), mem(swap=1536))
    assert vs[0].detail.endswith("; VmSwap 1.5 KiB already swapped out")


@pytest.mark.parametrize("lck,huge,expected", [
    (64 * MiB, 0, ["hugepages"]),
    (64 * MiB - 4 * KiB, 64 * MiB, []),  # hugetlb alone covers the lock requirement
    (64 * MiB - 4 * KiB, 0, ["memlock", "hugepages"]),
    (128 * MiB, 128 * MiB, []),
])
def test_boundaries(lck, huge, expected):
    assert checks(verify_memory(spec(), mem(lck=lck, huge=huge))) == expected


def test_unknown_size_checks_only_presence():
    assert verify_memory(spec(size=0), mem(lck=4 * KiB, huge=2 * MiB)) == []
    vs = verify_memory(spec(size=0), mem())
    assert vs == [
        Violation("memlock", "VmLck 0 B < any locked memory (RLIMIT_MEMLOCK 8 MiB)"),
        Violation("hugepages", "HugetlbPages 0 B < any hugepage memory"),
    ]


def test_violation_json():
    v = Violation("memlock", "x")
    assert v.to_json() == {"check": "memlock", "detail": "x"}


def test_pure():
    s, m = spec(), mem()
    assert verify_memory(s, m) == verify_memory(s, m)
