"""Least privilege: check what the daemon needs at start, then drop the rest.

rtagent runs as root because the kernel ties some of its writes to uid 0
(moving another process's thread between cgroup v1 groups checks the
writer's euid), but it needs only a few *capabilities*:

* ``CAP_SYS_NICE`` — ``sched_setscheduler``/``sched_setaffinity`` on QEMU
  and kernel threads (required: without it nothing can be tuned);
* ``CAP_NET_ADMIN`` — subscribing to the proc connector (cn_proc) multicast
  group (optional: without it new threads are tuned at the next resync), and
  taskstats for the scrape's vCPU counters (without it they are read from
  ``/proc``, at more CPU per scrape);
* ``CAP_CHOWN`` — only when ``status.group`` is a group the daemon is not a
  member of (the status socket is chowned to it once, at start).

Files it writes are root-owned, so uid 0 needs no ``CAP_DAC_OVERRIDE``; what
can still stop the writes is a read-only mount (systemd's ``ProtectSystem=``
without the matching ``ReadWritePaths=``), which :func:`check` finds by
opening each file for writing (nothing is written).

:func:`enforce` runs before the daemon starts any thread (capabilities are
per thread; threads inherit them at creation): it checks, then limits the
bounding, permitted, effective and inheritable sets to what is needed, so
that neither the daemon nor anything it could ever exec holds more.
"""

from __future__ import annotations

import grp
import logging
import os
from dataclasses import dataclass, field

from .config import Config
from .errors import CapabilityError
from .kernel import Kernel
from .kernel.fs import write_denied

log = logging.getLogger(__name__)

# Capability -> what rtagent uses it for (the operator reads this).
PURPOSE = {
    "CAP_SYS_NICE": "setting SCHED_FIFO/SCHED_RR and CPU affinity of QEMU and kernel threads "
                    "(sched_setscheduler, sched_setaffinity)",
    "CAP_NET_ADMIN": "the proc connector (cn_proc), which reports new QEMU threads as they are born",
    "CAP_CHOWN": "giving the status socket to status.group",
}


@dataclass
class PrivilegeReport:
    keep: list[str] = field(default_factory=list)  # capabilities kept, e.g. "CAP_SYS_NICE"
    missing: list[str] = field(default_factory=list)  # optional ones that are absent
    warnings: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    proc_connector: bool = True  # False when CAP_NET_ADMIN is missing


def _mod():
    import prctl  # python-prctl; imported late so the module loads without it

    return prctl


def has_capability(name: str) -> bool:
    """``name`` ("CAP_SYS_NICE") in this thread's effective set."""
    return bool(getattr(_mod().cap_effective, name[4:].lower()))


def _cap_last() -> int:
    last = Kernel().cpus.sysctl("kernel.cap_last_cap")
    return _mod().CAP_LAST_CAP if last is None else last


def _cap_number(name: str) -> int:
    return getattr(_mod(), name)


def _cap_name(number: int) -> str:
    for name in _mod().ALL_CAP_NAMES:
        if name != "last_cap" and _cap_number("CAP_" + name.upper()) == number:
            return "CAP_" + name.upper()
    return f"capability {number}"


def _needs_chown(group: str) -> bool:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return False  # StatusServer reports the unknown group itself
    return gid != os.getegid() and gid not in os.getgroups()


