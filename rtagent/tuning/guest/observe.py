"""Read-only view of a guest's QEMU process: its threads, their scheduling,
affinity, cgroup and scheduler statistics, the per-VM kernel threads, and the
process's memory locking.

Everything here only *reads files* under ``proc_root`` (and ``run_root`` for
libvirt's pid files), so the parsers are tested on fixture trees and the
same code runs on a host.  Threads come and go while we read: a thread that
vanishes between listing ``task/`` and reading its files (ENOENT, ESRCH) is
skipped and logged at debug — that is normal, not an error (DESIGN.md, "Code
style").  A *process* that vanishes raises :class:`ProcessGone`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ...cpulist import CpuListError, parse_cpulist
from . import vmthreads
from .vmthreads import PF_IO_WORKER, PF_KTHREAD, PF_USER_WORKER, WORKER_FLAGS

__all__ = [
    "ProcessGone",
    "ThreadInfo",
    "ProcessMemory",
    "Observed",
    "parse_stat",
    "read_thread",
    "classify",
    "find_kvm_pit",
    "observe_process",
    "read_memory",
    "find_qemu_pid",
    "list_qemu_processes",
    "parse_qemu_name",
    "POLICY_NAMES",
    "PF_KTHREAD",
    "PF_USER_WORKER",
    "PF_IO_WORKER",
    "PF_NO_SETAFFINITY",
]

log = logging.getLogger(__name__)

# sched(7) policy numbers as they appear in /proc/<pid>/stat field 41.
POLICY_NAMES = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline", 7: "ext"}

# include/linux/sched.h task flags, /proc/<pid>/stat field 9 (the worker
# flags live with the per-VM kernel-thread table, vmthreads.py).
PF_NO_SETAFFINITY = 0x04000000  # sched_setaffinity() refuses with EINVAL

KTHREADD_PID = 2

_VCPU_RE = re.compile(r"CPU (\d+)/(KVM|TCG)")

# Errors that mean "this task no longer exists".  Reading a file of an exited
# task gives ENOENT (FileNotFoundError) or ESRCH (ProcessLookupError).
_GONE = (FileNotFoundError, ProcessLookupError)


class ProcessGone(LookupError):
    """The QEMU process exited (or was never there)."""

    def __init__(self, pid: int, reason: str = "no such process"):
        self.pid = pid
        super().__init__(f"process {pid}: {reason}")


@dataclass(frozen=True)
class ThreadInfo:
    """One task as the kernel reports it.

    ``role`` is what the host partition cares about (DESIGN.md): ``vcpu``
    threads get realtime policy and 1:1 pinning, ``emulator`` threads go to the
    emulator set, ``kthread`` are per-VM kernel workers handled explicitly.
    ``kind`` is finer, for reports and for deciding what can be changed.
    """

    tid: int
    name: str  # comm, at most 15 characters for user threads
    role: str  # "vcpu" | "emulator" | "kthread"
    vcpu: int | None  # vCPU index for role "vcpu" (None for single-threaded TCG "ALL CPUs/TCG")
    kind: str  # "vcpu" "main" "call_rcu" "iothread" "worker" "vhost" "kvm-nx-lpage" "kvm-pit" "other"
    policy: str  # "other" "fifo" "rr" "batch" "idle" "deadline" ("ext", "unknown-N" if ever seen)
    priority: int  # rt_priority; 0 for non-realtime policies
    cpus: frozenset[int]  # Cpus_allowed_list
    cgroup_cpu: str | None  # path in the v1 "cpu" controller, else the v2 "0::" path
    run_time_ns: int | None  # schedstat field 1: time on CPU
    run_delay_ns: int | None  # schedstat field 2: time runnable but waiting for a CPU
    timeslices: int | None  # schedstat field 3: number of times run on a CPU
    voluntary_ctxt_switches: int
    nonvoluntary_ctxt_switches: int
    delayacct_blkio_ticks: int  # stat field 42, clock ticks (block I/O incl. swap-in, if delayacct is on)
    flags: int = 0  # stat field 9, PF_* task flags

    @property
    def realtime(self) -> bool:
        return self.policy in ("fifo", "rr")

    @property
    def no_setaffinity(self) -> bool:
        """The kernel refuses affinity changes for this task (PF_NO_SETAFFINITY)."""
        return bool(self.flags & PF_NO_SETAFFINITY)


@dataclass(frozen=True)
class ProcessMemory:
    """Memory facts from ``/proc/<pid>/status`` and ``/proc/<pid>/limits``;
    sizes in bytes, ``None`` limits mean unlimited."""

    vm_lck_bytes: int = 0
    vm_rss_bytes: int = 0
    hugetlb_bytes: int = 0
    memlock_soft: int | None = None
    memlock_hard: int | None = None
    swap_bytes: int = 0


@dataclass(frozen=True)
class Observed:
    """A QEMU process as observed at one moment."""

    pid: int
    threads: tuple[ThreadInfo, ...]  # tasks of the process, incl. in-process kernel workers
    kthreads: tuple[ThreadInfo, ...]  # separate per-VM kthreads: kvm-pit/<pid>, pre-6.4 vhost-<pid>
    memory: ProcessMemory
    cmdline: list[str]

    @property
    def vcpu_threads(self) -> dict[int, ThreadInfo]:
        """vCPU index → thread (threads without an index are left out)."""
        return {t.vcpu: t for t in self.threads if t.role == "vcpu" and t.vcpu is not None}

    @property
    def emulator_threads(self) -> tuple[ThreadInfo, ...]:
        return tuple(t for t in self.threads if t.role == "emulator")

    @property
    def vm_kthreads(self) -> tuple[ThreadInfo, ...]:
        """Every per-VM kernel worker: in-process ones (vhost, kvm-nx-lpage) and
        separate kthreads (kvm-pit, old vhost)."""
        return tuple(t for t in self.threads if t.role == "kthread") + self.kthreads

    def thread(self, tid: int) -> ThreadInfo | None:
        for t in self.threads + self.kthreads:
            if t.tid == tid:
                return t
        return None


# --------------------------------------------------------------------------
# file readers


def _read_text(path: str) -> str:
    """Read a whole /proc file.  Module-level so tests can inject races."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _pid_entries(proc_root: str) -> list[int]:
    try:
        names = os.listdir(proc_root)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def _task_ids(pid: int, proc_root: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(f"{proc_root}/{pid}/task") if n.isdigit())


