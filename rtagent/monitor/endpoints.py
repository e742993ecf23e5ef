"""Start the daemon's client-facing endpoints within a descriptor budget.

The status socket and the metrics endpoint each run their own
:class:`~rtagent.monitor.connserver.ConnectionServer` thread; their
connection caps are fitted under ``RLIMIT_NOFILE`` (raised to the hard limit
first) with a reserve kept for enforcement (:mod:`rtagent.monitor.fdlimit`).
Nothing here is on the enforcement path: the daemon loop never waits for a
client.
"""

from __future__ import annotations

import functools
import logging

from ..config import Config
from ..state import StateStore
from ..status import StatusServer
from ..statusjson import encode_answer
from . import fdlimit
from .lockprio import at_loop_priority

log = logging.getLogger(__name__)

__all__ = ["start_endpoints"]


def start_endpoints(config: Config, store: StateStore, snapshot=None, on_standing_fds=None):
    """Bind and start the status socket and (if enabled) ``/metrics``;
    returns ``(StatusServer, MetricsServer | None)``.  ``snapshot`` is the
    status answer, encoded or as a document (default
    ``statusjson.encode_answer(store, at_loop_priority)``).
    ``on_standing_fds(n)``: told the full check's descriptor budget."""
    soft = fdlimit.raise_nofile()
    metrics_cap = config.metrics.max_connections if config.metrics.enabled else 0
    budget = fdlimit.client_budget(soft, metrics_cap, config.status.max_clients)
    log.debug("file descriptors: soft limit %d, client caps metrics %d + status %d, %d kept for enforcement, "
              "%d for the scrape's schedstat", soft, budget.metrics, budget.status, fdlimit.ENFORCEMENT_RESERVE,
              budget.counters if config.metrics.enabled else 0)
    if on_standing_fds is not None:
        on_standing_fds(budget.standing)
    # The status thread (nice 10) holds the store's lock only for the
    # snapshot's copy, and at the loop's priority while it does.
    snapshot = snapshot or functools.partial(encode_answer, store, at_loop_priority)
    status = StatusServer(config.status.socket, config.status.group, snapshot,
                          max_clients=budget.status, timeout_s=config.status.timeout_s)
    status.start()
    metrics = None
    if config.metrics.enabled:
        from .metrics import serve

        try:
            metrics = serve(store, config.metrics, max_connections=budget.metrics, status_server=status.server,
                            counter_fds=budget.counters)
        except Exception:
            status.close()
            raise
    return status, metrics
