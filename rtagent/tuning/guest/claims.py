"""Who owns a realtime pCPU, host-wide.  Pure: no I/O.

Validation of one guest's intent makes sure its own threads do not share a
realtime vCPU's pCPU; this module does the same across guests.  Every guest
states its *claims* — the pCPUs of its realtime vCPUs, and the pinned pCPUs
of its emulator, iothreads and non-realtime vCPUs — and :func:`resolve`
gives each realtime pCPU one owner:

* among realtime vCPUs, the one that is realtime on that pCPU now keeps it
  (so a running owner is never displaced), else the guest whose QEMU
  started first (so ``check`` and the daemon agree, and a daemon restart
  changes nothing), then the name;
* a realtime vCPU and another guest's non-realtime claim on the same pCPU:
  the guest that started first keeps it.

The loser of each conflict gets a :class:`Conflict` naming both guests, the
vCPUs (or thread class) and the pCPU.  The planner then does not make a
losing vCPU realtime and keeps the loser's other threads off that pCPU where
their pinning leaves another CPU.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...model import RealtimeSpec


class ClaimRole(enum.Enum):
    REALTIME_VCPU = "realtime vCPU"
    VCPU = "non-realtime vCPU"
    EMULATOR = "emulator threads"
    IOTHREAD = "iothread"


@dataclass(frozen=True)
class CpuClaim:
    role: ClaimRole
    cpus: frozenset[int]
    index: int | None = None  # vCPU or iothread id

    @property
    def label(self) -> str:
        return self.role.value if self.index is None else f"{self.role.value} {self.index}"


@dataclass(frozen=True)
class GuestClaims:
    uuid: str
    name: str
    started: float  # QEMU start, seconds since boot: earlier claims first
    claims: tuple[CpuClaim, ...]
    # pCPUs where this guest's realtime vCPU is realtime right now.
    holding: frozenset[int] = frozenset()
    managed: bool = True  # rtagent tunes this guest (it is realtime)

    def rank(self, cpu: int, realtime: bool) -> tuple:
        incumbent = realtime and cpu in self.holding
        return (not incumbent, self.started, self.name, self.uuid)


@dataclass(frozen=True)
class Conflict:
    """``loser``'s ``claim`` wants pCPU ``cpu``, which realtime vCPU
    ``owner_vcpu`` of ``owner`` owns (or the reverse, for a realtime vCPU
    that came after another guest's non-realtime claim)."""

    cpu: int
    owner_uuid: str
    owner: str
    owner_claim: CpuClaim
    loser_uuid: str
    loser: str
    claim: CpuClaim
    loser_managed: bool = True

    @property
    def detail(self) -> str:
        if not self.loser_managed:
            outcome = "shares it (not a guest rtagent tunes: fix its pinning)"
        elif self.claim.role is ClaimRole.REALTIME_VCPU:
            outcome = "is not made realtime there"
        else:
            outcome = "is kept off it where its pinning allows"
        return (f"pCPU {self.cpu} belongs to {self.owner_claim.label} of guest {self.owner!r} (claimed first); "
                f"{self.claim.label} of guest {self.loser!r} {outcome}")

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "owner": self.owner, "owner_uuid": self.owner_uuid,
                "owner_thread": self.owner_claim.label, "domain": self.loser, "uuid": self.loser_uuid,
                "thread": self.claim.label, "detail": self.detail}


@dataclass(frozen=True)
class Ownership:
    owners: dict[int, tuple[str, CpuClaim]] = field(default_factory=dict)  # pCPU -> (uuid, claim)
    conflicts: tuple[Conflict, ...] = ()

    def lost_by(self, uuid: str) -> tuple[Conflict, ...]:
        return tuple(c for c in self.conflicts if c.loser_uuid == uuid)

    def owned_against(self, uuid: str) -> tuple[Conflict, ...]:
        """Conflicts where ``uuid`` owns the pCPU but the loser is not a
        guest rtagent tunes: its thread really shares the owner's pCPU."""
        return tuple(c for c in self.conflicts if c.owner_uuid == uuid and not c.loser_managed)

    def kept_off(self, uuid: str) -> frozenset[int]:
        """pCPUs ``uuid``'s threads must not use."""
        return frozenset(c.cpu for c in self.lost_by(uuid))

    def for_guest(self, uuid: str) -> tuple[Conflict, ...]:
        return self.lost_by(uuid) + self.owned_against(uuid)