def _status_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def _kb(value: str | None) -> int:
    """``"  1234 kB"`` → bytes; missing → 0 (kernel threads have no Vm* lines)."""
    if not value:
        return 0
    number, _, unit = value.partition(" ")
    n = int(number)
    return n * 1024 if unit.strip().lower() == "kb" else n


def parse_stat(text: str) -> tuple[str, list[str]]:
    """Split ``/proc/<pid>/stat`` into (comm, fields from field 3 on).

    comm sits in parentheses and may itself contain spaces and ``)``, so the
    split is at the *last* ``)``.  Field N of proc(5) is ``rest[N - 3]``.
    """
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError(f"malformed stat line: {text[:80]!r}")
    return text[open_paren + 1 : close_paren], text[close_paren + 1 :].split()


def _field(rest: list[str], n: int, default: int = 0) -> int:
    """proc(5) field number ``n`` (1-based, n >= 3) as int; old kernels have fewer fields."""
    i = n - 3
    return int(rest[i]) if i < len(rest) else default


def _cgroup_cpu(text: str) -> str | None:
    """The v1 ``cpu`` controller's path, else the unified (v2) path."""
    unified = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if "cpu" in controllers.split(","):
            return path
        if hier == "0" and controllers == "":
            unified = path
    return unified


def _policy_name(number: int) -> str:
    return POLICY_NAMES.get(number, f"unknown-{number}")


