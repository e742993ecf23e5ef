"""File descriptors: raise the soft limit, keep a reserve for enforcement.

The enforcement path opens descriptors all the time (``/proc`` files of every
guest thread, cgroup files, tracefs, libvirt's socket, the proc connector).
Clients of the metrics endpoint and the status socket must never be able to
use them up: their connections are capped (``metrics.max_connections``,
``status.max_clients``) and the caps must fit under the soft
``RLIMIT_NOFILE`` with :data:`ENFORCEMENT_RESERVE` descriptors to spare.

The scrape keeps two descriptors open per exported realtime vCPU thread
(its ``schedstat`` and ``status``, read with ``pread``: a third and two
thirds of the cost of opening them each scrape, :mod:`rtagent.kernel.counters`).  Those come out of the same
budget, after the clients: at most :data:`COUNTER_FDS` of what the reserve
and the client caps leave; threads beyond it are read by path.  The full
check keeps its own (each managed thread's ``stat`` and ``cgroup``, each
guest's ``status`` and ``limits``, the counters of the guests that stood:
``daemon/fullcheck.py``), at most :data:`STANDING_FDS` of what is left
after those.

At start the soft limit is raised to the hard limit (systemd's default soft
limit is 1,024, its hard limit 524,288; the unit sets ``LimitNOFILE=``).  If
the caps still do not fit, they are lowered and the daemon says so.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["COUNTER_FDS", "STANDING_FDS", "ENFORCEMENT_RESERVE", "ClientBudget", "client_budget", "raise_nofile"]

# Descriptors kept for everything but clients: a reconcile of one guest has a
# handful open at once; libvirt, netlink, selectors and logs a dozen more.
ENFORCEMENT_RESERVE = 256
# Descriptors the scrape may keep open (schedstat + status per realtime
# vCPU thread): twice the 1,000 realtime vCPUs of the goal, twice over.
COUNTER_FDS = 4096
# Descriptors the full check may keep open: ≈ 20 a paused guest (two a
# thread, two a process, one schedstat a vCPU), 200 guests' worth.
STANDING_FDS = 4096
# Never ask for more than this even when the hard limit is "unlimited".
_SOFT_CEILING = 1 << 20


@dataclass(frozen=True)
class ClientBudget:
    soft_limit: int
    metrics: int
    status: int
    lowered: bool = False
    counters: int = 0  # descriptors the scrape may keep open (its vCPU counters)
    standing: int = 0  # descriptors the full check may keep open (after the scrape's)


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard if hard != resource.RLIM_INFINITY else _SOFT_CEILING, _SOFT_CEILING)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as err:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, target, err)
    return soft


def client_budget(soft_limit: int, metrics: int, status: int, counters: int = COUNTER_FDS,
                  standing: int = STANDING_FDS) -> ClientBudget:
    """Fit the configured client caps under ``soft_limit`` minus the reserve,
    halving both (at least 1 each) until they do; the scrape's kept
    descriptors get at most ``counters`` of what is left (maybe none), the
    full check's at most ``standing`` of what is left after those."""
    room = max(2, soft_limit - ENFORCEMENT_RESERVE)
    want_m, want_s = metrics, status
    while metrics + status > room and (metrics > 1 or status > 1):
        metrics, status = max(1, metrics // 2), max(1, status // 2)
    lowered = (metrics, status) != (want_m, want_s)
    if lowered:
        log.warning("file descriptor limit %d leaves room for %d client connections after the %d kept for "
                    "enforcement: metrics.max_connections lowered from %d to %d, status.max_clients from %d "
                    "to %d (raise LimitNOFILE= in the unit)", soft_limit, room, ENFORCEMENT_RESERVE,
                    want_m, metrics, want_s, status)
    kept = max(0, min(counters, room - metrics - status))
    return ClientBudget(soft_limit, metrics, status, lowered, kept,
                        max(0, min(standing, room - metrics - status - kept)))
