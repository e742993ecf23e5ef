"""The kernel floor: the only code that touches /proc, /sys, cgroupfs or the
scheduler syscalls.

Make one :class:`Kernel` (``Kernel()`` for the host, ``Kernel(proc=…,
sys=…)`` over a fixture tree) and hand it down; everything above works on
the typed values its readers return and never builds a path.  Failures of a
write or syscall map to one outcome vocabulary by one policy
(:func:`outcome_of`).  Modules: ``tasks`` (stat/status/flags/policies,
scheduler syscalls), ``cgroups`` (v1 and v2 layout, RT budget files),
``irqs``, ``workqueues``, ``cpus`` (topology, boot parameters, sysctls),
``procconn`` (thread birth events); others add theirs beside them.
"""

from .errors import outcome_of
from .root import Kernel

__all__ = ["Kernel", "outcome_of"]
