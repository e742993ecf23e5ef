"""The libvirt boundary: everything rtagent asks of libvirt goes through here.

Modelled on Nova's ``virt/libvirt/host.py``: connection management, the
native event loop thread, and the translation of libvirt's callbacks into
plain :class:`DomainEvent` records are kept in this one module.  Callbacks
only enqueue; the daemon's loop does the work (libvirt callbacks run on the
event thread and must not block it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from .errors import RtagentError

log = logging.getLogger(__name__)


class LibvirtUnavailable(RtagentError):
    """libvirt cannot be reached (daemon down, bad URI, no permission)."""


@dataclass(frozen=True)
class DomainRef:
    name: str
    uuid: str
    id: int


@dataclass(frozen=True)
class DomainEvent:
    """A lifecycle event, translated out of libvirt's integer codes."""

    uuid: str
    name: str
    event: str  # "started" | "resumed" | "stopped" | "undefined" | "suspended" | ...
    detail: int


_EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

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
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # pragma: no cover - logged, loop continues
                    log.exception("libvirt event loop iteration failed")

        t = threading.Thread(target=run, name="libvirt-events", daemon=True)
        t.start()
        _event_loop_started = True


def _cpumap(cpus: frozenset[int], ncpus: int) -> tuple[bool, ...]:
    return tuple(i in cpus for i in range(ncpus))


class LibvirtHost:
    """One libvirt connection and the handful of calls rtagent needs."""

    def __init__(self, uri: str):
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []

    # -- connection -----------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        return self._conn

    def connect(self) -> None:
        try:
            # libvirt prints its own errors to stderr by default; we report them.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            raise LibvirtUnavailable(f"cannot connect to libvirt at {self.uri}: {err.get_error_message()}") from None

    @property
    def connected(self) -> bool:
        if self._conn is None:
            return False
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for cid in self._callback_ids:
            try:
                conn.domainEventDeregisterAny(cid)
            except libvirt.libvirtError:
                pass
        self._callback_ids.clear()
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def subscribe(self, on_event: Callable[[DomainEvent], None], on_close: Callable[[int], None],
                  keepalive_interval: int = 5, keepalive_count: int = 3) -> None:
        """Lifecycle events and connection-close notification.  Both callbacks
        run on libvirt's event thread and must only enqueue."""
        conn = self.conn

        def lifecycle(_conn, dom, event, detail, _opaque):
            try:
                on_event(DomainEvent(uuid=dom.UUIDString(), name=dom.name(),
                                     event=_EVENT_NAMES.get(event, str(event)), detail=detail))
            except libvirt.libvirtError:  # domain vanished between event and name()
                log.debug("lifecycle event for a vanished domain")

        def metadata(_conn, dom, _mtype, _nsuri, _opaque):
            try:
                on_event(DomainEvent(uuid=dom.UUIDString(), name=dom.name(), event="metadata", detail=0))
            except libvirt.libvirtError:
                log.debug("metadata event for a vanished domain")

        self._callback_ids.append(
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None))
        # The realtime intent lives in the metadata: a change re-derives it.
        self._callback_ids.append(
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, metadata, None))
        conn.registerCloseCallback(lambda _conn, reason, _opaque: on_close(reason), None)
        try:
            conn.setKeepAlive(keepalive_interval, keepalive_count)
        except libvirt.libvirtError as err:  # the test driver has no keepalive
            log.debug("keepalive not set: %s", err)

    # -- queries ----------------------------------------------------------

    def host_cpu_count(self) -> int:
        return self.conn.getCPUMap()[0]

    def active_domains(self) -> list[DomainRef]:
        out = []
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                out.append(DomainRef(name=dom.name(), uuid=dom.UUIDString(), id=dom.ID()))
            except libvirt.libvirtError:
                continue  # stopped while listing
        return out

    def active_domain_states(self) -> dict[str, tuple[libvirt.virDomain, int, int]]:
        """uuid -> (domain, state, reason) of every active domain, in one RPC
        (the resync's listing: no per-guest lookup and state() round trips)."""
        out = {}
        stats = self.conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE,
                                            libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        for dom, st in stats:
            out[dom.UUIDString()] = (dom, st.get("state.state", libvirt.VIR_DOMAIN_NOSTATE),
                                     st.get("state.reason", 0))
        return out

    def lookup(self, name_or_uuid: str) -> libvirt.virDomain:
        try:
            if len(name_or_uuid) == 36 and name_or_uuid.count("-") == 4:
                return self.conn.lookupByUUIDString(name_or_uuid)
            return self.conn.lookupByName(name_or_uuid)
        except libvirt.libvirtError as err:
            raise DomainNotFound(f"domain {name_or_uuid!r} not found: {err.get_error_message()}") from None

    def domain_xml(self, dom: libvirt.virDomain) -> str:
        """The live XML (what libvirt applied, including live pin changes)."""
        return dom.XMLDesc(0)

    # -- live tuning ------------------------------------------------------
    # Pinning goes through libvirt so that its cgroup cpusets and live XML
    # agree with the kernel: a pin libvirt does not know about would be undone
    # by libvirt itself at the next cpuset write.

    def pin_vcpu(self, dom: libvirt.virDomain, vcpu: int, cpus: frozenset[int]) -> None:
        dom.pinVcpuFlags(vcpu, _cpumap(cpus, self.host_cpu_count()), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def pin_emulator(self, dom: libvirt.virDomain, cpus: frozenset[int]) -> None:
        dom.pinEmulator(_cpumap(cpus, self.host_cpu_count()), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def pin_iothread(self, dom: libvirt.virDomain, iothread: int, cpus: frozenset[int]) -> None:
        dom.pinIOThread(iothread, _cpumap(cpus, self.host_cpu_count()), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def iothread_ids(self, dom: libvirt.virDomain) -> dict[int, frozenset[int]]:
        """iothread id → libvirt's current pinning."""
        try:
            infos = dom.ioThreadInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError:
            return {}
        return {iid: frozenset(i for i, on in enumerate(cpumap) if on) for iid, cpumap in infos}


class DomainNotFound(RtagentError):
    exit_code = 2


def is_gone(err: libvirt.libvirtError) -> bool:
    """The domain stopped or vanished: normal during churn, not a failure."""
    return err.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_OPERATION_INVALID,  # "domain is not running"
    )


def is_connection_error(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() in (
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_RPC,
    ) and err.get_error_domain() in (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC)
