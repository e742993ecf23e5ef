"""The project's vocabularies, one place each.

Every member is a :class:`enum.StrEnum`: it *is* its string, so JSON output,
the state file, metric labels and the status socket keep their spellings,
and code that still compares with a bare string keeps working while it is
ported.  New code names the member; a new kind of anything is one line here.
(Host check names live with their registry, ``rtagent/monitor/hostchecks.py``,
so that a new check is one file.)
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "Outcome", "ApplyOutcome", "Policy", "REALTIME_POLICIES", "Role", "ThreadKind", "Check",
    "DriftKind", "HostKind", "Severity", "KThreadAction",
]


class Outcome(StrEnum):
    """What happened to one change the kernel was asked to make (the one
    errno policy, :func:`rtagent.kernel.errors.outcome_of`, maps an
    ``OSError`` to the last three)."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"  # nothing to do: the kernel already had the value
    REFUSED = "refused"  # the kernel will not (managed IRQ, PF_NO_SETAFFINITY, EPERM)
    VANISHED = "vanished"  # the task/IRQ/cgroup is gone: normal, never an error
    ERROR = "error"


class ApplyOutcome(StrEnum):
    """Per-action outcome of the guest pipeline's executor (reported in
    ``rtagent apply`` and the daemon's log); a refusal or error of the kernel
    is ``failed`` there, with the errno in the detail."""

    CHANGED = "changed"
    VANISHED = "vanished"
    FAILED = "failed"
    SKIPPED = "skipped"
    DRY_RUN = "dry-run"


class Policy(StrEnum):
    """sched(7) policies by the names rtagent prints and accepts."""

    OTHER = "other"
    FIFO = "fifo"
    RR = "rr"
    BATCH = "batch"
    IDLE = "idle"
    DEADLINE = "deadline"
    EXT = "ext"


REALTIME_POLICIES = frozenset({Policy.FIFO, Policy.RR})


class Role(StrEnum):
    """What the host partition does with a thread of a guest."""

    VCPU = "vcpu"  # realtime policy and 1:1 pinning
    EMULATOR = "emulator"  # the emulator set
    KTHREAD = "kthread"  # per-VM kernel worker, handled explicitly


class ThreadKind(StrEnum):
    """Finer than :class:`Role`: for reports and for what can be changed."""

    VCPU = "vcpu"
    MAIN = "main"
    CALL_RCU = "call_rcu"
    IOTHREAD = "iothread"
    WORKER = "worker"
    VHOST = "vhost"
    KVM_NX_LPAGE = "kvm-nx-lpage"
    KVM_PIT = "kvm-pit"
    OTHER = "other"


class Check(StrEnum):
    """Names of a guest's violations (``Violation.check``)."""

    INTENT = "intent"
    PROCESS = "process"
    RT_BUDGET = "rt_budget"
    VCPU_COUNT = "vcpu_count"
    VCPU_PENDING = "vcpu_pending"
    PARTITION = "partition"
    MEMLOCK = "memlock"
    HUGEPAGES = "hugepages"
    VCPU_AFFINITY = "vcpu_affinity"
    VCPU_POLICY = "vcpu_policy"
    EMULATOR_AFFINITY = "emulator_affinity"
    EMULATOR_POLICY = "emulator_policy"
    KTHREAD_AFFINITY = "kthread_affinity"
    KTHREAD_POLICY = "kthread_policy"
    CPU_CONFLICT = "cpu_conflict"
    VCPUSCHED_REFUSED = "vcpusched_refused"


class DriftKind(StrEnum):
    """Kinds of a guest's drift corrections (``rtagent_drift_corrections_total``)."""

    VCPU_POLICY = "vcpu_policy"
    VCPU_AFFINITY = "vcpu_affinity"
    EMULATOR_AFFINITY = "emulator_affinity"
    EMULATOR_POLICY = "emulator_policy"
    KTHREAD_AFFINITY = "kthread_affinity"
    KTHREAD_POLICY = "kthread_policy"


class HostKind(StrEnum):
    """Kinds of host-partition items (actions, saved originals, corrections),
    in the order they are applied: an IRQ thread follows its IRQ, priorities
    last."""

    WORKQUEUE_CPUMASK = "workqueue_cpumask"
    IRQ_AFFINITY = "irq_affinity"
    KTHREAD_AFFINITY = "kthread_affinity"
    KTHREAD_PRIORITY = "kthread_priority"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class KThreadAction(StrEnum):
    """What the host partition does with one host kernel thread."""

    MOVE = "move"  # movable and allowed on a realtime CPU
    PRIORITY = "priority"  # per-CPU thread serving a realtime CPU: above the vCPUs
    IRQ_THREAD = "irq_thread"  # follows its IRQ's affinity
    GUEST = "guest"  # per-VM thread, the guest pipeline's
    LEFT_ALONE = "left_alone"  # pinned by the kernel
    OK = "ok"


class WatchMode(StrEnum):
    """``[daemon] drift_watch``: whether drift is seen through trace events."""

    AUTO = "auto"  # when tracefs and the events are there
    ON = "on"  # required: missing is a start-up error
    OFF = "off"  # poll every resync_interval_s


class WatchState(StrEnum):
    """The drift watch as ``rtagent status`` and /metrics report it."""

    RUNNING = "running"
    OFF = "off"  # configured off
    UNAVAILABLE = "unavailable"  # asked for (auto) but the kernel lacks it
    FAILED = "failed"  # ran, then its reader or instance failed: polling again
