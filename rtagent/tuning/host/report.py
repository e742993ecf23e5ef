"""What enforcing or restoring the host partition did, item by item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...config import Partition
from ...kernel.irqbalance import IrqbalanceInfo
from ...vocab import HostKind, Outcome

__all__ = ["LeftAlone", "ItemResult", "HostReport"]


@dataclass(frozen=True)
class LeftAlone:
    """Allowed on a realtime CPU, deliberately not touched, and why."""

    kind: str  # "kthread" | "irq"
    item: str
    cpus: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "item": self.item, "cpus": self.cpus, "reason": self.reason}


@dataclass(frozen=True)
class ItemResult:
    kind: HostKind | str  # a HostKind; "?" for a malformed saved entry
    key: str
    item: str
    before: str
    after: str
    status: Outcome
    detail: str = ""
    correction: bool = False  # a change to an item already brought into line: drift

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind), "item": self.item, "before": self.before, "after": self.after,
            "status": str(self.status), "detail": self.detail, "correction": self.correction,
        }


@dataclass
class HostReport:
    """``ok`` is False only for errors: refusals (managed IRQs, kthreads that
    reject a new affinity) and vanished threads are normal.  ``conflicts``
    lists IRQs corrected more than ``host_tuning.irq_conflict_threshold``
    times within ``irq_conflict_window_s`` (usually irqbalance moving them
    back; ``irqbalance`` then says whether it runs and what it bans)."""

    operation: str  # "enforce" | "restore"
    partition: Partition
    results: list[ItemResult] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    state_file: str = ""
    irqbalance: IrqbalanceInfo | None = None

    def _by(self, status: Outcome) -> list[ItemResult]:
        return [r for r in self.results if r.status == status]

    @property
    def changed(self) -> list[ItemResult]:
        return self._by(Outcome.CHANGED)

    @property
    def refused(self) -> list[ItemResult]:
        return self._by(Outcome.REFUSED)

    @property
    def vanished(self) -> list[ItemResult]:
        return self._by(Outcome.VANISHED)

    @property
    def failed(self) -> list[ItemResult]:
        return self._by(Outcome.ERROR)

    @property
    def counts(self) -> dict[str, int]:
        out = {str(s): 0 for s in Outcome}
        for r in self.results:
            out[str(r.status)] += 1
        out["errors"] = out.pop("error") + len(self.errors)
        out["left_alone"] = len(self.left_alone)
        out["conflicts"] = len(self.conflicts)
        return out

    @property
    def changes_by_kind(self) -> dict[str, int]:
        out = {str(k): 0 for k in HostKind}
        for r in self.changed:
            out[str(r.kind)] += 1
        return out

    @property
    def corrections_by_kind(self) -> dict[str, int]:
        out = {str(k): 0 for k in HostKind}
        for r in self.changed:
            if r.correction:
                out[str(r.kind)] += 1
        return out

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "ok": self.ok,
            "partition": self.partition.to_json(),
            "state_file": self.state_file,
            "counts": self.counts,
            "changes_by_kind": self.changes_by_kind,
            "corrections_by_kind": self.corrections_by_kind,
            "results": [r.to_json() for r in self.results],
            "left_alone": [a.to_json() for a in self.left_alone],
            "conflicts": self.conflicts,
            "errors": self.errors,
            "irqbalance": None if self.irqbalance is None else self.irqbalance.to_json(),
        }
