"""One empty ``frozenset`` for the whole daemon.

CPython 3.11 makes a new 216-byte object for every ``frozenset()`` (no
singleton), and the daemon keeps a few per guest in its records (a guest's
realtime cgroups, its budget claim): ≈ 300 identical empty sets at 100
guests (issue 14's RSS goal).  Non-empty sets of strings are left as they
are: they differ per guest, and sharing them would need a table that
outlives the guests.  CPU sets are shared by value (cpulist.interned).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")

EMPTY: frozenset = frozenset()


def frozen(items: Iterable[T]) -> frozenset[T]:
    """``frozenset(items)``, the shared :data:`EMPTY` when there are none."""
    return frozenset(items) or EMPTY
