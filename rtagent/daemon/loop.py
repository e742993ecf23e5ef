"""``rtagent run``: the loop — timers, the event queue and signals.

libvirt's callbacks, the proc connector thread, signal handlers and the
resync timer only *enqueue*; this loop, in the main thread, takes items off
the queue and hands them to the guest supervisor (``guests.py``) and the
host-side supervisor (``hostside.py``), so reconciles never race each other.
No libvirt call here can block longer than ``[libvirt] call_timeout_s``
(``libvirt_host`` runs them on a worker), so the watchdog, petted only by
this loop, says whether *enforcement* is alive, not whether libvirt is.
"""

from __future__ import annotations

import enum
import logging
import queue
import signal
import time
from dataclasses import dataclass

from .. import __version__, privileges
from ..config import Config, load_config
from ..cpulist import format_cpulist
from ..errors import RtagentError
from ..libvirt_host import DomainEvent, LibvirtHost, start_event_loop
from ..sdnotify import Notifier
from ..state import StateStore
from .guests import GuestSupervisor
from .hostside import HostSupervisor
from .link import LibvirtLink
from .lock import InstanceLock
from .services import Services, confine_self

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    EVENT = "event"
    THREAD = "thread"
    CLOSED = "closed"
    RESYNC = "resync"
    RELOAD = "reload"
    STOP = "stop"


@dataclass(frozen=True)
class Item:
    kind: Kind
    payload: object = None
    at: float = 0.0  # monotonic time the cause was seen


