"""Will libvirt's own ``<vcpusched>`` be refused on this host?

With RT group scheduling (``CONFIG_RT_GROUP_SCHED``) and a finite
``kernel.sched_rt_runtime_us``, the kernel refuses SCHED_FIFO/RR to a thread
whose cgroup has ``cpu.rt_runtime_us`` 0, and libvirt creates every guest's
``vcpuN`` cgroups with 0.  libvirt applies ``<vcpusched>`` while it starts
the guest, before anyone could grant a budget, so ``virsh start`` fails
with "Cannot set scheduler parameters … Operation not permitted".  rtagent's
metadata element has no such problem: rtagent grants the budget, then sets
the policy.
"""

from __future__ import annotations

from ...kernel import Kernel
from ...model import RealtimeSpec

FIXES = ("set kernel.sched_rt_runtime_us = -1 (lifts the kernel's zero-budget check; "
         "config/sysctl.d/90-rtagent.conf), or replace <vcpusched> with rtagent's metadata element "
         "<rt:realtime xmlns:rt='urn:rtagent:realtime:1' mask='…' priority='…'/> (rtagent grants the "
         "budget before it sets the policy)")


def host_refuses(kernel: Kernel) -> str | None:
    """Why this host refuses libvirt's ``<vcpusched>``, or None if it does not."""
    tree = kernel.cgroups.rt_tree()
    if tree is None:
        return None
    runtime = kernel.cpus.sysctl("kernel.sched_rt_runtime_us")
    if runtime is None or runtime < 0:
        return None
    return (f"RT group scheduling is on (cgroup {tree.version}) with kernel.sched_rt_runtime_us = {runtime}, "
            "and libvirt creates the guest's vcpuN cgroups with cpu.rt_runtime_us 0")


def refusal(spec: RealtimeSpec, host_reason: str | None) -> str | None:
    """The message for a guest whose XML has a realtime ``<vcpusched>``, on a
    host that refuses it (``host_reason`` from :func:`host_refuses`)."""
    if host_reason is None or not spec.libvirt_vcpusched:
        return None
    return (f"domain {spec.domain!r}: libvirt's own <vcpusched> will be refused on this host ({host_reason}): "
            "`virsh start` fails with 'Cannot set scheduler parameters … Operation not permitted' "
            "(rtagent's start window, granting vcpuN its budget as the group appears, sometimes wins "
            f"the race with libvirt's scheduler call; do not rely on it). Fix: {FIXES}")