def claims_of(spec: RealtimeSpec, started: float, holding: frozenset[int] = frozenset(),
              relevant: frozenset[int] | None = None) -> GuestClaims:
    """A guest's claims from its intent.  Only explicit pins count (an
    unpinned thread is the host partition's business); ``relevant`` limits
    them to the CPUs that can be owned (the host's realtime CPUs)."""
    out: list[CpuClaim] = []
    for v in spec.vcpus:
        if not v.cpus:
            continue
        role = ClaimRole.REALTIME_VCPU if spec.realtime and v.realtime else ClaimRole.VCPU
        out.append(CpuClaim(role, v.cpus, v.vcpu))
    if spec.emulator_cpus and spec.emulator_source in ("emulatorpin", "vcpu-cpuset"):
        out.append(CpuClaim(ClaimRole.EMULATOR, spec.emulator_cpus))
    out += [CpuClaim(ClaimRole.IOTHREAD, t.cpus, t.iothread) for t in spec.iothreads if t.cpus]
    if relevant is not None:
        out = [c for c in out if c.cpus & relevant]
    return GuestClaims(uuid=spec.uuid, name=spec.domain, started=started, claims=tuple(out), holding=holding,
                       managed=spec.realtime)


def _realtime_owners(guests: list[GuestClaims]) -> tuple[dict[int, tuple[GuestClaims, CpuClaim]], list[Conflict]]:
    by_cpu: dict[int, list[tuple[GuestClaims, CpuClaim]]] = {}
    for g in guests:
        for c in g.claims:
            if c.role is ClaimRole.REALTIME_VCPU and len(c.cpus) == 1:
                by_cpu.setdefault(next(iter(c.cpus)), []).append((g, c))
    owners, conflicts = {}, []
    for cpu, contenders in by_cpu.items():
        contenders.sort(key=lambda gc: gc[0].rank(cpu, True))
        owner = owners[cpu] = contenders[0]
        for g, c in contenders[1:]:
            if g.uuid != owner[0].uuid:  # within one guest: intent validation's job
                conflicts.append(_conflict(cpu, owner, (g, c)))
    return owners, conflicts


def _conflict(cpu: int, owner: tuple[GuestClaims, CpuClaim], loser: tuple[GuestClaims, CpuClaim]) -> Conflict:
    return Conflict(cpu=cpu, owner_uuid=owner[0].uuid, owner=owner[0].name, owner_claim=owner[1],
                    loser_uuid=loser[0].uuid, loser=loser[0].name, claim=loser[1], loser_managed=loser[0].managed)


def resolve(guests: Iterable[GuestClaims]) -> Ownership:
    """One owner per realtime pCPU and every conflict, host-wide."""
    guests = sorted(guests, key=lambda g: (g.started, g.name, g.uuid))
    owners, conflicts = _realtime_owners(guests)
    for g in guests:
        for c in g.claims:
            if c.role is ClaimRole.REALTIME_VCPU:
                continue
            for cpu in sorted(c.cpus & owners.keys()):
                og, oc = owners[cpu]
                if og.uuid == g.uuid:
                    continue
                if g.rank(cpu, False) < og.rank(cpu, False):
                    # The non-realtime claim came first: the realtime vCPU
                    # yields (and every other contender with it).
                    conflicts.append(_conflict(cpu, (g, c), (og, oc)))
                    del owners[cpu]
                else:
                    conflicts.append(_conflict(cpu, (og, oc), (g, c)))
    return Ownership(owners={cpu: (g.uuid, c) for cpu, (g, c) in owners.items()}, conflicts=tuple(conflicts))


class ClaimBook:
    """The claims of every guest seen, by UUID: what :func:`resolve` runs
    over.  Kept by whoever looks at more than one guest (the daemon's guest
    supervisor, a one-shot command); inspecting a guest never writes it."""

    def __init__(self, claims: Iterable[GuestClaims] = ()):
        self._claims: dict[str, GuestClaims] = {c.uuid: c for c in claims}
        self._seen: set[str] = set(self._claims)
        # resolve() over the book as recorded: a full check asks it once per
        # guest with the claims already in the book, and each resolve is
        # O(guests) — O(guests²) a full check without this (measured: a
        # quarter of the full check at 100 guests contending for one pCPU).
        self._resolved: Ownership | None = None

    def record(self, uuid: str, claims: GuestClaims | None) -> None:
        """What guest ``uuid`` claims now (None: nothing on a realtime CPU)."""
        self._seen.add(uuid)
        if self._claims.get(uuid) == claims:
            return
        self._resolved = None
        if claims is None:
            self._claims.pop(uuid, None)
        else:
            self._claims[uuid] = claims

    def drop(self, uuid: str) -> None:
        if self._claims.pop(uuid, None) is not None:
            self._resolved = None
        self._seen.discard(uuid)

    def __contains__(self, uuid: str) -> bool:
        """Seen (and recorded) at all, with or without claims."""
        return uuid in self._seen

    def others(self, uuid: str) -> list[GuestClaims]:
        return [c for u, c in self._claims.items() if u != uuid]

    def ownership_for(self, claims: GuestClaims) -> Ownership:
        if self._claims.get(claims.uuid) != claims:
            return resolve([*self.others(claims.uuid), claims])
        if self._resolved is None:
            self._resolved = resolve(self._claims.values())
        return self._resolved
