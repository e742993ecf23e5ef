"""When the next timed resync is due (pure: times are passed in).

A resync runs one interval after the previous one *ended*.  With no guest
managed and no host partition to enforce, a steady resync has nothing to
check: an idle daemon then wakes only as often as its libvirt liveness
probe is sent (at most every call timeout) and when the full check is due.
Each wake-up costs ~50-100 µs of CPU on the test machine, the idle goal is
0.05 % of a core (500 µs a second).  A tracked guest brings the interval
back at once, because the deadline is computed anew on every loop turn.

While the drift watch runs (daemon/driftwatch.py: a sched_set* syscall or
a cgroup move of a managed thread reconciles its guest at once), the steady
resync only backs the watch up, every ``watched_resync_interval_s``; the
full check stays due on its own time.  The host partition (IRQ affinity
writes have no syscall to watch) keeps ``resync_interval_s``.  An idle
daemon with the watch healthy probes libvirt at that watched interval too
(a hung libvirtd is then noticed as late as with guests, ≤ watched interval
+ call timeout), not every call timeout: each probe wakes the main thread,
the libvirt worker and libvirt's event thread (0.7-1.4 ms of CPU at load 97).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loop import Daemon

__all__ = ["resync_due", "due_after"]


def due_after(last_end: float, interval_s: float, *, idle: bool, probe_every_s: float, next_full: float,
              watched_s: float | None = None) -> float:
    if not idle and watched_s is not None and watched_s > interval_s:
        return min(last_end + watched_s, max(next_full, last_end + interval_s))
    if not idle:
        return last_end + interval_s
    # The probe at the cadence it has with guests: with the watch healthy that
    # is the watched interval (an idle daemon has no faster need to know).
    probe = probe_every_s if watched_s is None else max(probe_every_s, watched_s)
    return max(last_end + interval_s, min(last_end + max(interval_s, probe), next_full))


def resync_due(d: Daemon) -> float:
    """The daemon's next timed resync (monotonic)."""
    # A trim of /machine the kernel refused a moment ago (ledger.py) is retried
    # by the next steady resync: not idle until it is done.
    idle = not d.guests.tracked and d.hostside.enforcer is None and not d.guests.tuner.ledger.trim_failed
    watched = d.config.daemon.watched_resync_interval_s if d.services.driftwatch.healthy and d.hostside.enforcer is None \
        else None
    return due_after(d._resynced_at, d.config.daemon.resync_interval_s, idle=idle,
                     probe_every_s=d.config.libvirt.call_timeout_s, next_full=d.guests.next_full, watched_s=watched)
