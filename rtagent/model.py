"""Plain data shared by intent, observation, planning and reporting.

Nothing here does I/O.  The intent module produces a :class:`RealtimeSpec`
from a domain XML; the tuning engine diffs it against what it observes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cpulist import format_cpulist

# Policy names as used in JSON, config and XML ("other" = SCHED_OTHER).
REALTIME_POLICIES = frozenset({"fifo", "rr"})


@dataclass(frozen=True)
class VcpuSpec:
    vcpu: int
    realtime: bool
    policy: str  # "fifo" | "rr" | "other"
    priority: int  # 0 for non-realtime
    cpus: frozenset[int]  # pinning; empty = not pinned

    def to_json(self) -> dict[str, Any]:
        return {
            "vcpu": self.vcpu,
            "realtime": self.realtime,
            "policy": self.policy,
            "priority": self.priority,
            "cpus": format_cpulist(self.cpus),
        }


@dataclass(frozen=True)
class IOThreadSpec:
    iothread: int
    cpus: frozenset[int]

    def to_json(self) -> dict[str, Any]:
        return {"iothread": self.iothread, "cpus": format_cpulist(self.cpus)}


@dataclass(frozen=True)
class MemorySpec:
    size_bytes: int = 0
    locked: bool = False
    hugepages: bool = False
    page_size_bytes: int | None = None
    nosharepages: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "size_bytes": self.size_bytes,
            "locked": self.locked,
            "hugepages": self.hugepages,
            "page_size_bytes": self.page_size_bytes,
            "nosharepages": self.nosharepages,
        }


@dataclass(frozen=True)
class RealtimeSpec:
    """What a domain should look like on the host: the output of intent parsing
    and validation.  ``valid`` is False when ``errors`` is non-empty; then
    nothing may be applied for this domain."""

    domain: str
    uuid: str = ""
    realtime: bool = False
    source: str | None = None  # "metadata" | "vcpusched" | "rule" | None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    vcpus: tuple[VcpuSpec, ...] = ()
    emulator_cpus: frozenset[int] = frozenset()
    iothreads: tuple[IOThreadSpec, ...] = ()
    memory: MemorySpec = field(default_factory=MemorySpec)
    virt_type: str = "kvm"  # domain type: "kvm" or "qemu" (TCG)
    # Where ``emulator_cpus`` came from: "emulatorpin", "nonrealtime-vcpus"
    # (Nova's rule), "vcpu-cpuset", or "unpinned" (empty set = any host CPU).
    emulator_source: str = "unpinned"
    # Which rule or element supplied the intent, for operators ("rule[0]").
    source_detail: str | None = None
    flavor: str | None = None  # Nova flavor name from <nova:flavor name=…>
    # The XML has a realtime <vcpusched>, which libvirt applies at start
    # (whatever rtagent's intent says); refused on hosts with RT group scheduling.
    libvirt_vcpusched: bool = False
    # The domain's <metadata> as canonical XML ("" without one): every intent
    # input that a live re-pin leaves alone (intent.metadata_key).
    metadata_key: str = ""

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def realtime_vcpus(self) -> tuple[VcpuSpec, ...]:
        return tuple(v for v in self.vcpus if v.realtime)

    @property
    def nonrealtime_vcpus(self) -> tuple[VcpuSpec, ...]:
        return tuple(v for v in self.vcpus if not v.realtime)

    def vcpu(self, index: int) -> VcpuSpec | None:
        for v in self.vcpus:
            if v.vcpu == index:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "uuid": self.uuid,
            "realtime": self.realtime,
            "source": self.source,
            "valid": self.valid,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "vcpus": [v.to_json() for v in self.vcpus],
            "emulator": {"cpus": format_cpulist(self.emulator_cpus), "source": self.emulator_source},
            "iothreads": [t.to_json() for t in self.iothreads],
            "memory": self.memory.to_json(),
            "source_detail": self.source_detail,
            "flavor": self.flavor,
            "libvirt_vcpusched": self.libvirt_vcpusched,
            "virt_type": self.virt_type,
        }


@dataclass(frozen=True)
class Violation:
    """One way a guest is not as its intent says.  ``check`` is a stable
    identifier (docs/checks.md) for metrics, alerts and ``--json``; ``detail``
    is one line a person reads."""

    check: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "detail": self.detail}
