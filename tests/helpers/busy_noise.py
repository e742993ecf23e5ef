"""A SCHED_OTHER busy loop with a known name on a given CPU for a known CPU
time; prints the kernel's own account of its run time on that CPU (schedstat
delta, ns).

    python -m tests.helpers.busy_noise NAME CPU SECONDS [NICE]

A negative NICE (still SCHED_OTHER) keeps the shared machine's other work
from chopping the run into hundreds of slices: schedstat, the yardstick,
charges each slice from the run queue's last clock update, which drifts
from the switch-to-switch time by µs per slice.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

PR_SET_NAME = 15


def main() -> None:
    name, cpu, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    # Name first, then move: every switch onto the CPU carries the final comm.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    if len(sys.argv) > 4:
        os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[4]))
    os.sched_setaffinity(0, {cpu})
    # The interpreter's start-up ran elsewhere: count from here.
    before = _runtime_ns()
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass
    print(_runtime_ns() - before, flush=True)


def _runtime_ns() -> int:
    with open("/proc/thread-self/schedstat") as fh:
        return int(fh.read().split()[0])


if __name__ == "__main__":
    main()
