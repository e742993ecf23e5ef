"""A client thread holds the state store's lock at the loop's priority.

The endpoints' threads run at nice 10 so that a flood of clients yields the
CPU to enforcement (:mod:`rtagent.monitor.connserver`).  But while such a
thread holds the store's lock (a scrape's copy, well under a millisecond;
the status answer's copy, converted to JSON after), a busy CPU that preempts it would keep the
enforcement loop waiting for that
lock behind every nice-0 task on the host: priority inversion.  So for that
short section the thread takes the process's own nice value and drops back
after.  Lowering a nice value needs ``CAP_SYS_NICE`` (the daemon has it, it
makes vCPUs SCHED_FIFO); without it nothing changes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["at_loop_priority"]


@contextlib.contextmanager
def at_loop_priority() -> Iterator[None]:
    tid = threading.get_native_id()
    try:
        mine, loop = os.getpriority(os.PRIO_PROCESS, tid), os.getpriority(os.PRIO_PROCESS, os.getpid())
    except OSError:
        mine = loop = 0
    raised = False
    if mine > loop:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, loop)
            raised = True
        except OSError:  # no CAP_SYS_NICE: stays as it was
            pass
    try:
        yield
    finally:
        if raised:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, mine)