# --------------------------------------------------------------------------
# classification


def classify(name: str, tid: int, pid: int, flags: int = 0) -> tuple[str, int | None, str]:
    """(role, vcpu index, kind) of a thread of QEMU process ``pid``.

    Kernel workers living inside the QEMU process (vhost_task on kernels
    >= 6.4, kvm-nx-lpage-recovery) are recognised by the per-VM kernel-thread
    table (vmthreads.py), other workers by PF_USER_WORKER / PF_IO_WORKER /
    PF_KTHREAD.
    """
    m = _VCPU_RE.fullmatch(name)
    if m:
        return "vcpu", int(m.group(1)), "vcpu"
    if name == "ALL CPUs/TCG":  # single-threaded TCG: every vCPU in one thread
        return "vcpu", None, "vcpu"
    kind = vmthreads.kind_of(name, flags)
    if kind is not None:
        return "kthread", None, kind
    if flags & WORKER_FLAGS:
        return "kthread", None, "other"
    if tid == pid:
        return "emulator", None, "main"
    if name == "call_rcu":
        return "emulator", None, "call_rcu"
    if name.startswith("IO "):  # QEMU names iothreads "IO <id>" (e.g. "IO mon_iothread")
        return "emulator", None, "iothread"
    if name == "worker":  # QEMU's thread pool
        return "emulator", None, "worker"
    return "emulator", None, "other"


def read_thread(
    pid: int,
    tid: int,
    proc_root: str = "/proc",
    *,
    role: str | None = None,
    kind: str | None = None,
) -> ThreadInfo:
    """Read one task of process ``pid``.  Raises FileNotFoundError or
    ProcessLookupError when the task is gone.  ``role``/``kind`` override the
    classification (used for separate kthreads such as kvm-pit)."""
    base = f"{proc_root}/{pid}/task/{tid}"
    comm, rest = parse_stat(_read_text(f"{base}/stat"))
    status = _status_fields(_read_text(f"{base}/status"))
    try:
        cgroup = _cgroup_cpu(_read_text(f"{base}/cgroup"))
    except _GONE:
        if not os.path.isdir(base):
            raise
        cgroup = None
    try:
        sched = [int(x) for x in _read_text(f"{base}/schedstat").split()[:3]]
    except _GONE:
        if not os.path.isdir(base):
            raise
        sched = []  # kernel without CONFIG_SCHED_INFO: unknown, not zero
    run_time, run_delay, slices = sched if len(sched) == 3 else (None, None, None)

    flags = _field(rest, 9)
    # stat's comm is the raw name (split at the last ")"), the same string
    # /proc/.../comm shows; reading it from stat saves a file and a race.
    name = comm
    c_role, vcpu, c_kind = classify(name, tid, pid, flags)
    cpus_text = status.get("Cpus_allowed_list", "")
    try:
        cpus = parse_cpulist(cpus_text, allow_empty=True)
    except CpuListError:
        log.debug("task %d/%d: unparsable Cpus_allowed_list %r", pid, tid, cpus_text)
        cpus = frozenset()
    return ThreadInfo(
        tid=tid,
        name=name,
        role=role or c_role,
        vcpu=vcpu if (role or c_role) == "vcpu" else None,
        kind=kind or c_kind,
        policy=_policy_name(_field(rest, 41)),
        priority=_field(rest, 40),
        cpus=cpus,
        cgroup_cpu=cgroup,
        run_time_ns=run_time,
        run_delay_ns=run_delay,
        timeslices=slices,
        voluntary_ctxt_switches=int(status.get("voluntary_ctxt_switches", "0") or 0),
        nonvoluntary_ctxt_switches=int(status.get("nonvoluntary_ctxt_switches", "0") or 0),
        delayacct_blkio_ticks=_field(rest, 42),
        flags=flags,
    )


