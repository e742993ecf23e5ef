"""What the daemon loop's queue carries: one item per thing that happened."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    EVENT = "event"
    THREAD = "thread"
    CLOSED = "closed"
    RESYNC = "resync"
    DRIFT = "drift"  # the drift watch saw a sched_set* syscall or cgroup move (daemon/driftwatch.py)
    START = "start"  # wakes the loop; _timers hands the signal to daemon/startwatch.py
    RELOAD = "reload"
    STOP = "stop"


@dataclass(frozen=True)
class Item:
    kind: Kind
    payload: object = None
    at: float = 0.0  # monotonic time the cause was seen