def check(config: Config, kernel: Kernel | None = None) -> PrivilegeReport:
    """What the daemon needs, and whether it has it.

    Raises :class:`CapabilityError` naming the capability (or file) and what
    it is for when something required is missing.
    """

    report = PrivilegeReport()
    if not has_capability("CAP_SYS_NICE"):
        raise CapabilityError(f"missing capability CAP_SYS_NICE: needed for {PURPOSE['CAP_SYS_NICE']}; "
                              "run rtagent as root with CAP_SYS_NICE in its bounding set "
                              "(systemd: CapabilityBoundingSet=)")
    report.keep.append("CAP_SYS_NICE")
    if config.daemon.proc_connector:
        if has_capability("CAP_NET_ADMIN"):
            report.keep.append("CAP_NET_ADMIN")
        else:
            report.proc_connector = False
            report.missing.append("CAP_NET_ADMIN")
            report.warnings.append(f"missing capability CAP_NET_ADMIN: needed for {PURPOSE['CAP_NET_ADMIN']}; "
                                   "proc connector disabled, new threads are tuned at the next resync")
    if _needs_chown(config.status.group):
        if not has_capability("CAP_CHOWN"):
            raise CapabilityError(
                f"missing capability CAP_CHOWN: needed for {PURPOSE['CAP_CHOWN']} "
                f"(status.group = {config.status.group!r} is not a group of the daemon; add the capability "
                "or make the daemon a member of that group, e.g. systemd SupplementaryGroups=)")
        report.keep.append("CAP_CHOWN")

    kernel = kernel or Kernel()
    tree = kernel.cgroups.rt_tree()
    if tree is not None:
        path = tree.file("/")
        why = write_denied(path)
        if why is not None:
            raise CapabilityError(f"cannot write {path}: {why}; needed to grant RT group budget to vCPU "
                                  "cgroups (cgroup v1 RT group scheduling: without it no vCPU can be "
                                  "SCHED_FIFO); systemd: ReadWritePaths=/sys/fs/cgroup")
    ht = config.host_tuning
    partition = config.partition
    if partition is not None and partition.realtime:
        optional = []
        if ht.irqs:
            optional.append((kernel.irqs.default_affinity_path(),
                             "moving IRQs off the realtime CPUs (systemd: ReadWritePaths=/proc/irq)"))
        if ht.workqueues:
            optional.append((kernel.workqueues.path_of(""),
                             "moving unbound workqueues off the realtime CPUs "
                             "(systemd: ReadWritePaths=/sys/devices/virtual/workqueue)"))
        for path, what in optional:
            why = write_denied(path)
            if why is not None:
                report.warnings.append(f"cannot write {path}: {why}; needed for {what}")
    return report


def _in_bounding(number: int) -> bool:
    import _prctl  # python-prctl's C module: reads the bounding set by number

    try:
        return bool(_prctl.prctl(_prctl.PR_CAPBSET_READ, number))
    except (OSError, ValueError):
        return False


def _clear_ambient() -> None:
    """PR_CAP_AMBIENT_CLEAR_ALL (python-prctl has no ambient API)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL; EINVAL on old kernels is fine


def drop_unneeded(keep: list[str]) -> list[str]:
    """Limit the bounding, effective, permitted and inheritable sets (and the
    ambient set) of the calling thread to ``keep``; returns what was dropped
    from the bounding set.  Threads started afterwards inherit the result."""
    prctl = _mod()
    keep_numbers = {_cap_number(name) for name in keep}
    dropped = []
    can_setpcap = has_capability("CAP_SETPCAP")
    for number in range(_cap_last() + 1):
        if number in keep_numbers:
            continue
        if not _in_bounding(number):
            continue
        if not can_setpcap:
            continue  # only CAP_SETPCAP may shrink the bounding set; the others still go below
        try:
            prctl.capbset.drop(number)
            dropped.append(_cap_name(number))
        except OSError as err:  # pragma: no cover - CAP_SETPCAP was checked
            log.debug("cannot drop %s from the bounding set: %s", _cap_name(number), err)
    names = [n[4:].lower() for n in keep]
    # Effective before permitted: the kernel refuses an effective set that is
    # not a subset of the permitted one.
    prctl.cap_effective.limit(*names)
    prctl.cap_permitted.limit(*names)
    prctl.cap_inheritable.limit()
    _clear_ambient()
    return dropped


def enforce(config: Config, kernel: Kernel | None = None) -> PrivilegeReport:
    """:func:`check`, log the warnings, then :func:`drop_unneeded`.  Call it
    before any thread is started."""
    kernel = kernel or Kernel()
    report = check(config, kernel)
    for w in report.warnings:
        log.warning("%s", w)
    others = len(kernel.tasks.tids_of_self()) - 1
    if others > 0:
        log.warning("dropping capabilities with %d other thread(s) running: they keep theirs", others)
    report.dropped = drop_unneeded(report.keep)
    log.info("capabilities kept: %s; %d dropped from the bounding set", ", ".join(report.keep),
             len(report.dropped))
    return report
