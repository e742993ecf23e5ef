"""The guest supervisor: which guests are managed, their cached intent, the
retry schedule, and one reconcile per guest (observe → plan → apply →
account).

The intent is captured when a guest is first seen running and kept for the
life of its QEMU process: a later live re-pin by another tool (``virsh
vcpupin --live``) is drift to correct, not a new intent.  Metadata changes
and SIGHUP re-derive it, and what that re-derivation changes is counted as
an intent change, not as drift.

While libvirt does not answer, known guests are still enforced from the
kernel side: their intent is cached, their QEMU PID is read from libvirt's
PID file, and every fix but a libvirt pin is a syscall (the pin falls back
to ``sched_setaffinity``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config
from ..cpulist import format_cpulist
from ..errors import DomainXMLError, GuestGone, LibvirtError, LibvirtUnavailable, LibvirtUnresponsive
from ..intent import metadata_key, parse_domain_xml
from ..kernel.errors import GONE
from ..kernel.tasks import forget_shared
from ..libvirt_host import DomainEvent, EventKind, Guest, LibvirtHost, RunState
from ..selector import GuestSelector
from ..state import StateStore
from ..tuning.guest import vcpusched
from ..tuning.guest.claims import ClaimBook
from ..tuning.guest.engine import DomainReport, Tuner
from ..vocab import Check, DriftKind
from . import drift, fullcheck, repin
from .placement import CLAMPED, GuestPlacement, placement_of
from .record import RealtimeRecord, record_path
from .retry import RetrySchedule
from .steady import SteadyCheck

log = logging.getLogger(__name__)

# Events that start or re-verify tuning, and those that end a guest's state.
_TUNE = {EventKind.STARTED, EventKind.RESUMED}
_DROP = {EventKind.STOPPED, EventKind.UNDEFINED, EventKind.CRASHED}


@dataclass(frozen=True)
class Cause:
    """Why a guest is reconciled now: when the cause was seen (monotonic),
    and whether it is a STARTED/RESUMED event (event-to-tuned clock)."""

    at: float | None = None
    started: bool = False


class GuestSupervisor:
    def __init__(self, config: Config, host: LibvirtHost, store: StateStore, *,
                 selector: GuestSelector | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, tuner: Tuner | None = None,
                 on_tracked: Callable[[set[int]], None] | None = None,
                 on_placements: Callable[[dict[int, GuestPlacement]], None] | None = None,
                 on_reconciled: Callable[[str, DomainReport], None] | None = None,
                 on_watched: Callable[[frozenset[int]], None] | None = None):
        self.config = config
        self.host = host
        self.store = store
        self.selector = selector or GuestSelector.from_config(config.daemon)
        self.tuner = tuner or Tuner(config)
        self._clock = clock
        self._wall = wall
        self._on_tracked = on_tracked
        self._on_placements = on_placements
        self.placements: dict[int, GuestPlacement] = {}  # QEMU pid -> where its new iothreads go
        self.on_reconciled = on_reconciled  # after every applied reconcile (the start window's record)
        self.retry = RetrySchedule(config.daemon.resync_interval_s, clock)
        # The cheap resync between full checks (steady.py); ``on_watched``: its
        # threads, for the drift watch's filter (driftwatch.py).
        self.steady = SteadyCheck(on_owners=on_watched)
        self.standing = fullcheck.Standing(self.tuner.kernel)  # the full check's shortcut (fullcheck.py)
        self.next_full = 0.0  # monotonic time the next resync must be a full check
        self.guests: dict[str, Guest] = {}  # uuid -> Guest of every managed guest
        self.tracked: dict[str, int] = {}  # uuid -> QEMU pid
        self.specs: dict[str, tuple[int | None, object]] = {}  # uuid -> (pid, RealtimeSpec)
        self.intent_changed: set[str] = set()  # uuids whose next changes apply a new intent
        self.claims = ClaimBook()  # pCPU claims of every guest seen: one owner per realtime pCPU
        self.last: dict[str, DomainReport] = {}  # uuid -> the report after its last reconcile
        self.connection = 0  # the libvirt connection the cached intents were last checked on
        # uuid -> name of defined guests whose <vcpusched> this host refuses (rt_group_sched check).
        self.vcpusched_refused: dict[str, str] = {}
        # Which guest processes rtagent made realtime, this instance or the
        # one before it: a withdrawal made while no daemon ran is undone (record.py).
        self.record = RealtimeRecord(record_path(config.daemon.lock_file), self._started_of)
        self.tuner.ledger.inherit(frozenset().union(*(t.cgroups for t in self.record.entries.values())))

    # -- what happened ------------------------------------------------------

    def on_event(self, ev: DomainEvent, at: float) -> None:
        if not self.selector.matches_name(ev.name):
            return  # not ours: as if it did not exist
        if ev.event == EventKind.CPUSET:
            # A re-pin seen in cgroupfs before libvirt's TUNABLE event (placement.py).
            self.store.update(lambda s: s.daemon.events.update({"cpuset": 1}))
            log.debug("cpuset of %s rewritten in %s", ev.name, ",".join(ev.keys))
            self._running(ev.uuid)
            if CLAMPED in ev.keys:
                self._clamped(ev.uuid, ev.keys[0], at)
            self.on_repin(ev.uuid, Cause(at))
            return
        self.store.update(lambda s: s.daemon.events.update({"libvirt": 1}))
        log.debug("libvirt event %s for %s %s", ev.event.value, ev.name, ",".join(ev.keys))
        if ev.event in _TUNE:
            # libvirt may deliver RESUMED before STARTED for a fresh start:
            # the first of either starts the event-to-tuned clock.
            self.reconcile(ev.uuid, Cause(at, started=True))
        elif ev.event in _DROP:
            self.forget(ev.uuid)
            if ev.event == EventKind.UNDEFINED:
                self.vcpusched_refused.pop(ev.uuid, None)
        elif ev.event == EventKind.DEFINED:
            self._check_vcpusched(ev.uuid)
        elif ev.event == EventKind.METADATA:
            self.specs.pop(ev.uuid, None)
            self.intent_changed.add(ev.uuid)
            self.reconcile(ev.uuid, Cause(at))
        elif ev.event == EventKind.TUNABLE:
            self._running(ev.uuid)
            self.on_repin(ev.uuid, Cause(at))
        elif ev.event == EventKind.DEVICE_ADDED:
            # A hotplug brings new threads (and maybe vhost kthreads): look
            # now, and again while libvirt places them.
            self._running(ev.uuid)
            if ev.uuid in self.tracked:
                self.tuner.rescan_kthreads(self.tracked[ev.uuid])
            self.reconcile(ev.uuid, Cause(at))
            self.retry.schedule(ev.uuid, 0)

    def on_repin(self, uuid: str, cause: Cause) -> None:
        """A live re-pin (TUNABLE): libvirt sends it after its cgroup and
        affinity change, so there is nothing to wait for.  The echo of our
        own pin call (and a no-op re-pin) leaves every thread as recorded:
        three syscalls a thread say so.  Otherwise the look before the fix
        is a syscall re-read of the last observation (repin.py)."""
        if self.steady.unchanged(uuid):
            log.debug("re-pin event for %s: every thread as recorded", uuid)
            return
        last = self.last.get(uuid)
        observed = None
        if last is not None and last.pid == self.tracked.get(uuid) and uuid in self.specs \
                and uuid not in self.intent_changed:
            observed = repin.refreshed(last, self.tuner.kernel.tasks)
        before = None if observed is None or last is None else self.tuner.rejudge(last, observed)
        self.reconcile(uuid, cause, before=before)

    def on_threads(self, pids: dict[int, float]) -> None:
        """New or renamed threads in these QEMU processes (pid -> seen at)."""
        by_pid = {pid: uuid for uuid, pid in self.tracked.items()}
        for pid, at in pids.items():
            uuid = by_pid.get(pid)
            if uuid is not None:
                log.debug("new or renamed thread in QEMU %d (%s)", pid, uuid)
                self._running(uuid)
                self.reconcile(uuid, Cause(at))
                self.retry.schedule(uuid, 0)

    def on_drift(self, sched: frozenset[int], moved: frozenset[int], at: float) -> int:
        """The drift watch saw these threads' scheduling change (a sched_set*
        syscall landed) or their cgroup change (daemon/driftwatch.py), at
        ``at``.  A guest holding one is compared by syscall first (our own
        libvirt pin calls come back this way and change nothing), a moved
        thread's guest is reconciled in full (its cgroup is not in the
        steady record); returns how many guests were reconciled."""
        n = 0
        for uuid, tids in self.steady.owners(sched | moved).items():
            if uuid not in self.tracked or (not tids & moved and self.steady.unchanged(uuid)):
                continue
            log.debug("drift watch: thread(s) %s of %s changed", ",".join(map(str, sorted(tids))), uuid)
            self._running(uuid)
            self.reconcile(uuid, Cause(at))
            n += 1
        return n

    def _clamped(self, uuid: str, group: str, at: float) -> None:
        """The watch put a re-pinned group's planned CPUs back before
        libvirt's affinity call landed (placement.py): the kernel is as
        planned.  Count the drift, and make libvirt's own pin call so its
        live XML says the plan again (it waits for the re-pin's job)."""
        last, guest = self.last.get(uuid), self.guests.get(uuid)
        placement = placement_of(last) if last is not None else None
        cpus = placement.groups.get(group) if placement is not None else None
        if guest is None or cpus is None:
            return
        kind = DriftKind.VCPU_AFFINITY if group.startswith("vcpu") else DriftKind.EMULATOR_AFFINITY
        try:
            repin.pin_group(guest, group, cpus)
        except LibvirtError as err:
            log.warning("%s: libvirt's pin of %s after the cpuset fix failed: %s", guest.name, group, err)
        done, wall = self._clock(), self._wall()

        def update(s: StateStore) -> None:
            g = s.guests.get(uuid)
            if g is not None and g.tuned_at is not None:
                g.corrections[kind] += 1
                g.last_correction_at = wall
                g.correction_latency.observe(done - at)

        self.store.update(update)
        log.info("%s: changed (drift): %s cpuset put back to %s as libvirt re-pinned it", guest.name, group,
                 format_cpulist(cpus))

    def _running(self, uuid: str) -> None:
        """The event itself says the guest runs (a re-pin, a hotplug, a new
        QEMU thread): spare the reconcile a state() round trip to libvirt."""
        guest = self.guests.get(uuid)
        if guest is not None:
            guest.known_state = RunState.RUNNING

    def run_due(self) -> None:
        for due in self.retry.due():
            self.reconcile(due.uuid, retry_attempts=due.attempts)

    def reload(self, config: Config) -> None:
        """A new config: re-derive every intent; what that changes is intent."""
        self.config = config
        self.selector = GuestSelector.from_config(config.daemon)
        # The RT budget ledger outlives a tuner: grants made stay ours to release.
        self.tuner = Tuner(config, ledger=self.tuner.ledger)
        self.retry.cap_s = config.daemon.resync_interval_s
        self.intent_changed |= set(self.specs)
        self.specs.clear()

    # -- resync -----------------------------------------------------------------

    def resync(self) -> bool:
        """Re-observe every managed guest and correct drift; pick up guests
        whose events we missed.  False when libvirt could not list guests
        (connection lost); an unresponsive libvirt still enforces the known
        guests from the kernel side."""
        self.next_full = self._clock() + self.config.daemon.full_check_interval_s
        self.store.update(lambda s: setattr(s.daemon, "full_checks", s.daemon.full_checks + 1))
        forget_shared()  # what this check reads is shared anew; gone guests' values are not kept
        try:
            active = self.host.active_guests(self.selector.matches_name)
        except LibvirtUnresponsive as err:
            log.warning("libvirt unresponsive (%s)", err)
            self.enforce_known()
            return True
        except LibvirtUnavailable as err:
            log.warning("libvirt: listing guests failed: %s", err)
            return False
        except LibvirtError as err:
            log.warning("libvirt: listing guests failed: %s", err)
            return True
        known = set(self.tracked) | set(self.record.entries) | self.store.read(lambda s: set(s.guests))
        for uuid in known - set(active):
            self.forget(uuid)
        if self.host.connections != self.connection:
            self._missed_metadata(active)
            self.connection = self.host.connections
        for uuid, guest in active.items():
            if uuid not in self.claims:
                # Every guest's claims before any is tuned: who started
                # first keeps a pCPU, whatever order the listing has.
                self._note_claims(guest)
        stood: list[DomainReport] = []
        for uuid, guest in active.items():
            if self._stands(uuid, guest):
                stood.append(self.last[uuid])
            else:
                self.reconcile(uuid, guest=guest)
        self._refresh_counters(stood)
        # A reconcile with nothing to do releases budget no guest claims any
        # more (a guest stopped): once here, for the guests that stood.
        self.tuner.ledger.release_unclaimed()
        return True

    def _missed_metadata(self, active: dict[str, Guest]) -> None:
        """A new connection: events sent while none was open are lost.  A
        guest whose ``<metadata>`` changed meanwhile gets its intent
        re-derived, as its METADATA_CHANGE event would have; the rest of the
        live XML is not compared (a live re-pin there is drift, not intent).
        One XML call per guest with a cached intent, at reconnect only."""
        for uuid in [u for u in self.specs if u in active]:
            try:
                key = metadata_key(parse_domain_xml(active[uuid].xml()))
            except (LibvirtError, DomainXMLError) as err:
                log.debug("%s: metadata not re-read after the reconnect: %s", active[uuid].name, err)
                continue
            if key != self.specs[uuid][1].metadata_key:
                log.info("%s: its metadata changed while rtagent was not connected to libvirt; "
                         "re-deriving its intent", active[uuid].name)
                self.specs.pop(uuid)
                self.intent_changed.add(uuid)

    def _stands(self, uuid: str, guest: Guest) -> bool:
        """The full check's shortcut (fullcheck.py): ``uuid``'s last reconcile
        stands — it left nothing to do, its intent, pCPU conflicts and run
        state are as they were, no look is pending, and its marks are
        unchanged."""
        last, cached = self.last.get(uuid), self.specs.get(uuid)
        if (last is None or cached is None or cached[1] is not last.spec or cached[0] != last.pid
                or self.tracked.get(uuid) != last.pid or uuid in self.intent_changed or uuid in self.retry
                or guest.known_state not in (RunState.RUNNING, RunState.PAUSED) or not fullcheck.settled(last)
                or last.claims is None or self.claims.ownership_for(last.claims).for_guest(uuid) != last.conflicts):
            return False
        try:
            if not self.tuner.still_observed(last.observed, self.standing.marks(uuid, last),
                                             kept=(self.standing.kept, uuid)):
                return False
        except Exception:  # the full path reports whatever it is
            log.debug("marks of %s not read", guest.name, exc_info=True)
            return False
        guest.known_state = None  # as _guest() leaves it
        self.guests[uuid] = guest  # the listing's handle (a reconnect made the old one stale)
        return True

    def _refresh_counters(self, stood: list[DomainReport]) -> None:
        """What the skipped reconciles would have refreshed: the vCPU
        counters ``rtagent status`` shows (one store update)."""
        rows = [(r.uuid, fullcheck.vcpu_keys(r)) for r in stood]
        got = self.standing.read_counters([key for _uuid, keys in rows for _vcpu, key in keys])
        wall = self._wall()

        def update(s: StateStore) -> None:
            for uuid, keys in rows:
                g = s.guests.get(uuid)
                if g is not None:
                    drift.fold_counters(g, ((vcpu, c[1], c[0], c[2]) for vcpu, key in keys
                                            if (c := got.get(key)) is not None), wall)

        if rows:
            self.store.update(update)

    def check_steady(self) -> bool:
        """The resync between full checks: only the guests whose threads'
        policy, priority or affinity differ from the last reconcile are
        reconciled; no libvirt call, no /proc text (steady.py)."""
        def look(uuid: str) -> None:
            # Its threads answered the last syscalls: no state() round trip;
            # a QEMU that exited shows as "process not found" until its
            # STOPPED event (or the full check) drops it.
            self._running(uuid)
            self.reconcile(uuid)

        self.steady.run(list(self.tracked), look)
        if self.tuner.ledger.trim_failed:
            self.tuner.ledger.release_unclaimed()
        return True

    def thread_names(self) -> dict[int, dict[int, str]]:
        """QEMU PID -> {TID: name} of each tracked guest as its last full
        observation saw it (the host checks' scan reads them no more; a
        thread event re-observes the guest, the full check confirms it)."""
        out = {}
        for uuid, pid in self.tracked.items():
            last = self.last.get(uuid)
            if last is not None and last.observed is not None and last.pid == pid:
                out[pid] = {t.tid: t.name for t in last.observed.threads}
        return out

    def enforce_known(self) -> None:
        """Without libvirt (hung or disconnected): the guests already known,
        from their cached intent and the kernel's view.  A full check: the
        next one is due a full-check interval later (daemon/cadence.py)."""
        self.next_full = self._clock() + self.config.daemon.full_check_interval_s
        if self.tracked:
            log.info("enforcing %d known guest(s) from the kernel side", len(self.tracked))
        for uuid in list(self.tracked):
            self.reconcile(uuid)

    # -- one guest ------------------------------------------------------------------

    def _check_vcpusched(self, uuid: str) -> None:
        """A guest (re)defined with libvirt's own <vcpusched> on a host that
        refuses it: say so now, before its start fails."""
        if self.tuner.vcpusched_refused is None:
            return
        try:
            guest = self.host.lookup(uuid)
            message = vcpusched.refusal(self.tuner.spec_for(guest), self.tuner.vcpusched_refused)
        except Exception:  # undefined meanwhile, unreadable XML, libvirt trouble: nothing to say
            log.debug("XML of defined guest %s not read", uuid, exc_info=True)
            return
        if message is None:
            self.vcpusched_refused.pop(uuid, None)
            return
        self.vcpusched_refused[uuid] = guest.name
        log.warning("%s", message)

    def _note_claims(self, guest: Guest) -> None:
        try:
            self.claims.record(guest.uuid, self.tuner.inspect(guest).claims)
        except Exception:  # the reconcile that follows reports it
            log.debug("claims of %s not read", guest.name, exc_info=True)

    def forget(self, uuid: str) -> None:
        self.claims.drop(uuid)
        # A pCPU it owned may go to a guest that lost it: look at those now.
        for other in self.store.read(lambda s: [u for u, g in s.guests.items()
                                                if g.report is not None and g.report.conflicts]):
            if other != uuid:
                self.retry.schedule(other, 0)
        pid = self.tracked.pop(uuid, None)
        self.specs.pop(uuid, None)
        self.guests.pop(uuid, None)
        self.intent_changed.discard(uuid)
        self.retry.discard(uuid)
        self.steady.forget(uuid)
        self.standing.forget(uuid)
        self.last.pop(uuid, None)
        claimed = uuid in self.tuner.ledger.claims  # the start window claims before tracking
        self.tuner.forget(uuid, pid)
        self.record.done(uuid)
        self.store.drop(uuid)
        self._tracked_changed()
        if claimed:
            # Its RT budget now, not at the next full check: the groups above
            # it (/machine) would hold it for nobody meanwhile, or for good if
            # the daemon stops first.
            self.tuner.ledger.release_unclaimed()
        if pid is not None:
            log.info("guest %s stopped; state dropped", uuid)
            if self.placements.pop(pid, None) is not None and self._on_placements is not None:
                self._on_placements(dict(self.placements))

    def _placed(self, after: DomainReport) -> None:
        """Publish where this guest's live-added iothreads go, when it changed."""
        placement = placement_of(after) if after.pid is not None and self.tracked.get(after.uuid) == after.pid else None
        if after.pid is None or self.placements.get(after.pid) == placement:
            return
        for pid in [p for p, pl in self.placements.items() if pl.uuid == after.uuid and p != after.pid]:
            del self.placements[pid]  # an earlier QEMU of this guest
        if placement is None:
            self.placements.pop(after.pid, None)
        else:
            self.placements[after.pid] = placement
        if self._on_placements is not None:
            self._on_placements(dict(self.placements))

    def _tracked_changed(self) -> None:
        if self._on_tracked is not None:
            self._on_tracked(set(self.tracked.values()))

    def _guest(self, uuid: str, guest: Guest | None) -> Guest | None:
        """The Guest to work on: the listing's, the cached one, or a lookup.
        None = leave it alone (stopped, starting up, not selected)."""
        guest = guest or self.guests.get(uuid)
        if guest is None:
            guest = self.host.lookup(uuid)
            if not self.selector.matches_name(guest.name):
                return None
        state = guest.known_state
        if state is None:
            try:
                state = guest.state()
            except LibvirtUnavailable:
                # Hung or lost libvirt: enforce a known guest from the kernel
                # side (its process is still checked); a new one waits.
                if uuid not in self.specs:
                    raise
                state = RunState.RUNNING
        guest.known_state = None  # the listing's state is good for this reconcile only
        if state == RunState.STOPPED:
            self.forget(uuid)
            return None
        if state == RunState.STARTING:
            # libvirt is still creating cgroups and pinning threads; its
            # STARTED/RESUMED event brings us back.
            return None
        self.guests[uuid] = guest
        return guest

    def _inspect(self, guest: Guest) -> DomainReport:
        cached = self.specs.get(guest.uuid)
        # A guest tuned before whose intent no longer says realtime is
        # "withdrawn": its realtime threads go back to SCHED_OTHER, its budget
        # is released, and it stays tracked as a non-realtime guest.
        withdrawn = guest.uuid in self.tracked or guest.uuid in self.record.entries
        before = self.tuner.inspect(guest, spec=cached[1] if cached else None, withdrawn=withdrawn,
                                    peers=self.claims)
        if cached and before.pid != cached[0]:
            # A new QEMU process under the same UUID (a restart we missed).
            before = self.tuner.inspect(guest, peers=self.claims)
        elif before.withdrawn and guest.uuid not in self.tracked:
            before = self._inherited(guest, before)
        if self.selector.require_metadata and before.spec.source != "metadata" and before.spec.realtime:
            before = self.tuner.inspect(guest, spec=dataclasses.replace(before.spec, realtime=False),
                                        withdrawn=withdrawn, peers=self.claims)
        self.claims.record(guest.uuid, before.claims)
        if before.spec.realtime and before.pid is not None:
            self.specs[guest.uuid] = (before.pid, before.spec)
        return before

    def _inherited(self, guest: Guest, before: DomainReport) -> DomainReport:
        """A guest with no realtime intent that only the record says rtagent
        tuned (an earlier daemon): withdrawn only if the record is about this
        very QEMU process, else not ours — FIFO set by libvirt's own
        <vcpusched> or by another tool is never demoted."""
        tuned = self.record.matches(guest.uuid, before.pid)
        if tuned is None:
            self.record.done(guest.uuid)
            return self.tuner.inspect(guest, peers=self.claims)
        log.info("%s: realtime intent withdrawn while no daemon ran; its realtime threads go back to "
                 "SCHED_OTHER, then the RT budget of %s is released", guest.name,
                 ", ".join(sorted(tuned.cgroups)) or "no cgroup")
        self.tuner.ledger.granted |= tuned.cgroups  # released after the demotion, like this instance's grants
        return before

    def _started_of(self, pid: int) -> int | None:
        try:
            return self.tuner.kernel.tasks.stat(pid).starttime
        except GONE:
            return None

    def _observe(self, uuid: str, guest: Guest | None) -> tuple[Guest, DomainReport] | None:
        try:
            guest = self._guest(uuid, guest)
            return None if guest is None else (guest, self._inspect(guest))
        except GuestGone:
            self.forget(uuid)
        except LibvirtError as err:
            log.warning("libvirt: cannot inspect %s: %s", uuid, err)
        except Exception:
            # Never die on a guest's behalf.
            log.exception("inspecting guest %s failed", uuid)
        return None

    def reconcile(self, uuid: str, cause: Cause = Cause(), *, guest: Guest | None = None,
                  retry_attempts: int | None = None, before: DomainReport | None = None) -> DomainReport | None:
        """Bring one guest to its plan.  ``guest`` comes from the resync's
        one-RPC listing (saving a lookup and a state() round trip);
        ``before``, the look before the fix when the caller has it already
        (a re-pin: on_repin)."""
        t0 = self._clock()
        attempts = retry_attempts if retry_attempts is not None else 0
        known = self.guests.get(uuid)
        if before is not None and known is not None:
            known.known_state = None  # as _guest() leaves it
            seen: tuple[Guest, DomainReport] | None = (known, before)
        else:
            seen = self._observe(uuid, guest)
        if seen is None:
            return None
        guest, before = seen
        if not (before.realtime or before.withdrawn):
            # Not ours to manage; keep no state (and no metrics series) for it.
            if uuid in self.tracked or self.store.read(lambda s: uuid in s.guests):
                self.forget(uuid)
            return None
        if before.pid is not None and self.tracked.get(uuid) != before.pid:
            self.tracked[uuid] = before.pid
            self._tracked_changed()
        self.record.note(before)  # before any thread is made realtime
        # The plan being applied, before its libvirt pin calls write the
        # groups' cpusets: the watch must not take them for a re-pin.
        self._placed(before)
        after = self._apply(guest, before)
        if after is None:
            return None
        self.record.note(after)
        self._account(uuid, before, after, drift.Times(cause.at if cause.at is not None else t0,
                                                       self._clock(), self._wall()), cause.started, t0)
        self.steady.record(uuid, after)
        if after.observed is not None:
            self.last[uuid] = after
        else:
            self.last.pop(uuid, None)
        self._placed(after)
        if self.on_reconciled is not None:
            self.on_reconciled(uuid, after)
        pending = any(v.check == Check.VCPU_PENDING for v in after.violations)
        # A refused change (EPERM while budget is short, a cpuset in flux) is
        # retried on the same backoff, not only at the next resync.
        refused = bool(after.failures) or any(v.check == Check.RT_BUDGET for v in after.violations)
        self.retry.after_reconcile(uuid, attempts, pending=pending, refused=refused,
                                   settling=retry_attempts is not None, not_before=self.tuner.budget_wait_until(after))
        return after

    def _apply(self, guest: Guest, before: DomainReport) -> DomainReport | None:
        if not ((before.spec.valid or before.withdrawn) and before.observed is not None):
            return before
        try:
            return self.tuner.apply(guest, report=before)
        except GuestGone:
            self.forget(guest.uuid)
            return None
        except Exception:
            log.exception("tuning guest %s failed", before.name)
            return before

    def _account(self, uuid: str, before: DomainReport, after: DomainReport, times: drift.Times,
                 started: bool, t0: float) -> None:
        tuned_before = self.store.read(lambda s: (g := s.guests.get(uuid)) is not None and g.tuned_at is not None)
        intent = uuid in self.intent_changed
        if after.observed is not None:
            self.intent_changed.discard(uuid)  # applied (or refused, then it is a failure)
        outcome = drift.classify(before, after, tuned_before=tuned_before, intent_changed=intent)

        def update(s: StateStore) -> None:
            drift.record(s.guest(uuid, after.name), s.daemon, after, outcome, times, started=started)
            s.daemon.reconcile_duration.observe(times.done - t0)

        self.store.update(update)
        why = "" if not tuned_before else " (intent change)" if intent else " (drift)"
        for r in after.changes:
            if r.outcome in ("changed", "failed"):
                log.info("%s: %s%s: %s%s", after.name, r.outcome, why, r.action.describe(),
                         f" ({r.detail})" if r.detail else "")
