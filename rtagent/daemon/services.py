"""What the daemon serves and listens to besides libvirt: the proc
connector (new QEMU threads), the status socket and the metrics endpoint;
and the agent's own confinement to the housekeeping CPUs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .. import privileges
from ..config import Config, load_config, partition_warning
from ..errors import RtagentError
from ..cpulist import format_cpulist
from ..libvirt_host import DomainEvent, LibvirtHost, start_event_loop
from ..kernel import Kernel
from ..kernel.procconn import ProcConnector
from ..monitor import gcpause
from ..monitor.endpoints import start_endpoints
from ..monitor.lockprio import at_loop_priority
from ..state import StateStore
from ..status import StatusServer
from ..statusjson import encode_answer
from . import heap, startonly
from .driftwatch import DriftWatch
from .items import Item, Kind
from .lock import InstanceLock
from .placement import GuestPlacement, PlacementWatch
from .shutdown import Step

log = logging.getLogger(__name__)


def confine_self(housekeeping: frozenset[int]) -> None:
    """The agent runs on housekeeping CPUs and is never realtime; threads
    started after this inherit the mask."""
    try:
        Kernel().tasks.confine_self(housekeeping)
    except OSError as err:
        log.warning("cannot confine rtagent to housekeeping CPUs %s: %s", format_cpulist(housekeeping), err)


def prepare(config: Config, lock: InstanceLock) -> privileges.PrivilegeReport:
    """Start-up before any service exists; returns the privileges kept."""
    # First of all: a second daemon must not touch the first one's socket or port.
    lock.acquire()
    heap.configure()  # before the first large buffer and the first thread (heap.py)
    startonly.forget()  # argparse, tomllib: parsed once (startonly.py); before gcpause's freeze
    # Before any other thread exists: capabilities are per thread, inherited at creation.
    privs = privileges.enforce(config)
    if (warning := partition_warning(config)) is not None:
        log.warning("%s", warning)
    confine_self(config.partition.housekeeping)
    start_event_loop()  # before the first connection (keepalive, events)
    return privs


class Services:
    def __init__(self, store: StateStore, on_thread: Callable[[int, int, str], None],
                 on_overflow: Callable[[], None], put: Callable[[Item], None] | None = None):
        """``put``: the loop's queue, for the cpuset watch's re-pins and the drift watch."""
        self.store = store
        self._on_thread = on_thread
        self._on_overflow = on_overflow
        put = put or (lambda _item: None)
        self._on_repin: Callable[[DomainEvent, float], None] = lambda e, at: put(Item(Kind.EVENT, e, at))
        self.procconn: ProcConnector | None = None
        self.status: StatusServer | None = None
        self.metrics = None
        self.interference = None  # monitor.interference_service.InterferenceService
        self.placement: PlacementWatch | None = None  # new iothreads' cpuset groups (placement.py)
        self.startwatch = None
        # sched_set* syscalls and cgroup moves seen through trace events (driftwatch.py)
        self.driftwatch = DriftWatch(store, put)

    def _overflow(self) -> None:
        """The proc connector lost events: count it, and resync to catch up."""
        self.store.update(lambda s: s.daemon.events_dropped.update({"proc": 1}))
        self._on_overflow()

    def set_tracked(self, pids: set[int]) -> None:
        """The QEMU processes whose thread events matter."""
        if self.procconn is not None:
            self.procconn.set_tracked(pids)

    def watch_threads(self, tids: frozenset[int]) -> None:
        """Every managed thread: the drift watch filters its events to them."""
        self.driftwatch.set_tids(tids)

    def set_placements(self, placements: dict[int, GuestPlacement]) -> None:
        """Where each managed QEMU's live-added iothreads go."""
        if self.placement is not None:
            self.placement.set_guests(placements)

    def start(self, config: Config, privs, startwatch=None) -> None:
        """``startwatch``: the daemon's StartWatch (daemon/startwatch.py), whose
        cgroup watcher thread starts here, after privileges are settled."""
        self.startwatch = startwatch
        if startwatch is not None:
            startwatch.start()
        if config.daemon.proc_connector and privs.proc_connector:
            self.procconn = ProcConnector(self._on_thread, self._overflow)
            try:
                self.procconn.start()
                self.store.update(lambda s: setattr(s.daemon, "proc_connector", True))
            except OSError as err:
                log.warning("proc connector unavailable (%s): new threads are tuned at the next resync "
                            "(needs CAP_NET_ADMIN)", err)
                self.procconn = None
        try:
            if config.daemon.cpuset_watch:
                self.placement = PlacementWatch(Kernel(), self._on_repin)
                self.placement.start()
        except OSError as err:
            log.warning("cpuset watch unavailable (%s): a live-added iothread is placed by the reconcile "
                        "after libvirt's affinity call", err)
        self.driftwatch.start(config)  # "on" and unavailable: a start-up error naming what is missing
        self.interference = start_interference(config, self.store)
        # Bounded, timed-out client servers within a descriptor budget.
        self.status, self.metrics = start_endpoints(
            config, self.store,
            snapshot=lambda: heap.trimmed(encode_answer(self.store, at_loop_priority,
                                                        extra=lambda: {"interference": self._interference_json()})))
        if self.metrics is not None and self.interference is not None:
            from ..monitor.interference_service import InterferenceCollector

            self.metrics.registry.register(InterferenceCollector(self.interference))
        # What is alive now lives as long as the daemon: no collection walks it
        # again (a full pass over it cost a scrape 18-23 ms; monitor/gcpause.py).
        log.debug("%d start-up objects frozen out of the garbage collector", gcpause.freeze_startup())

    def _interference_json(self) -> dict:
        """The status answer's ``interference`` section."""
        if self.interference is None:
            return {"running": False, "cpus": []}  # as interference_service.status_json(None)
        from ..monitor.interference_service import status_json

        return status_json(self.interference)

    def stop_steps(self) -> list[Step]:
        """What stopping puts back, each step bounded (daemon/shutdown.py).
        The tracefs instance first: its removal matters most (tracing costs
        the realtime CPUs until it is gone), and it is tried even when its
        reader thread did not finish in time."""
        steps = self.driftwatch.stop_steps()
        if self.interference is not None:
            steps.append(Step("interference tracefs instance", self.interference.stop, 4.0))
        if self.procconn is not None:
            steps.append(Step("proc connector", self.procconn.stop, 1.0))
        if self.placement is not None:
            steps.append(Step("cpuset watch", self.placement.stop, 1.0))
        if self.startwatch is not None:
            steps.append(Step("start window watch", self.startwatch.stop, 1.0))
        for name, svc in (("status socket", self.status), ("metrics endpoint", self.metrics)):
            if svc is not None:
                steps.append(Step(name, svc.close, 1.0))
        return steps