# --------------------------------------------------------------------------
# per-VM kernel threads


def _kthread_stat(pid: int, proc_root: str) -> tuple[str, list[str]] | None:
    try:
        return parse_stat(_read_text(f"{proc_root}/{pid}/stat"))
    except _GONE:
        return None


def find_kvm_pit(
    qemu_pid: int, proc_root: str = "/proc", *, tids: Iterable[int] | None = None
) -> list[ThreadInfo]:
    """The per-VM kthreads that are separate processes (the kinds of
    vmthreads.py with an owner): ``kvm-pit/<qemu_pid>`` and, on kernels
    before 6.4, ``vhost-<owner>`` (owner = the QEMU task that set up vhost:
    the main thread, or any of ``tids``).

    Only kernel threads qualify (PF_KTHREAD, or a child of kthreadd): a user
    process that happens to be called ``vhost-123`` is not one.
    """
    owners = {qemu_pid} | set(tids or ())
    found: list[ThreadInfo] = []
    for pid in _pid_entries(proc_root):
        try:
            comm = _read_text(f"{proc_root}/{pid}/comm").rstrip("\n")
        except OSError:
            continue
        kind = vmthreads.separate_kind(comm, qemu_pid, owners)
        if kind is None:
            continue
        st = _kthread_stat(pid, proc_root)
        if st is None:
            continue
        _, rest = st
        if not (_field(rest, 9) & PF_KTHREAD or _field(rest, 4) == KTHREADD_PID):
            continue
        try:
            found.append(read_thread(pid, pid, proc_root, role="kthread", kind=kind))
        except _GONE:
            log.debug("kthread %d (%s) vanished while reading", pid, comm)
    return found


# --------------------------------------------------------------------------
# process


def _parse_limit(value: str) -> int | None:
    return None if value == "unlimited" else int(value)


def read_memory(pid: int, proc_root: str = "/proc") -> ProcessMemory:
    """Memory facts of process ``pid`` (raises FileNotFoundError/ProcessLookupError if gone)."""
    status = _status_fields(_read_text(f"{proc_root}/{pid}/status"))
    soft = hard = None
    limits = _read_text(f"{proc_root}/{pid}/limits")
    for line in limits.splitlines():
        if line.startswith("Max locked memory"):
            parts = line[len("Max locked memory") :].split()
            if len(parts) >= 2:
                soft, hard = _parse_limit(parts[0]), _parse_limit(parts[1])
            break
    return ProcessMemory(
        vm_lck_bytes=_kb(status.get("VmLck")),
        vm_rss_bytes=_kb(status.get("VmRSS")),
        hugetlb_bytes=_kb(status.get("HugetlbPages")),
        memlock_soft=soft,
        memlock_hard=hard,
        swap_bytes=_kb(status.get("VmSwap")),
    )


def _read_cmdline(pid: int, proc_root: str) -> list[str]:
    raw = _read_bytes(f"{proc_root}/{pid}/cmdline")
    if not raw:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]


def observe_process(pid: int, proc_root: str = "/proc", *, with_kthreads: bool = True) -> Observed:
    """Everything rtagent needs to know about QEMU process ``pid``.

    Raises :class:`ProcessGone` if the process does not exist or is a zombie.
    Threads that vanish mid-read are left out.
    """
    try:
        status = _status_fields(_read_text(f"{proc_root}/{pid}/status"))
        cmdline = _read_cmdline(pid, proc_root)
        memory = read_memory(pid, proc_root)
        tids = _task_ids(pid, proc_root)
    except _GONE as e:
        raise ProcessGone(pid) from e
    tgid = status.get("Tgid")
    if tgid is not None and tgid.isdigit() and int(tgid) != pid:
        raise ValueError(f"{pid} is a thread of process {tgid}, not a process")

    threads: list[ThreadInfo] = []
    for tid in tids:
        try:
            threads.append(read_thread(pid, tid, proc_root))
        except _GONE:
            log.debug("thread %d of process %d vanished while reading", tid, pid)
    state = status.get("State", "")[:1]
    if state in ("Z", "X") and all(t.tid == pid for t in threads):
        raise ProcessGone(pid, "exited (zombie)")
    if not threads and not os.path.isdir(f"{proc_root}/{pid}"):
        raise ProcessGone(pid)

    kthreads: tuple[ThreadInfo, ...] = ()
    if with_kthreads:
        kthreads = tuple(find_kvm_pit(pid, proc_root, tids=tids))
    return Observed(pid=pid, threads=tuple(threads), kthreads=kthreads, memory=memory, cmdline=cmdline)


