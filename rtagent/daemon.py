"""``rtagent run``: keep every realtime guest tuned for as long as it runs.

Shape (Nova's ``host.py`` is the model): libvirt's callbacks, the proc
connector thread, signal handlers and the resync timer only *enqueue*; one
loop in the main thread takes items off the queue and does all the work, so
reconciles never race each other.  Readers (status socket, metrics) see the
state store under its lock.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import time
from collections import Counter
from dataclasses import dataclass

import libvirt

from . import __version__, privileges
from .config import Config, load_config
from .cpulist import format_cpulist
from .errors import RtagentError
from .libvirt_host import DomainEvent, LibvirtHost, LibvirtUnavailable, is_gone, start_event_loop
from .kernel import Kernel
from .kernel.procconn import ProcConnector
from .sdnotify import Notifier
from .selector import GuestSelector
from .state import StateStore, VcpuCounters
from .status import StatusServer
from .tuning.guest.plan import SetAffinity
from .tuning.guest.engine import DomainReport, Tuner

log = logging.getLogger(__name__)

# Events that start or re-verify tuning, and those that end a guest's state.
_TUNE = {"started", "resumed"}
_DROP = {"stopped", "undefined", "crashed"}
# Paused because libvirt is still setting the guest up (start, incoming
# migration): hands off until its STARTED/RESUMED event.
_STARTING = {libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, libvirt.VIR_DOMAIN_PAUSED_MIGRATION}
# Follow-up looks after a thread event (50 ms, 100 ms, … 800 ms).
SETTLE_ATTEMPTS = 5
# Host readiness checks scan all of /proc: not on every resync.
HOST_CHECK_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Item:
    kind: str  # "event" | "thread" | "closed" | "resync" | "reload" | "stop"
    payload: object = None
    at: float = 0.0  # monotonic time the cause was seen


class Daemon:
    def __init__(self, config: Config, config_path: str | None, *, notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.store = StateStore()
        self.queue: queue.Queue[Item] = queue.Queue()
        self.host = LibvirtHost(config.libvirt.uri)
        self.tuner = Tuner(config, self.host)
        self.selector = GuestSelector.from_config(config.daemon)
        self.procconn: ProcConnector | None = None
        self.status: StatusServer | None = None
        self.metrics = None
        self.host_enforcer = None
        self.tracked: dict[str, int] = {}  # uuid -> QEMU pid
        # The intent is captured when a guest is first seen running and kept
        # for the life of its QEMU process: a later live re-pin by another
        # tool (virsh vcpupin --live) is drift to correct, not a new intent.
        # Metadata changes and SIGHUP re-derive it.
        self.specs: dict[str, tuple[int | None, object]] = {}
        self._stop = False
        self._backoff = 0.5
        self._next_connect = 0.0
        self._next_resync = 0.0
        self._next_host_checks = 0.0
        self._disconnected_at: float | None = None
        self._last_status = ""
        # uuid -> (deadline, attempts): guests to look at again soon because
        # libvirt was still placing a new vCPU thread (vcpu_pending).
        self._soon: dict[str, tuple[float, int]] = {}
        self.store.daemon.libvirt_uri = config.libvirt.uri

    # -- callbacks (other threads): enqueue only -------------------------------

    def _on_event(self, ev: DomainEvent) -> None:
        self.queue.put(Item("event", ev, time.monotonic()))

    def _on_close(self, reason: int) -> None:
        self.queue.put(Item("closed", reason, time.monotonic()))

    def _on_thread(self, pid: int, tid: int, what: str) -> None:
        self.queue.put(Item("thread", pid, time.monotonic()))

    def _on_overflow(self) -> None:
        self.store.update(lambda s: s.daemon.events_dropped.update({"proc": 1}))
        self.queue.put(Item("resync", None, time.monotonic()))

    # -- start-up ---------------------------------------------------------------

    def _confine_self(self) -> None:
        """The agent runs on housekeeping CPUs and is never realtime; threads
        started after this inherit the mask."""
        hk = self.config.partition.housekeeping
        try:
            Kernel().tasks.confine_self(hk)
        except OSError as err:
            log.warning("cannot confine rtagent to housekeeping CPUs %s: %s", format_cpulist(hk), err)

    def _connect(self) -> bool:
        t0 = time.monotonic()
        try:
            self.host.close()
            self.host.connect()
            self.host.subscribe(self._on_event, self._on_close)
        except (LibvirtUnavailable, libvirt.libvirtError) as err:
            log.warning("libvirt: %s (retrying in %.1fs)", err, self._backoff)
            self._next_connect = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.config.libvirt.reconnect_max_backoff_s)
            self.store.update(lambda s: setattr(s.daemon, "libvirt_connected", False))
            return False
        self._backoff = 0.5
        reconnect = self._disconnected_at is not None
        took = (time.monotonic() - self._disconnected_at) if reconnect else None

        def mark(s: StateStore) -> None:
            s.daemon.libvirt_connected = True
            if reconnect:
                s.daemon.reconnects += 1
                s.daemon.last_reconnect_s = round(took, 3)

        self.store.update(mark)
        if reconnect:
            log.info("libvirt: reconnected to %s after %.2fs; rescanning guests", self.config.libvirt.uri, took)
        else:
            log.info("libvirt: connected to %s in %.3fs", self.config.libvirt.uri, time.monotonic() - t0)
        self._disconnected_at = None
        return True

    def start(self) -> None:
        # Before any thread exists: capabilities are per thread, inherited at creation.
        privs = privileges.enforce(self.config)
        self._confine_self()
        start_event_loop()  # before the first connection (keepalive, events)
        while not self._connect():
            # READY=1 only once libvirt answers; the unit's start timeout
            # bounds this wait.
            if self._stop:
                raise RtagentError("stopped before libvirt was reachable")
            self.notifier.status(f"waiting for libvirt at {self.config.libvirt.uri}")
            time.sleep(max(0.0, self._next_connect - time.monotonic()))
        if self.config.daemon.proc_connector and privs.proc_connector:
            self.procconn = ProcConnector(self._on_thread, self._on_overflow)
            try:
                self.procconn.start()
                self.store.update(lambda s: setattr(s.daemon, "proc_connector", True))
            except OSError as err:
                log.warning("proc connector unavailable (%s): new threads are tuned at the next resync "
                            "(needs CAP_NET_ADMIN)", err)
                self.procconn = None
        self.status = StatusServer(self.config.status.socket, self.config.status.group, self.store.snapshot)
        self.status.start()
        if self.config.metrics.enabled:
            from .monitor.metrics import serve

            self.metrics = serve(self.store, self.config.metrics)
        self._setup_host_enforcer()
        self.resync()
        n = sum(1 for uuid in self.tracked)
        self.notifier.ready(self._status_line())
        log.info("rtagent %s ready: %d realtime guest(s), realtime CPUs %s, housekeeping CPUs %s",
                 __version__, n, format_cpulist(self.config.partition.realtime) or "(none)",
                 format_cpulist(self.config.partition.housekeeping))

    def _setup_host_enforcer(self) -> None:
        ht = self.config.host_tuning
        if not (ht.kthreads or ht.irqs or ht.workqueues or ht.kthread_priorities) or not self.config.partition.realtime:
            self.host_enforcer = None
            return
        from .tuning.host.enforcer import HostPartitionEnforcer

        self.host_enforcer = HostPartitionEnforcer(self.config.partition, ht,
                                                   vcpu_priority=self.config.realtime.default_priority)

    # -- the loop -------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.queue.put(Item("stop")))
        signal.signal(signal.SIGINT, lambda *_: self.queue.put(Item("stop")))
        signal.signal(signal.SIGHUP, lambda *_: self.queue.put(Item("reload")))

    def run_forever(self) -> None:
        interval = self.config.daemon.resync_interval_s
        self._next_resync = time.monotonic() + interval
        watchdog_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_watchdog = time.monotonic()
        while not self._stop:
            now = time.monotonic()
            deadlines = [self._next_resync]
            if not self.host.connected and self._disconnected_at is not None:
                deadlines.append(self._next_connect)
            if watchdog_every:
                deadlines.append(next_watchdog)
            if self._soon:
                deadlines.append(min(d for d, _ in self._soon.values()))
            try:
                item = self.queue.get(timeout=max(0.0, min(deadlines) - now))
            except queue.Empty:
                item = None
            if item is not None:
                self._handle_batch(item)
            now = time.monotonic()
            for uuid, (due, _n) in list(self._soon.items()):
                if now >= due:
                    self.reconcile(uuid, retry=True)
            if self._disconnected_at is not None and now >= self._next_connect:
                if self._connect():
                    self.resync()
            if now >= self._next_resync:
                self.resync()
                self._next_resync = time.monotonic() + self.config.daemon.resync_interval_s
            if watchdog_every and time.monotonic() >= next_watchdog:
                # Only the main loop pets the watchdog: a wedged loop is a
                # restart, a lost libvirt is not (we reconnect ourselves).
                self.notifier.watchdog()
                next_watchdog = time.monotonic() + watchdog_every

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
        thread_pids: dict[int, float] = {}
        for item in items:
            if item.kind == "thread":
                thread_pids.setdefault(item.payload, item.at)
                continue
            self._handle(item)
        if thread_pids:
            self.store.update(lambda s: s.daemon.events.update({"proc": len(thread_pids)}))
            by_pid = {pid: uuid for uuid, pid in self.tracked.items()}
            for pid, at in thread_pids.items():
                uuid = by_pid.get(pid)
                if uuid is not None:
                    log.debug("new or renamed thread in QEMU %d (%s)", pid, uuid)
                    self.reconcile(uuid, cause_at=at)
                    self._schedule(uuid, 0)

    def _handle(self, item: Item) -> None:
        if item.kind == "stop":
            log.info("stopping (guests stay tuned)")
            self._stop = True
        elif item.kind == "reload":
            self.reload()
        elif item.kind == "resync":
            self.resync()
        elif item.kind == "closed":
            if self._disconnected_at is None:
                log.warning("libvirt connection closed (reason %s); reconnecting", item.payload)
                self._disconnected_at = item.at
                self._next_connect = time.monotonic()
                self.store.update(lambda s: setattr(s.daemon, "libvirt_connected", False))
                self.notifier.status("libvirt connection lost; reconnecting")
        elif item.kind == "event":
            ev: DomainEvent = item.payload
            self.store.update(lambda s: s.daemon.events.update({"libvirt": 1}))
            log.debug("libvirt event %s for %s", ev.event, ev.name)
            if ev.event in _TUNE:
                # libvirt may deliver RESUMED before STARTED for a fresh start:
                # the first of either starts the event-to-tuned clock.
                self.reconcile(ev.uuid, cause_at=item.at, started=True)
            elif ev.event in _DROP:
                self.forget(ev.uuid)
            elif ev.event == "metadata":
                self.specs.pop(ev.uuid, None)
                self.reconcile(ev.uuid, cause_at=item.at)

    # -- work -------------------------------------------------------------------------

    def forget(self, uuid: str) -> None:
        pid = self.tracked.pop(uuid, None)
        self.specs.pop(uuid, None)
        self._soon.pop(uuid, None)
        self.tuner.forget(uuid, pid)
        self.store.drop(uuid)
        self._update_tracked()
        if pid is not None:
            log.info("guest %s stopped; state dropped", uuid)

    def _update_tracked(self) -> None:
        if self.procconn is not None:
            self.procconn.set_tracked(set(self.tracked.values()))

    def resync(self) -> None:
        """Re-observe every running guest and correct drift; pick up guests
        whose events we missed (a libvirtd restart loses events)."""
        if self._disconnected_at is not None or not self.host.connected:
            return
        try:
            active = self.host.active_domain_states()
        except libvirt.libvirtError as err:
            log.warning("libvirt: listing guests failed: %s", err)
            self._on_close(-1)
            return
        for uuid in list(self.tracked) + [u for u in self.store.read(lambda s: list(s.guests)) if u not in active]:
            if uuid not in active:
                self.forget(uuid)
        for uuid, (dom, state, reason) in active.items():
            self.reconcile(uuid, known=(dom, state, reason))
        self._enforce_host()
        self.store.update(lambda s: (setattr(s.daemon, "resyncs", s.daemon.resyncs + 1),
                                     setattr(s.daemon, "last_resync_at", time.time())))
        line = self._status_line()
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line

    def _enforce_host(self) -> None:
        now = time.monotonic()
        report = None
        if self.host_enforcer is not None:
            from .tuning.host.priority import vcpu_priority

            specs = self.store.read(lambda s: [g.report.spec for g in s.guests.values() if g.report is not None])
            try:
                report = self.host_enforcer.enforce(vcpu_priority(specs, self.config.realtime.default_priority))
            except Exception:  # the host partition must never take the daemon down
                log.exception("host partition enforcement failed")
        checks = None
        if now >= self._next_host_checks:
            self._next_host_checks = now + HOST_CHECK_INTERVAL_S
            try:
                from .monitor.hostchecks import run_host_checks

                checks = tuple(run_host_checks(self.config.partition, exclude_pids=set(self.tracked.values())))
            except Exception:
                log.exception("host checks failed")

        def store(s: StateStore) -> None:
            s.daemon.host.update(self.config.partition.to_json())
            if checks is not None:
                s.daemon.host_checks = checks
            if report is not None:
                s.daemon.host_corrections.update(report.corrections_by_kind)
                refused = Counter()
                for r in report.refused:
                    refused[r.kind.split("_")[0]] += 1
                s.daemon.host_refused = refused
                s.daemon.host["partition_enforcement"] = {"counts": report.counts, "conflicts": report.to_json().get("conflicts", [])}

        self.store.update(store)
        if report is not None:
            for r in report.changed:
                log.info("host: %s", r.to_json())

    def reconcile(self, uuid: str, *, cause_at: float | None = None, started: bool = False,
                  retry: bool = False, known: tuple | None = None) -> DomainReport | None:
        """Bring one guest to its plan.  ``known`` = (domain, state, reason)
        from the resync's one-RPC listing, saving two round trips a guest."""
        t0 = time.monotonic()
        attempts = self._soon.pop(uuid, (0.0, 0))[1] if retry else 0
        if self._disconnected_at is not None:
            # No libvirt (``host.conn`` would try to connect and raise
            # LibvirtUnavailable): the resync after the reconnect covers it.
            return None
        try:
            if known is not None:
                dom, state, reason = known
            else:
                dom = self.host.conn.lookupByUUIDString(uuid)
                state, reason = dom.state()
            if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
                self.forget(uuid)
                return None
            if not self.selector.matches_name(dom.name()):
                # Not selected: as if it did not exist (another daemon's, or
                # not rolled out yet).  Drop state if the selection changed.
                if uuid in self.tracked or self.store.read(lambda s: uuid in s.guests):
                    self.forget(uuid)
                return None
            if state == libvirt.VIR_DOMAIN_PAUSED and reason in _STARTING:
                # libvirt is still creating cgroups and pinning threads; its
                # STARTED/RESUMED event brings us back.
                return None
            cached = self.specs.get(uuid)
            before = self.tuner.inspect(dom, spec=cached[1] if cached else None)
            if cached and before.pid != cached[0]:
                # A new QEMU process under the same UUID (restart we missed).
                before = self.tuner.inspect(dom)
            if before.spec.realtime and before.pid is not None:
                self.specs[uuid] = (before.pid, before.spec)
        except libvirt.libvirtError as err:
            if is_gone(err):
                self.forget(uuid)
            else:
                log.warning("libvirt: cannot inspect %s: %s", uuid, err.get_error_message())
            return None
        except LibvirtUnavailable as err:
            log.warning("libvirt: cannot inspect %s: %s", uuid, err)
            return None
        except Exception:
            # Never die on a guest's behalf.
            log.exception("inspecting guest %s failed", uuid)
            return None
        if self.selector.require_metadata and before.spec.source != "metadata":
            before.spec = dataclasses.replace(before.spec, realtime=False)
        if not before.realtime:
            # Not ours to manage; keep no state (and no metrics series) for it.
            if uuid in self.tracked or self.store.read(lambda s: uuid in s.guests):
                self.forget(uuid)
            return None
        if before.pid is not None:
            self.tracked[uuid] = before.pid
            self._update_tracked()
        detected = cause_at if cause_at is not None else t0
        after = before
        if before.spec.valid and before.observed is not None:
            try:
                after = self.tuner.apply(dom, report=before)
            except libvirt.libvirtError as err:
                if is_gone(err):
                    self.forget(uuid)
                    return None
                log.warning("libvirt: tuning %s failed: %s", before.name, err.get_error_message())
            except Exception:
                log.exception("tuning guest %s failed", before.name)
        done = time.monotonic()
        self._record(uuid, before, after, detected, done, started, done - t0)
        pending = any(v.check == "vcpu_pending" for v in after.violations)
        # A refused change (EPERM while budget is short, a cpuset in flux) is
        # retried on the same backoff, not only at the next resync.
        refused = bool(after.failures) or any(v.check == "rt_budget" for v in after.violations)
        if pending or refused or (retry and attempts < SETTLE_ATTEMPTS):
            self._schedule(uuid, attempts)
        return after

    def _schedule(self, uuid: str, attempts: int) -> None:
        """Look at a guest again soon, backing off: libvirt places a new thread
        (cgroup, cpuset) some time *after* the kernel told us of its birth."""
        delay = min(0.05 * 2 ** attempts, self.config.daemon.resync_interval_s)
        due = time.monotonic() + delay
        current = self._soon.get(uuid)
        if current is None or current[0] > due:
            self._soon[uuid] = (due, attempts + 1)

    def _record(self, uuid: str, before: DomainReport, after: DomainReport, detected: float, done: float,
                started: bool, duration: float) -> None:
        kinds_by_tid = {tp.thread.tid: tp.check for tp in before.threads}
        first_tuned_before = self.store.read(lambda s: (g := s.guests.get(uuid)) is None or g.tuned_at is None)
        changed = [r for r in after.changes if r.outcome == "changed"]
        failed = [r for r in after.changes if r.outcome == "failed"]

        def kind(r) -> str:
            return f"{kinds_by_tid.get(r.action.tid, 'thread')}_{'affinity' if isinstance(r.action, SetAffinity) else 'policy'}"

        rt_tuned = bool(after.observed) and all(
            tp.ok for tp in after.threads if tp.thread.role == "vcpu" and tp.want.policy in ("fifo", "rr"))

        def update(s: StateStore) -> None:
            g = s.guest(uuid, after.name)
            first_tuning = g.tuned_at is None
            if started and first_tuning and g.started_event_at is None:
                g.started_event_at = detected
            g.report = after
            if changed and not first_tuning:
                # Drift: the guest had been tuned and something undid it.
                for r in changed:
                    g.corrections[kind(r)] += 1
                g.last_correction_at = time.time()
                g.correction_latency.observe(done - detected)
            for r in failed:
                g.correction_failures[kind(r)] += 1
            if first_tuning and rt_tuned:
                g.tuned_at = time.time()
                if g.started_event_at is not None:
                    g.event_to_tuned_s = round(done - g.started_event_at, 6)
                    s.daemon.event_to_tuned.observe(done - g.started_event_at)
            now = time.time()
            if after.observed is not None:
                for t in after.observed.threads:
                    if t.role != "vcpu" or t.vcpu is None:
                        continue
                    c = g.vcpus.get(t.vcpu)
                    delay = t.run_delay_ns or 0
                    if c is not None and now > c.observed_at and delay >= c.run_delay_ns:
                        rate = (delay - c.run_delay_ns) / (now - c.observed_at)
                    else:
                        rate = 0.0
                    g.vcpus[t.vcpu] = VcpuCounters(run_delay_ns=delay, run_time_ns=t.run_time_ns or 0,
                                                   nonvoluntary_ctxt_switches=t.nonvoluntary_ctxt_switches,
                                                   run_delay_rate=rate, observed_at=now)
            s.daemon.reconcile_duration.observe(duration)

        self.store.update(update)
        for r in changed + failed:
            log.info("%s: %s%s: %s%s", after.name, r.outcome, "" if first_tuned_before else " (drift)",
                     r.action.describe(), f" ({r.detail})" if r.detail else "")

    # -- reload and stop ----------------------------------------------------------------

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except RtagentError as err:
            log.error("reload refused, keeping the running config: %s", err)
            return
        if new.status.socket != self.config.status.socket or new.metrics.listen != self.config.metrics.listen \
                or new.libvirt.uri != self.config.libvirt.uri:
            log.warning("reload: status.socket, metrics.listen and libvirt.uri take effect at restart")
        old_tuner = self.tuner
        self.specs.clear()  # rules may have changed
        self.config = new
        self.tuner = Tuner(new, self.host)
        self.selector = GuestSelector.from_config(new.daemon)
        self.tuner.rt_cgroups, self.tuner.granted = old_tuner.rt_cgroups, old_tuner.granted
        self._setup_host_enforcer()
        log.info("reloaded config from %s", new.path or "(defaults)")
        self.resync()

    def _status_line(self) -> str:
        snap = self.store.read(lambda s: (len(s.guests), sum(1 for g in s.guests.values()
                                                               if g.report is not None and not g.report.compliant)))
        return f"{snap[0]} realtime guest(s), {snap[1]} non-compliant"

    def close(self) -> None:
        self.notifier.stopping()
        if self.procconn is not None:
            self.procconn.stop()
        if self.status is not None:
            self.status.close()
        if self.metrics is not None:
            self.metrics.close()
        self.host.close()
        self.notifier.close()


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
