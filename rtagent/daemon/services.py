"""What the daemon serves and listens to besides libvirt: the proc
connector (new QEMU threads), the status socket and the metrics endpoint;
and the agent's own confinement to the housekeeping CPUs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ..config import Config
from ..cpulist import format_cpulist
from ..procconn import ProcConnector
from ..state import StateStore
from ..status import StatusServer

log = logging.getLogger(__name__)


def confine_self(housekeeping: frozenset[int]) -> None:
    """The agent runs on housekeeping CPUs and is never realtime; threads
    started after this inherit the mask."""
    try:
        os.sched_setaffinity(0, housekeeping)
        if os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as err:
        log.warning("cannot confine rtagent to housekeeping CPUs %s: %s", format_cpulist(housekeeping), err)


class Services:
    def __init__(self, store: StateStore, on_thread: Callable[[int, int, str], None],
                 on_overflow: Callable[[], None]):
        self.store = store
        self._on_thread = on_thread
        self._on_overflow = on_overflow
        self.procconn: ProcConnector | None = None
        self.status: StatusServer | None = None
        self.metrics = None

    def set_tracked(self, pids: set[int]) -> None:
        """The QEMU processes whose thread events matter."""
        if self.procconn is not None:
            self.procconn.set_tracked(pids)

    def start(self, config: Config, privs) -> None:
        if config.daemon.proc_connector and privs.proc_connector:
            self.procconn = ProcConnector(self._on_thread, self._on_overflow)
            try:
                self.procconn.start()
                self.store.update(lambda s: setattr(s.daemon, "proc_connector", True))
            except OSError as err:
                log.warning("proc connector unavailable (%s): new threads are tuned at the next resync "
                            "(needs CAP_NET_ADMIN)", err)
                self.procconn = None
        self.status = StatusServer(config.status.socket, config.status.group, self.store.snapshot)
        self.status.start()
        if config.metrics.enabled:
            from ..monitor.metrics import serve

            self.metrics = serve(self.store, config.metrics)

    def close(self) -> None:
        for svc in (self.procconn, self.status, self.metrics):
            if svc is not None:
                (svc.stop if svc is self.procconn else svc.close)()
