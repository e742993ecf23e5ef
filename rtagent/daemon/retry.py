"""When to look at a guest again before the next resync.

libvirt places a new thread (cgroup, cpuset) some time *after* the kernel
reports its birth, and a refused change (EPERM while RT budget is short, a
cpuset in flux) often succeeds a moment later: both are retried on a short
backoff (50 ms, 100 ms, … capped at the resync interval) instead of waiting
a whole resync.  The clock is injected so the schedule is unit-tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

BASE_DELAY_S = 0.05
# Follow-up looks after a thread event (50 ms, 100 ms, … 800 ms).
SETTLE_ATTEMPTS = 5


@dataclass(frozen=True)
class Due:
    uuid: str
    attempts: int  # looks already scheduled for this guest in a row


class RetrySchedule:
    def __init__(self, cap_s: float, clock: Callable[[], float] = time.monotonic,
                 base_s: float = BASE_DELAY_S, settle_attempts: int = SETTLE_ATTEMPTS):
        self.cap_s = cap_s
        self.base_s = base_s
        self.settle_attempts = settle_attempts
        self._clock = clock
        self._due: dict[str, tuple[float, int]] = {}  # uuid -> (deadline, attempts)

    def __contains__(self, uuid: str) -> bool:
        return uuid in self._due

    def schedule(self, uuid: str, attempts: int = 0) -> float:
        """Look again after ``base * 2**attempts`` (capped); an earlier
        deadline already set wins.  Returns the deadline in force."""
        due = self._clock() + min(self.base_s * 2 ** attempts, self.cap_s)
        current = self._due.get(uuid)
        if current is None or current[0] > due:
            self._due[uuid] = (due, attempts + 1)
            return due
        return current[0]

    def take(self, uuid: str) -> int:
        """Remove ``uuid``; the attempts made so far (0 if none scheduled)."""
        return self._due.pop(uuid, (0.0, 0))[1]

    def discard(self, uuid: str) -> None:
        self._due.pop(uuid, None)

    def next_deadline(self) -> float | None:
        return min((d for d, _ in self._due.values()), default=None)

    def due(self) -> list[Due]:
        """Guests whose deadline has passed, taken off the schedule."""
        now = self._clock()
        out = [Due(u, n) for u, (d, n) in self._due.items() if now >= d]
        for d in out:
            del self._due[d.uuid]
        return out

    def after_reconcile(self, uuid: str, attempts: int, *, pending: bool, refused: bool, settling: bool,
                        not_before: float | None = None) -> bool:
        """Decide whether to look again: a vCPU libvirt is still placing
        (``pending``) or a refused change keep backing off for as long as they
        last; a thread event's settle looks (``settling``) stop after
        ``settle_attempts``.  ``not_before``: a refusal that cannot go
        through before then (the RT budget's grant gate) is looked at then,
        not on the short backoff."""
        if pending or (settling and attempts < self.settle_attempts):
            self.schedule(uuid, attempts)
            return True
        if refused and not_before is not None:
            self.schedule_at(uuid, not_before, attempts)
            return True
        if refused:
            self.schedule(uuid, attempts)
            return True
        return False

    def schedule_at(self, uuid: str, at: float, attempts: int = 0) -> float:
        """Look again at ``at``; an earlier deadline already set wins."""
        current = self._due.get(uuid)
        if current is None or current[0] > at:
            self._due[uuid] = (at, attempts + 1)
            return at
        return current[0]
