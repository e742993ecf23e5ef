"""``rtagent run``: the loop — timers, the event queue and signals.

Callbacks (libvirt, proc connector, the start and drift watches), signal handlers and timers only
*enqueue*; this loop, in the main thread, hands items to the supervisors, so reconciles never race.  No
libvirt call blocks it longer than its timeout, so the watchdog (petted only here) says if *enforcement* lives.
"""

from __future__ import annotations

import logging
import queue
import time

from .. import __version__
from ..config import Config, load_config
from ..cpulist import format_cpulist
from ..libvirt_host import DomainEvent, LibvirtHost
from ..sdnotify import Notifier
from ..state import StateStore
from .cadence import resync_due
from .guests import GuestSupervisor
from .hostside import HostSupervisor
from .items import Item, Kind
from .link import LibvirtLink
from .lock import InstanceLock
from . import heap, shutdown
from .services import Services, count_resync, prepare, reload_config, status_line, status_text
from .startwatch import StartWatch

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: Config, config_path: str | None, *, notifier: Notifier | None = None):
        self.config, self.config_path = config, config_path
        self.notifier = notifier or Notifier()
        self.store = StateStore()
        self.store.daemon.libvirt_uri = config.libvirt.uri
        # SimpleQueue: its put() is reentrant, so the signal handlers may use it.
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.lock = InstanceLock(config.daemon.lock_file)
        self.host = LibvirtHost(config.libvirt.uri, config.libvirt.call_timeout_s)
        self.link = LibvirtLink(self.host, self.store, config.libvirt.reconnect_max_backoff_s,
                                self._libvirt_event, lambda reason: self._put(Kind.CLOSED, reason))
        self.services = Services(self.store, lambda pid, _tid, _what: self._put(Kind.THREAD, pid),
                                 lambda: self._put(Kind.RESYNC), self.queue.put)
        self.guests = GuestSupervisor(config, self.host, self.store, on_tracked=self.services.set_tracked,
                                      on_placements=self.services.set_placements, on_watched=self.services.watch_threads)
        self.startwatch = StartWatch(self.guests, lambda: self._put(Kind.START))
        self.hostside = HostSupervisor(config, self.store, known_threads=self.guests.thread_names)
        self._stop, self._resynced_at, self._last_status = False, 0.0, ""  # _resynced_at: daemon/cadence.py

    def _put(self, kind: Kind, payload: object = None) -> None:
        self.queue.put(Item(kind, payload, time.monotonic()))

    def _libvirt_event(self, ev: DomainEvent) -> None:
        """On libvirt's event thread: a guest the selector never manages does
        not wake the loop (on a shared host most events are other guests')."""
        if self.guests.selector.matches_name(ev.name):
            self._put(Kind.EVENT, ev)

    def install_signals(self) -> None:
        shutdown.install_signals(self._stop_signal, lambda: self._put(Kind.RELOAD))

    def _stop_signal(self) -> None:
        # Runs between two bytecodes of the main thread: reentrant things only (shutdown.py).
        if not self._stop:
            self._stop = True
            shutdown.arm_hard_bound()
            self.host.worker.abort_waits()
        self._put(Kind.STOP)

    def start(self) -> None:
        privs = prepare(self.config, self.lock)
        while not self._stop and not self.link.connect():
            # READY=1 only once libvirt answers; the unit's start timeout bounds this wait.
            self.notifier.status(f"waiting for libvirt at {self.config.libvirt.uri}")
            shutdown.sleep_unless(lambda: self._stop, self.link.next_connect - time.monotonic())
        if self._stop:
            return  # stopped before libvirt was reachable
        self.services.start(self.config, privs, self.startwatch, self.guests.standing.budget)
        self.resync()
        self.notifier.ready(status_line(self.store, self.host))
        log.info("rtagent %s ready: %d realtime guest(s), realtime CPUs %s, housekeeping CPUs %s",
                 __version__, len(self.guests.tracked), format_cpulist(self.config.partition.realtime) or "(none)",
                 format_cpulist(self.config.partition.housekeeping))

    def run_forever(self) -> None:
        watchdog_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_watchdog = time.monotonic()
        while not self._stop:
            deadlines = [resync_due(self), self.link.reconnect_due(), self.guests.retry.next_deadline(),
                         self.startwatch.next_deadline(), next_watchdog if watchdog_every else None]
            timeout = min(d for d in deadlines if d is not None) - time.monotonic()
            try:
                self._handle_batch(self.queue.get(timeout=max(0.0, timeout)))
            except queue.Empty:
                pass
            if self._stop:
                break
            self._timers()
            if watchdog_every and time.monotonic() >= next_watchdog:
                # Only this loop pets the watchdog: a wedged loop is a restart;
                # a lost or hung libvirt is not (we reconnect, and enforce meanwhile).
                self.notifier.watchdog()
                next_watchdog = time.monotonic() + watchdog_every
        log.info("stopping (guests stay tuned)")

    def _timers(self) -> None:
        self.startwatch.run_due()
        self.guests.run_due()
        now = time.monotonic()
        due = self.link.reconnect_due()
        if due is not None and now >= due and self.link.connect():
            self.resync()
        if now >= resync_due(self):
            self.resync(full=now >= self.guests.next_full)

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
            if self._stop:
                return  # asked to stop: the rest is not worth the wait
            if item.kind == Kind.THREAD:
                threads.setdefault(item.payload, item.at)
            else:
                self._handle(item)
        if threads:
            self.store.update(lambda s: s.daemon.events.update({"proc": len(threads)}))
            self.guests.on_threads(threads)

    def _handle(self, item: Item) -> None:
        if item.kind == Kind.RELOAD:
            self.reload()
        elif item.kind == Kind.RESYNC:
            self.resync()
        elif item.kind == Kind.CLOSED:
            self.link.lost(f"reason {item.payload}", item.at)
            self.notifier.status("libvirt connection lost; reconnecting")
        elif item.kind == Kind.EVENT:
            self.guests.on_event(item.payload, item.at)
        elif item.kind == Kind.DRIFT:
            self.services.driftwatch.handle(item.payload, self.guests.on_drift, self.resync, self.config)

    def resync(self, full: bool = True) -> None:
        """Every managed guest, then the host partition.  ``full``: re-list and
        re-read every guest (noticing a lost connection); else daemon/steady.py."""
        if not self.link.up:  # known guests from the kernel side; steady between full checks, as when connected
            (self.guests.enforce_known if full else self.guests.check_steady)()
        elif not (self.guests.resync() if full else self.guests.check_steady()):
            self.link.lost("listing guests failed", time.monotonic())
        self.link.publish_responsiveness()
        self.hostside.enforce(set(self.guests.tracked.values()), tuple(self.guests.vcpusched_refused.values()))
        if full:
            heap.trim()  # the full check's and host checks' buffers back to the kernel (heap.py)
        # One lock a resync: the count, and what the status line is made of.
        counts = self.store.update(count_resync)
        self._resynced_at = time.monotonic()
        line = status_text(counts, self.host.unresponsive_s())
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
        """Every stop step, bounded (shutdown.py), even while libvirt hangs."""
        shutdown.arm_hard_bound()  # also when the loop ended by an exception
        self.host.worker.abort_waits()
        self.notifier.stopping()
        shutdown.teardown([*self.services.stop_steps(), shutdown.Step("libvirt connection", self.host.close, 1.0),
                           shutdown.Step("instance lock", lambda _t: (self.notifier.close(), self.lock.release()), 1.0)])


def run(config_path: str | None) -> int:
    config = load_config(config_path)
    daemon = Daemon(config, config_path)
    daemon.install_signals()
    try:
        daemon.start()
        daemon.run_forever()
    finally:
        daemon.close()
    shutdown.exit_now(0)  # not finalising the interpreter: see shutdown.py
    return 0
