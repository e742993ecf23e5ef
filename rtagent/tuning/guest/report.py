"""What one look at a guest found: its intent, its threads against their
plan, the violations and the changes made.  Plain data (no I/O), so the state
store, the status socket and the metrics can hold it without the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...cpulist import format_cpulist
from ...model import RealtimeSpec, Violation
from .apply import Result
from .claims import Conflict, GuestClaims
from .observe import Observed
from .plan import ThreadPlan


@dataclass
class DomainReport:
    name: str
    uuid: str
    spec: RealtimeSpec
    pid: int | None = None
    observed: Observed | None = None
    threads: list[ThreadPlan] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    changes: list[Result] = field(default_factory=list)
    observed_at: float = 0.0
    # The guest was realtime under rtagent and its intent was withdrawn: its
    # realtime threads are planned back to SCHED_OTHER (it stays tracked).
    withdrawn: bool = False
    # cpu-controller cgroups the plan needs RT budget for.
    realtime_cgroups: frozenset[str] = frozenset()
    # The pCPUs this guest claims (for host-wide ownership), and the
    # conflicts it is part of: as the loser, or as the owner of a pCPU an
    # untuned guest shares.
    claims: GuestClaims | None = None
    conflicts: tuple[Conflict, ...] = ()

    @property
    def realtime(self) -> bool:
        return self.spec.realtime

    @property
    def compliant(self) -> bool:
        """A guest without realtime intent has nothing to comply with."""
        return not self.violations

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.changes if r.outcome == "failed"]

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": self.name,
            "uuid": self.uuid,
            "pid": self.pid,
            "realtime": spec.realtime,
            "withdrawn": self.withdrawn,
            "source": spec.source,
            "valid": spec.valid,
            "compliant": self.compliant,
            "realtime_vcpus": format_cpulist(v.vcpu for v in spec.realtime_vcpus),
            "errors": list(spec.errors),
            "warnings": list(spec.warnings),
            "violations": [v.to_json() for v in self.violations],
            "conflicts": [c.to_json() for c in self.conflicts],
            "threads": [thread_row(tp) for tp in self.threads],
            "changes": [r.to_json() for r in self.changes],
            "memory": None if self.observed is None else {
                "required_bytes": spec.memory.size_bytes,
                "locked_bytes": self.observed.memory.vm_lck_bytes,
                "hugetlb_bytes": self.observed.memory.hugetlb_bytes,
                "memlock_hard": self.observed.memory.memlock_hard,
            },
        }


def thread_row(tp: ThreadPlan) -> dict[str, Any]:
    t = tp.thread
    return {
        "tid": t.tid,
        "name": t.name,
        "role": t.role,
        "kind": t.kind,
        "vcpu": t.vcpu,
        "policy": t.policy,
        "priority": t.priority,
        "cpus": format_cpulist(t.cpus),
        "want": tp.want.to_json(),
        "ok": tp.ok,
        "run_delay_ns": t.run_delay_ns,
        "nonvoluntary_ctxt_switches": t.nonvoluntary_ctxt_switches,
    }
