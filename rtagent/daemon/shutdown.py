"""Stopping the daemon within a bound, and the operator's stack dump.

SIGTERM/SIGINT handlers run in the main thread *between bytecodes*, possibly
in the middle of a ``queue.Queue`` or ``threading.Lock`` operation of that
same thread: they may touch only reentrant things (a plain attribute, a
``queue.SimpleQueue``, faulthandler), never a lock the loop also takes.

The bound, from the signal to the process being gone:

- the loop notices the stop within ``WAIT_SLICE_S`` even while it waits for
  libvirt (``CallWorker.abort_waits``: a hung libvirtd never holds the exit);
- :func:`teardown` runs the stop steps in order, each with its own cap and
  all within ``TEARDOWN_S``; a step that fails or overruns is logged and the
  next one still runs (the tracefs instance, the sockets and the lock are put
  back even when libvirt hangs);
- the interpreter is left with ``os._exit`` after the logs are flushed:
  finalising it would run libvirt's destructors (RPCs) and wait on native
  threads that may sit in a hung libvirt call;
- whatever still hangs, faulthandler's own C thread (armed at the signal,
  independent of the GIL) dumps every thread's stack to stderr and ends the
  process after ``HARD_BOUND_S``.  The unit's ``TimeoutStopSec`` is above it.

``SIGUSR1`` writes every thread's stack to stderr (the journal) at any time,
from the C signal handler, so it works even when the main thread is wedged.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..libvirt_host import WAIT_SLICE_S  # how often a wait looks whether a stop was asked

log = logging.getLogger(__name__)

TEARDOWN_S = 8.0  # every orderly stop step together
HARD_BOUND_S = 15.0  # signal → process gone, whatever hangs (systemd's TimeoutStopSec=20s is above it)
DUMP_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Step:
    """One stop step: ``run(timeout_s)`` must return within about its timeout."""

    name: str
    run: Callable[[float], object]
    cap_s: float


def install_signals(stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """SIGTERM/SIGINT → ``stop``, SIGHUP → ``reload``, SIGUSR1 → stack dump."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop())
    signal.signal(signal.SIGHUP, lambda *_: reload())
    install_stack_dump()


def sleep_unless(stopped: Callable[[], bool], seconds: float) -> None:
    """Sleep ``seconds``, in slices, ending early once ``stopped()`` (a
    signal handler sets it; ``time.sleep`` alone resumes after the handler)."""
    end = time.monotonic() + seconds
    while not stopped() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, WAIT_SLICE_S))


def install_stack_dump(signum: int = DUMP_SIGNAL) -> None:
    """``kill -USR1 <pid>``: every thread's stack on stderr (the journal)."""
    try:
        faulthandler.register(signum, file=sys.stderr, all_threads=True, chain=False)
    except (ValueError, OSError, AttributeError) as err:  # stderr closed or not a real file
        log.warning("no stack dump on signal %d: %s", signum, err)


_armed = False


def arm_hard_bound(seconds: float = HARD_BOUND_S) -> None:
    """From the first call on, the process ends within ``seconds``:
    faulthandler's watchdog thread dumps all stacks and calls ``_exit(1)``.
    Safe from a signal handler; later calls do not restart the countdown."""
    global _armed
    if _armed:
        return
    _armed = True
    try:
        faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    except (ValueError, OSError, AttributeError) as err:
        log.warning("shutdown bound not armed: %s", err)


def teardown(steps: Sequence[Step], budget_s: float = TEARDOWN_S,
             clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Run every step, each within ``min(cap, what is left of the budget)``
    (at least 0.1 s: a step that puts something back is always tried).
    Returns the names of the steps that failed or overran."""
    end = clock() + budget_s
    bad: list[str] = []
    for step in steps:
        t0 = clock()
        timeout = max(0.1, min(step.cap_s, end - t0))
        try:
            step.run(timeout)
        except Exception:  # the next step still runs
            log.exception("stopping: %s failed", step.name)
            bad.append(step.name)
            continue
        took = clock() - t0
        if took > timeout + 0.5:
            log.warning("stopping: %s took %.1fs (cap %.1fs)", step.name, took, timeout)
            bad.append(step.name)
    return bad


def exit_now(code: int) -> None:
    """Flush the logs and stdio, then leave without finalising the interpreter."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
