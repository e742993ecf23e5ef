"""A refused RT-budget grant is not re-planned until it could succeed.

While another daemon (or tool) holds the budget, every reconcile of a
realtime guest used to plan the grant again: a walk of every guest group's
subtree (dead guests' budget) and a read of every group next to ours,
≈ 25 ms a resync on a busy host, for the same refusal.  After a refusal
the gate remembers the budget fingerprint it was planned from
(``rtgroup.budget_fingerprint``: the root's budget and every guest group's)
and answers the same refusal without re-planning while

* the fingerprint is unchanged (a guest group that went away or gave its
  budget back, a new root budget, different leaves or ``rt_budget_us``
  re-plan at once), and
* its backoff has not run out: 1 s after the first refusal, doubling to
  30 s.  The backoff catches what the fingerprint cannot see (a dead
  guest's group left holding budget, a group outside libvirt's guests
  giving some back), so a grant that can succeed is made within 30 s.

The clock is injected so the schedule is unit-tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .rtgroup import BudgetShort

__all__ = ["GrantGate", "BASE_S", "CAP_S"]

BASE_S = 1.0
CAP_S = 30.0


@dataclass
class GrantGate:
    clock: Callable[[], float] = field(default=time.monotonic)
    base_s: float = BASE_S
    cap_s: float = CAP_S
    _key: object = None
    _error: BudgetShort | None = None
    _delay_s: float = 0.0
    _until: float = 0.0
    answered: int = 0  # refusals answered without re-planning (tests, benchmarks)

    @property
    def until(self) -> float:
        """The end of the backoff in force (monotonic; 0 when none is)."""
        return self._until

    @property
    def closed(self) -> bool:
        """A refusal is on record (the caller then computes the key)."""
        return self._error is not None

    def refusal(self, key: object) -> BudgetShort | None:
        """The refusal still in force for ``key``, marked as a repeat; None
        when the grant is worth planning again."""
        if self._error is None or key != self._key or self.clock() >= self._until:
            return None
        self.answered += 1
        return BudgetShort(str(self._error), repeat=True)

    def refused(self, key: object, err: BudgetShort) -> None:
        """The grant planned from ``key`` was refused: back off (doubling while
        the key stays the same, from the start when it changed)."""
        same = self._error is not None and key == self._key
        self._delay_s = min(self._delay_s * 2, self.cap_s) if same else self.base_s
        self._key, self._error, self._until = key, err, self.clock() + self._delay_s

    def open(self) -> None:
        """A grant succeeded (or nothing needs budget): forget the refusal."""
        self._key, self._error, self._delay_s, self._until = None, None, 0.0, 0.0
