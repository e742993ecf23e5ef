"""The libvirt boundary: the only module that imports ``libvirt``.

Modelled on Nova's ``virt/libvirt/host.py``: connection management, the
native event loop thread, the translation of libvirt's callbacks into plain
:class:`DomainEvent` records, of its integer states into :class:`RunState`
and of ``libvirtError`` into rtagent's own errors are kept here.  Callers get
:class:`Guest` wrappers, never a ``virDomain``.

Every RPC runs on one worker thread and the caller waits at most
``call_timeout_s``: a hung libvirtd (SIGSTOPped, deadlocked) costs the
enforcement loop one timeout, after which calls fail at once with
:class:`LibvirtUnresponsive` until the stuck call returns.  The loop keeps
enforcing known guests from the kernel side meanwhile.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from .errors import GuestGone, LibvirtError, LibvirtUnavailable, LibvirtUnresponsive
from .threadname import name_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["DomainEvent", "EventKind", "Guest", "GuestGone", "LibvirtError", "LibvirtHost",
           "LibvirtUnavailable", "LibvirtUnresponsive", "RunState", "start_event_loop"]

DEFAULT_CALL_TIMEOUT_S = 5.0
WAIT_SLICE_S = 0.1  # a wait for libvirt looks this often whether the daemon is stopping


class EventKind(str, enum.Enum):
    """What a libvirt event means to rtagent."""

    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STOPPED = "stopped"
    SHUTDOWN = "shutdown"
    PMSUSPENDED = "pmsuspended"
    CRASHED = "crashed"
    METADATA = "metadata"  # METADATA_CHANGE: the intent may have changed
    TUNABLE = "tunable"  # a live vcpupin / emulatorpin / iothreadpin
    DEVICE_ADDED = "device_added"  # hotplug: new threads (vhost, iothread) follow
    # Not libvirt's: a managed guest's thread-group cpuset was rewritten (the
    # first step of libvirt's re-pin, seen in cgroupfs; daemon/placement.py).
    CPUSET = "cpuset"
    OTHER = "other"


class RunState(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    STARTING = "starting"  # paused by libvirt while it starts or migrates the guest: hands off
    STOPPED = "stopped"  # shut off or crashed
    OTHER = "other"


@dataclass(frozen=True)
class DomainEvent:
    """An event, translated out of libvirt's integer codes."""

    uuid: str
    name: str
    event: EventKind
    detail: int = 0
    keys: tuple[str, ...] = ()  # TUNABLE: the parameter names that changed


_EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: EventKind.DEFINED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: EventKind.UNDEFINED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: EventKind.STARTED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: EventKind.SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: EventKind.RESUMED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: EventKind.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: EventKind.SHUTDOWN,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: EventKind.PMSUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: EventKind.CRASHED,
}
_STARTING_REASONS = {libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, libvirt.VIR_DOMAIN_PAUSED_MIGRATION}
# The TUNABLE keys that move a thread (cpu shares and bandwidth are not ours).
PIN_KEY_PREFIXES = ("cputune.vcpupin", "cputune.emulatorpin", "cputune.iothreadpin")


def run_state(state: int, reason: int) -> RunState:
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return RunState.RUNNING
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return RunState.STARTING if reason in _STARTING_REASONS else RunState.PAUSED
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
        return RunState.STOPPED
    return RunState.OTHER


def translate(err: libvirt.libvirtError, what: str) -> LibvirtError:
    """``libvirtError`` → rtagent's vocabulary, with libvirt's message."""
    code = err.get_error_code()
    msg = f"{what}: {err.get_error_message()}"
    if code in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):  # "domain is not running"
        return GuestGone(msg, code)
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN) or (
            err.get_error_domain() in (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC)
            and code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_RPC)):
        return LibvirtUnavailable(msg, code)
    return LibvirtError(msg, code)


