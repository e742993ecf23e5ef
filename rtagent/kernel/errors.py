"""The one errno → outcome policy.

A write to the kernel either worked, or the object is gone (ESRCH/ENOENT:
the thread exited, the IRQ or cgroup was removed — normal, logged at
debug), or the kernel will not do it (EIO for a managed IRQ, EINVAL for a
``PF_NO_SETAFFINITY`` thread or a rejected mask, EPERM/EACCES/EROFS), or
something is really wrong.  tuned's scheduler plugin draws the same lines.
"""

from __future__ import annotations

import errno

from ..vocab import Outcome

__all__ = ["GONE", "GONE_ERRNOS", "REFUSAL_ERRNOS", "outcome_of", "is_gone", "describe", "refusal_reason"]

GONE_ERRNOS = frozenset({errno.ESRCH, errno.ENOENT})
REFUSAL_ERRNOS = frozenset({errno.EIO, errno.EPERM, errno.EINVAL, errno.EACCES, errno.EROFS})
# What reading a file of a task that exited raises.
GONE = (FileNotFoundError, ProcessLookupError)


def is_gone(err: OSError) -> bool:
    return isinstance(err, GONE) or err.errno in GONE_ERRNOS


def outcome_of(err: OSError) -> Outcome:
    """``VANISHED``, ``REFUSED`` or ``ERROR`` for a failed change."""
    if is_gone(err):
        return Outcome.VANISHED
    if err.errno in REFUSAL_ERRNOS:
        return Outcome.REFUSED
    return Outcome.ERROR


def describe(err: OSError) -> str:
    """``"EINVAL: Invalid argument"``: the errno's name and text."""
    name = errno.errorcode.get(err.errno or 0, str(err.errno))
    return f"{name}: {err.strerror or err}"


def refusal_reason(err: OSError) -> str:
    """Why the kernel refused an IRQ affinity change, for an operator."""
    if err.errno == errno.EIO:
        return "kernel refused (EIO): managed IRQ, its affinity is set by the kernel"
    return f"kernel refused ({errno.errorcode.get(err.errno or 0, err.errno)}): {err.strerror}"
