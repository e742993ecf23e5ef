"""Who keeps moving an IRQ back?  Corrections per IRQ in a sliding window."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["IrqConflictDetector"]


@dataclass
class IrqConflictDetector:
    threshold: int = 5
    window_s: float = 60.0
    _events: dict[int, deque] = field(default_factory=dict)

    def record(self, irq: int, now: float) -> bool:
        """Note one correction of ``irq``; True when it was corrected more
        than ``threshold`` times within ``window_s`` — someone else
        (irqbalance, a tuned profile, a driver) keeps moving it back."""
        q = self._events.setdefault(irq, deque())
        q.append(now)
        self._trim(q, now)
        return len(q) > max(1, self.threshold)

    def count(self, irq: int, now: float) -> int:
        q = self._events.get(irq)
        if not q:
            return 0
        self._trim(q, now)
        return len(q)

    def _trim(self, q: deque, now: float) -> None:
        while q and q[0] < now - self.window_s:
            q.popleft()