_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a native
    thread.  Must happen before the connection is opened (libvirt only
    delivers events and keepalives on connections opened after registration)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            name_thread("libvirt-events")
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # pragma: no cover - logged, loop continues
                    log.exception("libvirt event loop iteration failed")

        t = threading.Thread(target=run, name="libvirt-events", daemon=True)
        t.start()
        _event_loop_started = True


WORKER_THREAD_NAME = "rtagent-libvirt"  # its comm, for top -H and the benchmarks


class CallWorker:
    """Runs calls on one daemon thread; the caller waits at most a timeout.

    A call that times out keeps the thread until libvirt answers it; until
    then every new call fails at once (queueing behind a hung libvirtd would
    only grow a backlog of stale work).  A daemon thread, not a
    ThreadPoolExecutor: the interpreter must be able to exit while libvirt
    is hung."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic, name: str = WORKER_THREAD_NAME,
                 serial: threading.Lock | None = None):
        self.timeout_s = timeout_s
        # Held around every call: workers sharing it never have two libvirt
        # calls in flight at once.  libvirt's client crashed (SIGSEGV in the
        # RPC's event loop, g_main_loop_quit) with a start lookup in flight
        # on one thread while the loop's worker closed the connection and
        # opened a new one on another, libvirtd hung; and a connection that
        # close() frees under a call on another thread is a use after free.
        self._serial = serial or threading.Lock()
        self._clock = clock
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stuck: Future | None = None
        self._stuck_since: float | None = None
        self._probe: Future | None = None  # a liveness probe nobody waits for
        self._probe_at = 0.0
        self._thread: threading.Thread | None = None
        self._aborting = False  # the daemon is stopping: nobody waits for libvirt any more

    def _ensure_thread(self) -> None:
        """Started at the first call, not at construction: the daemon drops
        capabilities before any thread exists (they are per thread), and it
        builds its LibvirtHost before that."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        name_thread(self._name)
        while True:
            fut, fn = self._jobs.get()
            if fut.set_running_or_notify_cancel():
                try:
                    with self._serial:
                        result = fn()
                    fut.set_result(result)
                except BaseException as err:  # handed to the caller
                    fut.set_exception(err)
            # Not held while the worker waits for the next job: the last
            # call's closure (its guest, its domain) would live until then.
            fut = fn = result = None

    def unresponsive_s(self) -> float | None:
        """Seconds since the call (or probe) that has not returned within its
        timeout was made, or None."""
        if self._stuck is None and self._clock() - self._probe_at <= self.timeout_s:
            # Nothing can be overdue (the usual answer, asked every resync):
            # no lock.  A call that sticks meanwhile is seen at the next ask.
            return None
        with self._lock:
            if self._stuck is not None and self._stuck.done():
                self._stuck = self._stuck_since = None
            now = self._clock()
            since = [t for t in (self._stuck_since,) if t is not None]
            if self._probe is not None and not self._probe.done() and now - self._probe_at > self.timeout_s:
                since.append(self._probe_at)
            return None if not since else now - min(since)

    def probe(self, fn: Callable[[], object], every_s: float) -> None:
        """Send ``fn`` without waiting for it, at most every ``every_s``: the
        loop learns that libvirt hangs (the probe outlives the timeout) even
        when it makes no call of its own (the steady-state resync)."""
        if self._clock() - self._probe_at < every_s:
            return  # sent less than every_s ago (most resyncs): no lock
        with self._lock:
            now = self._clock()
            if (self._probe is not None and not self._probe.done()) or now - self._probe_at < every_s:
                return
            self._probe, self._probe_at = Future(), now
            fut = self._probe
        self._ensure_thread()
        self._jobs.put((fut, fn))

    def abort_waits(self) -> None:
        """The daemon is stopping: every wait ends within ``WAIT_SLICE_S`` and
        no new call is waited for (only ``stopping=True`` ones, the close).
        A plain attribute write: safe from a signal handler."""
        self._aborting = True

    def call(self, what: str, fn: Callable[[], T], timeout_s: float | None = None, *,
             stopping: bool = False) -> T:
        """``fn()`` on the worker, waited for at most ``timeout_s``
        (``stopping``: also while the daemon stops, for the close)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        hung = self.unresponsive_s()
        if hung is not None:
            raise LibvirtUnresponsive(f"{what}: not attempted, libvirt has not answered for {hung:.1f}s")
        if self._aborting and not stopping:
            raise LibvirtUnresponsive(f"{what}: not attempted, the daemon is stopping")
        self._ensure_thread()
        fut: Future = Future()
        started = self._clock()
        self._jobs.put((fut, fn))
        try:
            return self._wait(fut, started, timeout, stopping)
        except FutureTimeout:
            with self._lock:
                self._stuck, self._stuck_since = fut, started
            if self._aborting and not stopping:
                raise LibvirtUnresponsive(f"{what}: not waited for, the daemon is stopping") from None
            raise LibvirtUnresponsive(f"{what}: libvirt did not answer within {timeout:.1f}s") from None
        except libvirt.libvirtError as err:
            raise translate(err, what) from None
        finally:
            # A failed call's error holds its traceback, which holds this
            # frame and _wait's; were the future still in them (it holds
            # the error) that would be a cycle refcounting never frees, with
            # the caller's guest, domain and reports in it, until a full
            # collection.  Every guest that goes leaves a "domain not found"
            # or two (measured: the daemon's Python heap rose 0.15 MiB a
            # cycle of 20 guests, then fell at a gen-2 pass).
            fut = None

    def _wait(self, fut: Future, started: float, timeout: float, stopping: bool) -> object:
        """``fut.result`` in slices, so a stop asked meanwhile (a signal
        handler runs between them) ends the wait; FutureTimeout when it ends."""
        end = time.monotonic() + timeout
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0 or (self._aborting and not stopping):
                    raise FutureTimeout()
                try:
                    return fut.result(min(left, WAIT_SLICE_S))
                except FutureTimeout:
                    continue
        finally:
            fut = None  # not in the traceback of the error it raised (see call)


def _cpumap(cpus: frozenset[int], ncpus: int) -> tuple[bool, ...]:
    return tuple(i in cpus for i in range(ncpus))


class Guest:
    """One libvirt domain as the rest of rtagent sees it.  ``uuid`` and
    ``name`` are local (no RPC); every method that asks libvirt goes through
    the host's worker, with its timeout, and raises rtagent errors."""

    def __init__(self, host: LibvirtHost, dom: libvirt.virDomain, state: RunState | None = None):
        self._host = host
        self._dom = dom
        self.uuid: str = dom.UUIDString()
        self.name: str = dom.name()
        self.known_state = state

    def __repr__(self) -> str:
        return f"Guest({self.name!r}, {self.uuid})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return self._host.call(f"{what} of {self.name}", fn)

    def state(self) -> RunState:
        st, reason = self._call("state", self._dom.state)
        return run_state(st, reason)

    def xml(self) -> str:
        """The live XML (what libvirt applied, including live pin changes)."""
        return self._call("XML", lambda: self._dom.XMLDesc(0))

    # Pinning goes through libvirt so that its cgroup cpusets and live XML
    # agree with the kernel: a pin libvirt does not know about would be undone
    # by libvirt itself at the next cpuset write.

    def pin_vcpu(self, vcpu: int, cpus: frozenset[int]) -> None:
        cpumap = _cpumap(cpus, self._host.host_cpu_count())
        self._call(f"pin of vCPU {vcpu}", lambda: self._dom.pinVcpuFlags(vcpu, cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def pin_emulator(self, cpus: frozenset[int]) -> None:
        cpumap = _cpumap(cpus, self._host.host_cpu_count())
        self._call("emulator pin", lambda: self._dom.pinEmulator(cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def pin_iothread(self, iothread: int, cpus: frozenset[int]) -> None:
        cpumap = _cpumap(cpus, self._host.host_cpu_count())
        self._call(f"pin of iothread {iothread}",
                   lambda: self._dom.pinIOThread(iothread, cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE))


class LibvirtHost:
    """One libvirt connection and the handful of calls rtagent needs."""

    def __init__(self, uri: str, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S):
        self.uri = uri
        # One libvirt call at a time across both workers (see CallWorker).
        serial = threading.Lock()
        self.worker = CallWorker(call_timeout_s, serial=serial)
        self.start_worker = CallWorker(call_timeout_s, name="rtagent-lv-start", serial=serial)  # starting guests only
        self._conn: libvirt.virConnect | None = None
        self._closed = False  # the close callback fired
        self.connections = 0  # connections opened: a new one means events may have been missed
        self._callback_ids: list[int] = []
        self._ncpus: int | None = None

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return self.worker.call(what, fn)

    def unresponsive_s(self) -> float | None:
        return self.worker.unresponsive_s()

    def probe(self) -> None:
        """A cheap RPC (libvirt's version) sent without waiting, at most once
        per call timeout: a hung libvirtd is noticed within two timeouts
        even while no other call is made."""
        conn = self._conn
        if conn is not None and not self._closed:
            self.worker.probe(conn.getLibVersion, every_s=self.worker.timeout_s)

    # -- connection -----------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        """The open connection; never connects by itself (the daemon decides
        when to reconnect, with backoff)."""
        if self._conn is None:
            raise LibvirtUnavailable(f"not connected to libvirt at {self.uri}")
        return self._conn

    def connect(self) -> None:
        # libvirt prints its own errors to stderr by default; we report them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            self._conn = self.call(f"connect to {self.uri}", lambda: libvirt.open(self.uri))
        except LibvirtUnavailable as err:
            raise LibvirtUnavailable(f"cannot connect to libvirt at {self.uri}: {err}") from None
        except LibvirtError as err:
            raise LibvirtUnavailable(f"cannot connect to libvirt at {self.uri}: {err}", err.code) from None
        self._closed = False
        self._ncpus = None
        self.connections += 1

    @property
    def connected(self) -> bool:
        """Open and not closed by libvirt; local, never an RPC."""
        return self._conn is not None and not self._closed

    def close(self, timeout_s: float = 1.0) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        ids, self._callback_ids = self._callback_ids, []

        def quietly(fn: Callable[..., object], *args: object) -> None:
            try:
                fn(*args)
            except libvirt.libvirtError:
                pass

        def teardown() -> None:
            for cid in ids:
                quietly(conn.domainEventDeregisterAny, cid)
            quietly(conn.unregisterCloseCallback)
            quietly(conn.close)

        try:
            self.worker.call("close", teardown, timeout_s=timeout_s, stopping=True)
        except LibvirtUnavailable as err:
            log.debug("libvirt connection dropped without a clean close: %s", err)

    def subscribe(self, on_event: Callable[[DomainEvent], None], on_close: Callable[[int], None],
                  keepalive_interval: int = 5, keepalive_count: int = 3) -> None:
        """Lifecycle, metadata, tunable and device-added events and the
        connection-close notification.  Callbacks run on libvirt's event
        thread and must only enqueue."""
        conn = self.conn

        def emit(dom, kind: EventKind, detail: int = 0, keys: tuple[str, ...] = ()) -> None:
            try:
                on_event(DomainEvent(uuid=dom.UUIDString(), name=dom.name(), event=kind, detail=detail, keys=keys))
            except libvirt.libvirtError:  # domain vanished between event and name()
                log.debug("%s event for a vanished domain", kind.value)

        def lifecycle(_conn, dom, event, detail, _opaque):
            emit(dom, _EVENT_NAMES.get(event, EventKind.OTHER), detail)

        def tunable(_conn, dom, params, _opaque):
            keys = tuple(k for k in params if k.startswith(PIN_KEY_PREFIXES))
            if keys:
                emit(dom, EventKind.TUNABLE, keys=keys)

        def closed(_conn, reason, _opaque):
            self._closed = True
            on_close(reason)

        callbacks = [
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
            # The realtime intent lives in the metadata: a change re-derives it.
            (libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, lambda _c, dom, _t, _ns, _o: emit(dom, EventKind.METADATA)),
            (libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE, tunable),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, lambda _c, dom, _alias, _o: emit(dom, EventKind.DEVICE_ADDED)),
        ]

        def register() -> None:
            for event_id, cb in callbacks:
                self._callback_ids.append(conn.domainEventRegisterAny(None, event_id, cb, None))
            conn.registerCloseCallback(closed, None)
            try:
                conn.setKeepAlive(keepalive_interval, keepalive_count)
            except libvirt.libvirtError as err:  # the test driver has no keepalive
                log.debug("keepalive not set: %s", err)

        self.call("event subscription", register)

    # -- queries ----------------------------------------------------------

    def host_cpu_count(self) -> int:
        if self._ncpus is None:
            self._ncpus = self.call("CPU map", lambda: self.conn.getCPUMap()[0])
        return self._ncpus

    def active_guests(self, names: Callable[[str], bool] | None = None) -> dict[str, Guest]:
        """uuid -> Guest (with its run state) of every active domain whose
        name ``names`` accepts (all without it), in one RPC (the resync's
        listing: no per-guest lookup and state() round trips).  The name is
        asked first: a domain not selected costs no Guest."""
        conn = self.conn

        def listing() -> list[tuple[Any, dict]]:
            return conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE,
                                          libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)

        out = {}
        for dom, st in self.call("listing active guests", listing):
            if names is not None and not names(dom.name()):
                continue
            g = Guest(self, dom, run_state(st.get("state.state", libvirt.VIR_DOMAIN_NOSTATE), st.get("state.reason", 0)))
            out[g.uuid] = g
        return out

    def inactive_guests(self) -> list[Guest]:
        """Every defined guest that is not running (its XML applies at its next start)."""
        conn = self.conn
        doms = self.call("listing defined guests",
                         lambda: conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE))
        return [Guest(self, d, RunState.STOPPED) for d in doms]

    def lookup(self, name_or_uuid: str) -> Guest:
        conn = self.conn

        def find() -> libvirt.virDomain:
            if len(name_or_uuid) == 36 and name_or_uuid.count("-") == 4:
                return conn.lookupByUUIDString(name_or_uuid)
            return conn.lookupByName(name_or_uuid)

        try:
            return Guest(self, self.call(f"lookup of {name_or_uuid!r}", find))
        except GuestGone:
            raise DomainNotFound(f"domain {name_or_uuid!r} not found") from None


    def starting(self, domain_id: int, wanted: Callable[[str], bool] | None = None) -> tuple[Guest, str | None]:
        """The active domain with libvirt's run-time id ``domain_id`` and its
        live XML.  Both answer while the domain is still starting (libvirt
        assigns the id before it creates the guest's cgroups), which is what
        the start watch needs.  On a worker of its own: a starting guest must
        not wait behind the loop's calls (a full check's listing, another
        guest's pins), nor they behind it.  ``wanted(name)`` false: the XML
        is not asked for (None) — on a host shared with guests the selector
        leaves alone, each of their starts costs one RPC, not two.  Raises
        rtagent's errors."""
        def ask() -> tuple[libvirt.virDomain, str | None]:
            # The connection as it is when the call runs (the loop may have
            # closed it while this waited its turn).
            dom = self.conn.lookupByID(domain_id)
            if wanted is not None and not wanted(dom.name()):
                return dom, None
            return dom, dom.XMLDesc(0)

        try:
            dom, xml = self.start_worker.call(f"lookup of domain id {domain_id}", ask)
        except GuestGone:
            raise DomainNotFound(f"no active domain with id {domain_id}") from None
        return Guest(self, dom), xml


class DomainNotFound(GuestGone):
    exit_code = 2
