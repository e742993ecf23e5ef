"""The one vCPU priority the host partition ranks per-CPU kernel threads
against: the highest FIFO/RR priority of any realtime vCPU of the running
guests, whatever its intent came from (rtagent metadata, libvirt's
``<vcpusched>``, a config rule).  ``rtagent host apply`` and the daemon
both call :func:`vcpu_priority`, so ``ksoftirqd``/``rcuc`` always end up
above every realtime vCPU (the starvation the ladder exists to prevent).
"""

from __future__ import annotations

from collections.abc import Iterable

from ...model import RealtimeSpec

__all__ = ["vcpu_priority"]


def vcpu_priority(specs: Iterable[RealtimeSpec | None], default: int) -> int:
    """The highest priority of the realtime vCPUs of valid realtime ``specs``;
    ``default`` (``realtime.default_priority``) when there are none."""
    prios = [v.priority for s in specs if s is not None and s.realtime and s.valid for v in s.realtime_vcpus]
    return max(prios, default=default)
