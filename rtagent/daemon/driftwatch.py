"""The drift watch in the daemon: the kernel's trace events of sched_set*
syscalls and cgroup moves (kernel/schedwatch.py) turned into reconciles of
the guests they touch, and the resync cadence they allow.

Measured on the test machine: every wake-up of a Python thread costs
117-128 µs of CPU whatever it does, four times the budget of a one-guest
resync — polling every second cannot be cheap there.  While this watch
runs, the timed steady resync backs off to ``[daemon]
watched_resync_interval_s`` (daemon/cadence.py); the slow full check is
unchanged.  If the reader dies or its instance stops tracing, the daemon
says so once and polls at ``resync_interval_s`` again; it never stops
enforcing.  ``[daemon] drift_watch``: docs/design.md, "The drift watch".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config
from ..errors import RtagentError
from ..state import StateStore
from ..vocab import WatchMode, WatchState
from .items import Item, Kind
from .shutdown import Step

log = logging.getLogger(__name__)

SOURCE = "drift_watch"  # its key in the daemon's events / events_dropped counters


class DriftWatchError(RtagentError):
    """``drift_watch = "on"`` and the kernel cannot give the events."""


@dataclass(frozen=True)
class Failed:
    """The reader thread ended (posted from it)."""

    reason: str


class DriftWatch:
    def __init__(self, store: StateStore, put: Callable[[Item], None]):
        self.store = store
        self._put = put
        self.watch = None  # kernel.schedwatch.SchedWatch while it runs
        self.state = WatchState.OFF
        self.reason = ""
        self.config: Config | None = None

    @property
    def healthy(self) -> bool:
        """True while events are being seen: the cadence may back off.
        Asked on every loop turn, so it asks only whether the reader runs;
        the reader itself looks at its instance when no event came for 30 s
        and ends (posting :class:`Failed`) if it no longer traces."""
        if self.state != WatchState.RUNNING or self.watch is None:
            return False
        if not self.watch.running:
            self.check()
        return self.state == WatchState.RUNNING

    def start(self, config: Config) -> None:
        self.config = config
        mode = WatchMode(config.daemon.drift_watch)
        if mode == WatchMode.OFF:
            self._publish(WatchState.OFF, "daemon.drift_watch = \"off\"", config)
            return
        # Not imported while off: tracefs and the decoder are RSS an unwatched daemon does not pay.
        from ..kernel import tracefs
        from ..kernel.schedwatch import SchedWatch

        watch = SchedWatch(self._notice, self._failed)
        try:
            watch.start()
        except (tracefs.TracefsError, OSError) as err:
            watch.stop()
            why = f"{err}" if isinstance(err, tracefs.TracefsError) else f"{err.strerror or err}"
            if mode == WatchMode.ON:
                raise DriftWatchError(f"daemon.drift_watch = \"on\" but the kernel cannot give its trace events: "
                                      f"{why} (needs tracefs with syscalls:sys_enter/exit_sched_* "
                                      f"(CONFIG_FTRACE_SYSCALLS) and cgroup:cgroup_attach_task, written as root)") from None
            log.warning("drift watch unavailable (%s): drift is found by the resync every %gs", why,
                        config.daemon.resync_interval_s)
            self._publish(WatchState.UNAVAILABLE, why, config)
            return
        self.watch = watch
        watch.set_tids(frozenset())  # none known yet: the first reconciles say which (steady.py)
        log.info("drift watch on (tracefs instance %s): steady resync every %gs", watch.name,
                 config.daemon.watched_resync_interval_s)
        self._publish(WatchState.RUNNING, "", config)

    def _publish(self, state: WatchState, reason: str, config: Config | None = None) -> None:
        self.state, self.reason = state, reason
        interval = None if config is None else (config.daemon.watched_resync_interval_s if state == WatchState.RUNNING
                                                else config.daemon.resync_interval_s)

        def update(s: StateStore) -> None:
            s.daemon.drift_watch = {"state": str(state), "reason": reason,
                                    "interval_s": interval if interval is not None
                                    else s.daemon.drift_watch.get("interval_s")}
        self.store.update(update)

    # -- on the reader thread: enqueue only

    def _notice(self, notice) -> None:
        """Counted here; the loop is woken only for a thread it watches."""
        if notice.events or notice.lost:
            self.store.update(lambda s: (s.daemon.events.update({SOURCE: notice.events}),
                                         s.daemon.events_dropped.update({SOURCE: notice.lost}) if notice.lost else None))
        if not notice.empty:
            self._put(Item(Kind.DRIFT, notice, notice.at))

    def set_tids(self, tids: frozenset[int]) -> None:
        """The managed threads (every steady baseline's), whenever that set changes."""
        if self.watch is not None:
            self.watch.set_tids(tids)

    def _failed(self, reason: str) -> None:
        self._put(Item(Kind.DRIFT, Failed(reason), time.monotonic()))

    # -- on the loop

    def handle(self, payload: object, on_drift: Callable[[frozenset, frozenset, float], object],
               resync: Callable[[], None], config: Config) -> None:
        self.config = config  # the running one (SIGHUP)
        if isinstance(payload, Failed):
            self.fall_back(f"its reader failed: {payload.reason}")
            return
        n = payload
        log.debug("drift watch: %s", n)
        if n.everything:
            # Events lost (or an exit whose enter was not seen): as the proc
            # connector's overflow, a full check finds whatever they said.
            log.info("drift watch: %s; full check", f"{n.lost} event(s) lost" if n.lost else "too many calls in flight")
            resync()
            return
        on_drift(n.sched, n.moved, n.at)

    def check(self) -> None:
        """The reader alive and the instance tracing; else fall back."""
        if self.state != WatchState.RUNNING or self.watch is None:
            return
        why = "its reader thread ended" if not self.watch.running else self.watch.intact()
        if why is not None:
            self.fall_back(why)

    def fall_back(self, why: str) -> None:
        if self.state != WatchState.RUNNING:
            return
        interval = self.config.daemon.resync_interval_s if self.config is not None else 0
        log.warning("drift watch stopped (%s): drift is found by the resync every %gs again", why, interval)
        self._publish(WatchState.FAILED, why, self.config)
        watch, self.watch = self.watch, None
        if watch is not None:
            try:
                watch.stop()
            except Exception:  # its instance may be gone already
                log.debug("drift watch: stop after failure", exc_info=True)

    def stop(self, timeout: float = 2.0) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.stop(timeout)

    def stop_steps(self) -> list[Step]:
        return [Step("drift watch tracefs instance", self.stop, 2.0)] if self.watch is not None else []