def start_interference(config: Config, store: StateStore):
    """The interference service (monitor/interference_service.py), or None
    when ``[interference] enabled = false``: then its module is not even
    imported — the sampler, tracefs and prometheus_client (its collector)
    are ≈ 4 MiB of RSS a daemon without them does not pay."""
    if not config.interference.enabled:
        return None
    from ..monitor.interference_service import InterferenceService

    return InterferenceService.start(config, store)


def reload_config(current: Config, path: str | None) -> Config | None:
    """SIGHUP: the new config, or None (kept the running one) if it is bad."""
    try:
        new = load_config(path)
    except RtagentError as err:
        log.error("reload refused, keeping the running config: %s", err)
        return None
    finally:
        startonly.forget()  # tomllib again (startonly.py)
    if (warning := partition_warning(new)) is not None:
        log.warning("reload: %s", warning)
    fixed = ("status.socket", "metrics.listen", "libvirt.uri", "daemon.lock_file", "daemon.drift_watch")
    if any(_get(new, k) != _get(current, k) for k in fixed):
        log.warning("reload: %s take effect at restart", ", ".join(fixed))
    log.info("reloaded config from %s", new.path or "(defaults)")
    return new


def _get(config: Config, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def guest_counts(s: StateStore) -> tuple[int, int]:
    """(guests, non-compliant ones); the caller holds the store's lock."""
    return len(s.guests), sum(1 for g in s.guests.values() if g.report is not None and not g.report.compliant)


def count_resync(s: StateStore) -> tuple[int, int]:
    """A resync ended: counted, and the status line's counts (under the lock)."""
    s.daemon.resyncs += 1
    s.daemon.last_resync_at = time.time()
    return guest_counts(s)


def status_text(counts: tuple[int, int], hung: float | None) -> str:
    n, bad = counts
    return f"{n} realtime guest(s), {bad} non-compliant" + (
        "" if hung is None else f"; libvirt unresponsive for {hung:.0f}s")


def status_line(store: StateStore, host: LibvirtHost) -> str:
    """sd_notify's STATUS=: guests, compliance, and a hung libvirt."""
    return status_text(store.read(guest_counts), host.unresponsive_s())
