"""``rtagent run``: the loop — timers, the event queue and signals.

Callbacks (libvirt, proc connector, the start watch), signal handlers and timers
only *enqueue*; this loop, in the main thread, hands items to the guest and host-side
supervisors, so reconciles never race.  No libvirt call blocks it longer than ``[libvirt]
call_timeout_s``, so the watchdog (petted only here) says whether *enforcement* is alive.
"""

from __future__ import annotations

import enum
import logging
import queue
import signal
import time
from dataclasses import dataclass

from .. import __version__
from ..config import Config, load_config
from ..cpulist import format_cpulist
from ..errors import RtagentError
from ..libvirt_host import LibvirtHost
from ..sdnotify import Notifier
from ..state import StateStore
from .guests import GuestSupervisor
from .hostside import HostSupervisor
from .link import LibvirtLink
from .lock import InstanceLock
from .services import Services, prepare, reload_config, status_line
from .startwatch import StartWatch

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    EVENT = "event"
    THREAD = "thread"
    CLOSED = "closed"
    RESYNC = "resync"
    START = "start"  # wakes the loop; _timers hands the signal to daemon/startwatch.py
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
                                lambda ev: self._put(Kind.EVENT, ev), lambda reason: self._put(Kind.CLOSED, reason))
        self.services = Services(self.store, lambda pid, _tid, _what: self._put(Kind.THREAD, pid),
                                 lambda: self._put(Kind.RESYNC), lambda e, at: self.queue.put(Item(Kind.EVENT, e, at)))
        self.guests = GuestSupervisor(config, self.host, self.store, on_tracked=self.services.set_tracked,
                                      on_placements=self.services.set_placements)
        self.startwatch = StartWatch(self.guests, lambda: self._put(Kind.START))
        self.hostside = HostSupervisor(config, self.store)
        self._stop, self._next_resync, self._last_status = False, 0.0, ""

    def _put(self, kind: Kind, payload: object = None) -> None:
        self.queue.put(Item(kind, payload, time.monotonic()))

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._put(Kind.STOP))
        signal.signal(signal.SIGINT, lambda *_: self._put(Kind.STOP))
        signal.signal(signal.SIGHUP, lambda *_: self._put(Kind.RELOAD))

    def start(self) -> None:
        privs = prepare(self.config, self.lock)
        while not self.link.connect():
            # READY=1 only once libvirt answers; the unit's start timeout bounds this wait.
            if self._stop:
                raise RtagentError("stopped before libvirt was reachable")
            self.notifier.status(f"waiting for libvirt at {self.config.libvirt.uri}")
            time.sleep(max(0.0, self.link.next_connect - time.monotonic()))
        self.services.start(self.config, privs, self.startwatch)
        self.resync()
        self.notifier.ready(status_line(self.store, self.host))
        log.info("rtagent %s ready: %d realtime guest(s), realtime CPUs %s, housekeeping CPUs %s",
                 __version__, len(self.guests.tracked), format_cpulist(self.config.partition.realtime) or "(none)",
                 format_cpulist(self.config.partition.housekeeping))

    def run_forever(self) -> None:
        self._next_resync = time.monotonic() + self.config.daemon.resync_interval_s
        watchdog_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_watchdog = time.monotonic()
        while not self._stop:
            deadlines = [self._next_resync, self.link.reconnect_due(), self.guests.retry.next_deadline(),
                         self.startwatch.next_deadline(), next_watchdog if watchdog_every else None]
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
        self.startwatch.run_due()
        self.guests.run_due()
        now = time.monotonic()
        due = self.link.reconnect_due()
        if due is not None and now >= due and self.link.connect():
            self.resync()
        if now >= self._next_resync:
            self.resync(full=now >= self.guests.next_full)
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

    def resync(self, full: bool = True) -> None:
        """Every managed guest, then the host partition.  ``full``: re-list and
        re-read every guest (noticing a lost connection); else daemon/steady.py."""
        if not self.link.up:
            self.guests.enforce_known()
        elif not (self.guests.resync() if full else self.guests.check_steady()):
            self.link.lost("listing guests failed", time.monotonic())
        self.link.publish_responsiveness()
        self.hostside.enforce(set(self.guests.tracked.values()), tuple(self.guests.vcpusched_refused.values()))
        self.store.update(lambda s: (setattr(s.daemon, "resyncs", s.daemon.resyncs + 1),
                                     setattr(s.daemon, "last_resync_at", time.time())))
        line = status_line(self.store, self.host)
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line

    def reload(self) -> None:
        new = reload_config(self.config, self.config_path)
        if new is not None:
            self.config = new
            self.guests.reload(new)
            self.hostside.configure(new)
            self.resync()

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