class Daemon:
    def __init__(self, config: Config, config_path: str | None, *, notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.store = StateStore()
        self.store.daemon.libvirt_uri = config.libvirt.uri
        self.queue: queue.Queue[Item] = queue.Queue()
        self.lock = InstanceLock(config.daemon.lock_file)
        self.host = LibvirtHost(config.libvirt.uri, config.libvirt.call_timeout_s)
        self.link = LibvirtLink(self.host, self.store, config.libvirt.reconnect_max_backoff_s,
                                self._put_event, lambda reason: self._put(Kind.CLOSED, reason))
        self.services = Services(self.store, self._put_thread, self._on_overflow)
        self.guests = GuestSupervisor(config, self.host, self.store, on_tracked=self.services.set_tracked)
        self.hostside = HostSupervisor(config, self.store)
        self._stop = False
        self._next_resync = 0.0
        self._last_status = ""

    # -- callbacks (other threads): enqueue only -------------------------------

    def _put(self, kind: Kind, payload: object = None) -> None:
        self.queue.put(Item(kind, payload, time.monotonic()))

    def _put_event(self, ev: DomainEvent) -> None:
        self._put(Kind.EVENT, ev)

    def _put_thread(self, pid: int, _tid: int, _what: str) -> None:
        self._put(Kind.THREAD, pid)

    def _on_overflow(self) -> None:
        self.store.update(lambda s: s.daemon.events_dropped.update({"proc": 1}))
        self._put(Kind.RESYNC)

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._put(Kind.STOP))
        signal.signal(signal.SIGINT, lambda *_: self._put(Kind.STOP))
        signal.signal(signal.SIGHUP, lambda *_: self._put(Kind.RELOAD))

    # -- start-up ---------------------------------------------------------------

    def start(self) -> None:
        # First of all: a second daemon must not touch the first one's socket or port.
        self.lock.acquire()
        # Before any other thread exists: capabilities are per thread, inherited at creation.
        privs = privileges.enforce(self.config)
        confine_self(self.config.partition.housekeeping)
        start_event_loop()  # before the first connection (keepalive, events)
        while not self.link.connect():
            # READY=1 only once libvirt answers; the unit's start timeout bounds this wait.
            if self._stop:
                raise RtagentError("stopped before libvirt was reachable")
            self.notifier.status(f"waiting for libvirt at {self.config.libvirt.uri}")
            time.sleep(max(0.0, self.link.next_connect - time.monotonic()))
        self.services.start(self.config, privs)
        self.resync()
        self.notifier.ready(self._status_line())
        log.info("rtagent %s ready: %d realtime guest(s), realtime CPUs %s, housekeeping CPUs %s",
                 __version__, len(self.guests.tracked), format_cpulist(self.config.partition.realtime) or "(none)",
                 format_cpulist(self.config.partition.housekeeping))

    # -- the loop -------------------------------------------------------------------

    def run_forever(self) -> None:
        self._next_resync = time.monotonic() + self.config.daemon.resync_interval_s
        watchdog_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_watchdog = time.monotonic()
        while not self._stop:
            deadlines = [self._next_resync, self.link.reconnect_due(), self.guests.retry.next_deadline(),
                         next_watchdog if watchdog_every else None]
            timeout = min(d for d in deadlines if d is not None) - time.monotonic()
            try:
                self._handle_batch(self.queue.get(timeout=max(0.0, timeout)))
            except queue.Empty:
                pass
            self._timers()
            if watchdog_every and time.monotonic() >= next_watchdog:
                # Only this loop pets the watchdog: a wedged loop is a restart;
                # a lost or hung libvirt is not (we reconnect, and enforce meanwhile).
                self.notifier.watchdog()
                next_watchdog = time.monotonic() + watchdog_every

    def _timers(self) -> None:
        self.guests.run_due()
        now = time.monotonic()
        due = self.link.reconnect_due()
        if due is not None and now >= due and self.link.connect():
            self.resync()
        if now >= self._next_resync:
            self.resync()
            self._next_resync = time.monotonic() + self.config.daemon.resync_interval_s

    def _handle_batch(self, first: Item) -> None:
        """Handle ``first`` and whatever else is queued, collapsing repeated
        thread events of one process into one reconcile (a QEMU start names a
        dozen threads in a burst)."""
        items = [first]
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        threads: dict[int, float] = {}
        for item in items:
            if item.kind == Kind.THREAD:
                threads.setdefault(item.payload, item.at)
            else:
                self._handle(item)
        if threads:
            self.store.update(lambda s: s.daemon.events.update({"proc": len(threads)}))
            self.guests.on_threads(threads)

    def _handle(self, item: Item) -> None:
        if item.kind == Kind.STOP:
            log.info("stopping (guests stay tuned)")
            self._stop = True
        elif item.kind == Kind.RELOAD:
            self.reload()
        elif item.kind == Kind.RESYNC:
            self.resync()
        elif item.kind == Kind.CLOSED:
            self.link.lost(f"reason {item.payload}", item.at)
            self.notifier.status("libvirt connection lost; reconnecting")
        elif item.kind == Kind.EVENT:
            self.guests.on_event(item.payload, item.at)

    # -- work -------------------------------------------------------------------------

    def resync(self) -> None:
        """Every managed guest, then the host partition; a lost connection is
        noticed here too (a libvirtd restart loses events)."""
        if not self.link.up:
            self.guests.enforce_known()
        elif not self.guests.resync():
            self.link.lost("listing guests failed", time.monotonic())
        self.link.publish_responsiveness()
        self.hostside.enforce(set(self.guests.tracked.values()))
        self.store.update(lambda s: (setattr(s.daemon, "resyncs", s.daemon.resyncs + 1),
                                     setattr(s.daemon, "last_resync_at", time.time())))
        line = self._status_line()
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except RtagentError as err:
            log.error("reload refused, keeping the running config: %s", err)
            return
        if (new.status.socket, new.metrics.listen, new.libvirt.uri, new.daemon.lock_file) != (
                self.config.status.socket, self.config.metrics.listen, self.config.libvirt.uri,
                self.config.daemon.lock_file):
            log.warning("reload: status.socket, metrics.listen, libvirt.uri and daemon.lock_file "
                        "take effect at restart")
        self.config = new
        self.guests.reload(new)
        self.hostside.configure(new)
        log.info("reloaded config from %s", new.path or "(defaults)")
        self.resync()

    def _status_line(self) -> str:
        n, bad = self.store.read(lambda s: (len(s.guests), sum(
            1 for g in s.guests.values() if g.report is not None and not g.report.compliant)))
        hung = self.host.unresponsive_s()
        return f"{n} realtime guest(s), {bad} non-compliant" + (
            "" if hung is None else f"; libvirt unresponsive for {hung:.0f}s")

    def close(self) -> None:
        self.notifier.stopping()
        self.services.close()
        self.host.close()
        self.notifier.close()
        self.lock.release()


def run(config_path: str | None) -> int:
    config = load_config(config_path)
    daemon = Daemon(config, config_path)
    daemon.install_signals()
    try:
        daemon.start()
        daemon.run_forever()
    finally:
        daemon.close()
    return 0
