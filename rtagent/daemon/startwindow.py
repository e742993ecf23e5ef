"""The start window, measured: how long each realtime vCPU of a starting
guest executed before it became realtime.  Pure.

The kernel counts every thread's time on CPU (``schedstat`` field 1).  A
vCPU thread runs QEMU's own set-up (thread creation, ``KVM_CREATE_VCPU``)
before libvirt places it in its ``vcpuN`` cgroup — nobody, libvirt's own
``<vcpusched>`` included, can make it realtime before that moment, and the
guest cannot run yet (QEMU was started with its CPUs stopped).  So the
*unprotected* time of a start is the thread's time on CPU between that
placement and the moment SCHED_FIFO landed: 0 when it became realtime while
the CPUs were still stopped, the guest's first instructions as SCHED_OTHER
when it became realtime after libvirt resumed them.

When the daemon did not see the placement (it saw the guest's group appear
but missed the ``tasks`` write), the baseline is the thread's start: the
figure then also counts QEMU's set-up, an upper bound, and says so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any


class Baseline(str, enum.Enum):
    PLACEMENT = "placement"  # libvirt wrote the thread into vcpuN/tasks
    THREAD_START = "thread_start"  # not seen: counted from the thread's birth (an upper bound)


class Path(str, enum.Enum):
    EARLY = "early"  # made realtime while libvirt was still starting the guest
    EVENT = "event"  # made realtime by the reconcile after STARTED (or a retry)


@dataclass(frozen=True)
class VcpuStart:
    vcpu: int
    tid: int
    baseline: Baseline
    baseline_ns: int  # time on CPU at the baseline
    landed_ns: int | None = None  # time on CPU right after SCHED_FIFO/RR landed
    path: Path | None = None
    # The STARTED event had not arrived yet when it landed.
    before_started_event: bool | None = None

    @property
    def landed(self) -> bool:
        return self.landed_ns is not None

    @property
    def unprotected_ns(self) -> int | None:
        if self.landed_ns is None:
            return None
        return max(0, self.landed_ns - self.baseline_ns)

    def to_json(self) -> dict[str, Any]:
        ns = self.unprotected_ns
        return {"vcpu": self.vcpu, "tid": self.tid, "baseline": self.baseline.value,
                "unprotected_seconds": None if ns is None else ns / 1e9,
                "path": None if self.path is None else self.path.value,
                "before_started_event": self.before_started_event}


def placed(vcpu: int, tid: int, run_time_ns: int | None) -> VcpuStart:
    """libvirt placed the thread: the baseline (0 = unknown counts as birth)."""
    if run_time_ns is None:
        return VcpuStart(vcpu, tid, Baseline.THREAD_START, 0)
    return VcpuStart(vcpu, tid, Baseline.PLACEMENT, run_time_ns)


def landed(entry: VcpuStart | None, vcpu: int, tid: int, run_time_ns: int, path: Path,
           before_started_event: bool) -> VcpuStart:
    """FIFO landed on ``tid``.  Only the first landing of a start counts (a
    later re-tuning after drift is not the start window); a TID other than
    the placed one (QEMU restarted the thread) starts over from its birth."""
    if entry is not None and entry.landed:
        return entry
    if entry is None or entry.tid != tid:
        entry = VcpuStart(vcpu, tid, Baseline.THREAD_START, 0)
    return replace(entry, landed_ns=run_time_ns, path=path, before_started_event=before_started_event)