# --------------------------------------------------------------------------
# finding QEMU processes


def _qemu_opts(value: str) -> list[str]:
    """Split a QEMU option string at single commas (``,,`` is an escaped comma)."""
    parts, cur, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == ",":
            if value[i + 1 : i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_qemu_name(cmdline: list[str]) -> str | None:
    """The guest name from ``-name guest=NAME,...`` (or the old ``-name NAME``)."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg in ("-name", "--name"):
            opts = _qemu_opts(cmdline[i + 1])
            for j, opt in enumerate(opts):
                key, eq, val = opt.partition("=")
                if eq and key == "guest":
                    return val
                if not eq and j == 0:  # implied first key is "guest"
                    return opt
            return None
    return None


def _qemu_uuid(cmdline: list[str]) -> str | None:
    for i, arg in enumerate(cmdline[:-1]):
        if arg in ("-uuid", "--uuid"):
            return cmdline[i + 1].lower()
    return None


def _looks_like_qemu(pid: int, cmdline: list[str], proc_root: str) -> bool:
    """argv[0] or the process name says QEMU (qemu-system-*, qemu-kvm, kvm)."""
    if not cmdline:  # kernel thread or zombie
        return False
    exe = os.path.basename(cmdline[0])
    if "qemu" in exe or exe == "kvm":
        return True
    try:
        comm = _read_text(f"{proc_root}/{pid}/comm").strip()
    except OSError:
        return False
    return comm.startswith("qemu") or comm == "kvm"


def find_qemu_pid(
    name: str,
    uuid: str | None,
    run_root: str = "/run/libvirt/qemu",
    proc_root: str = "/proc",
) -> int | None:
    """The QEMU process of guest ``name``: libvirt's pid file, checked against
    the process's command line (a stale pid file may point at a reused pid),
    else a scan of /proc for ``-uuid <uuid>``."""
    want_uuid = uuid.lower() if uuid else None
    try:
        text = _read_text(f"{run_root}/{name}.pid").strip()
        pid = int(text) if text.isdigit() else None
    except OSError:
        pid = None
    if pid is not None:
        try:
            cmdline = _read_cmdline(pid, proc_root)
        except OSError:  # gone, or not readable: not ours to trust
            cmdline = []
        if _looks_like_qemu(pid, cmdline, proc_root) and (
            parse_qemu_name(cmdline) == name or (want_uuid is not None and _qemu_uuid(cmdline) == want_uuid)
        ):
            return pid
        log.debug("pid file of %s names %d, which is not its QEMU", name, pid)
    if want_uuid:
        for qpid, quuid in list_qemu_processes(proc_root).items():
            if quuid == want_uuid:
                return qpid
    return None


def list_qemu_processes(proc_root: str = "/proc") -> dict[int, str]:
    """pid → uuid (lower case, from ``-uuid``) of every QEMU process."""
    out: dict[int, str] = {}
    for pid in _pid_entries(proc_root):
        try:
            cmdline = _read_cmdline(pid, proc_root)
        except OSError:
            continue
        uuid = _qemu_uuid(cmdline)
        if uuid and _looks_like_qemu(pid, cmdline, proc_root):
            out[pid] = uuid
    return out
