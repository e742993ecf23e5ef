"""The daemon's libvirt connection: connect, subscribe, back off and
reconnect, and publish whether libvirt answers (connected / unresponsive
since when) to the state store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import LibvirtError
from ..libvirt_host import DomainEvent, LibvirtHost
from ..state import StateStore

log = logging.getLogger(__name__)


class LibvirtLink:
    def __init__(self, host: LibvirtHost, store: StateStore, max_backoff_s: float,
                 on_event: Callable[[DomainEvent], None], on_close: Callable[[int], None],
                 clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.store = store
        self.max_backoff_s = max_backoff_s
        self._on_event = on_event
        self._on_close = on_close
        self._clock = clock
        self.backoff_s = 0.5
        self.next_connect = 0.0
        self.disconnected_at: float | None = None  # monotonic; None while connected (or never)

    @property
    def up(self) -> bool:
        return self.disconnected_at is None and self.host.connected

    def reconnect_due(self) -> float | None:
        return self.next_connect if self.disconnected_at is not None else None

    def lost(self, reason: object, at: float) -> None:
        if self.disconnected_at is not None:
            return
        log.warning("libvirt connection lost (%s); reconnecting", reason)
        self.disconnected_at = at
        self.next_connect = self._clock()
        self.store.update(lambda s: setattr(s.daemon, "libvirt_connected", False))

    def connect(self) -> bool:
        t0 = self._clock()
        try:
            self.host.close()
            self.host.connect()
            self.host.subscribe(self._on_event, self._on_close)
        except LibvirtError as err:
            log.warning("libvirt: %s (retrying in %.1fs)", err, self.backoff_s)
            self.next_connect = self._clock() + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, self.max_backoff_s)
            self.store.update(lambda s: setattr(s.daemon, "libvirt_connected", False))
            return False
        self.backoff_s = 0.5
        reconnect = self.disconnected_at is not None
        took = self._clock() - self.disconnected_at if reconnect else 0.0

        def mark(s: StateStore) -> None:
            s.daemon.libvirt_connected = True
            if reconnect:
                s.daemon.reconnects += 1
                s.daemon.last_reconnect_s = round(took, 3)

        self.store.update(mark)
        if reconnect:
            log.info("libvirt: reconnected to %s after %.2fs; rescanning guests", self.host.uri, took)
        else:
            log.info("libvirt: connected to %s in %.3fs", self.host.uri, self._clock() - t0)
        self.disconnected_at = None
        return True

    def publish_responsiveness(self) -> None:
        """Mirror the worker's view (a call or probe outstanding past its
        timeout); probe first, as the steady-state resync makes no call."""
        if self.up:
            self.host.probe()
        hung = self.host.unresponsive_s()
        if (hung is None) == (self.store.daemon.libvirt_unresponsive_since is None):
            # No change (every steady resync): no lock.  Only the loop writes
            # the field, so reading it here without the lock is exact.
            return
        since = None if hung is None else time.time() - hung

        def mark(s: StateStore) -> None:
            was = s.daemon.libvirt_unresponsive_since
            if (was is None) != (since is None):
                s.daemon.libvirt_unresponsive_since = since

        self.store.update(mark)
