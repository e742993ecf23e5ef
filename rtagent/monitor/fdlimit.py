"""File descriptors: raise the soft limit, keep a reserve for enforcement.

The enforcement path opens descriptors all the time (``/proc`` files of every
guest thread, cgroup files, tracefs, libvirt's socket, the proc connector).
Clients of the metrics endpoint and the status socket must never be able to
use them up: their connections are capped (``metrics.max_connections``,
``status.max_clients``) and the caps must fit under the soft
``RLIMIT_NOFILE`` with :data:`ENFORCEMENT_RESERVE` descriptors to spare.

At start the soft limit is raised to the hard limit (systemd's default soft
limit is 1,024, its hard limit 524,288; the unit sets ``LimitNOFILE=``).  If
the caps still do not fit, they are lowered and the daemon says so.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["ENFORCEMENT_RESERVE", "ClientBudget", "client_budget", "raise_nofile"]

# Descriptors kept for everything but clients: a reconcile of one guest has a
# handful open at once; libvirt, netlink, selectors and logs a dozen more.
ENFORCEMENT_RESERVE = 256
# Never ask for more than this even when the hard limit is "unlimited".
_SOFT_CEILING = 1 << 20


@dataclass(frozen=True)
class ClientBudget:
    soft_limit: int
    metrics: int
    status: int
    lowered: bool = False


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


def client_budget(soft_limit: int, metrics: int, status: int) -> ClientBudget:
    """Fit the configured client caps under ``soft_limit`` minus the reserve,
    halving both (at least 1 each) until they do."""
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
    return ClientBudget(soft_limit, metrics, status, lowered)
