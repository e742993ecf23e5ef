"""Interference accounting: who ran on a realtime CPU, and for how long.

Pure: fed decoded trace events of one CPU in time order (``Switch``,
``IntrEnter``/``IntrExit``), it charges every nanosecond between two events to
whatever was on top of the CPU at that moment — the current task, or the hard
IRQ / softirq that interrupted it.  Time of the CPU's *owner* (the realtime
vCPU thread pinned there) and of the idle task is not interference; anything
else is, with a kind (:class:`Kind`) and a bounded ``source`` name.

While an owner is runnable but not running (preempted), or running but under
an interrupt, the foreign time is also charged to that owner as
"preempted while runnable", by kind.

Bounds (so a hostile workload cannot grow memory or label cardinality):
``MAX_SOURCES`` distinct (kind, source) keys per CPU in the accountant (the
rest fold into ``(kind, "other")``), and :class:`StickyTop` exports at most
``top_n`` sources per CPU (the recent top), the rest as ``other`` —
monotonic counters either way (see :class:`StickyTop`).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

MAX_SOURCES = 256
MAX_DEPTH = 8          # nested interrupt contexts kept; deeper means lost exits
OTHER = "other"


class Kind(str, enum.Enum):
    TASK = "task"          # a host user process
    KTHREAD = "kthread"    # a kernel thread
    GUEST = "guest"        # a thread of another guest's QEMU
    IRQ = "irq"            # hard interrupt (device IRQ or a system vector: local timer, IPIs)
    SOFTIRQ = "softirq"


class TaskRole(enum.Enum):
    IDLE = "idle"
    OWNER = "owner"
    FOREIGN = "foreign"


# ---------------------------------------------------------------------------
# events: plain tuples, one per context switch and interrupt of a realtime CPU
# (the hot path: a tuple costs a tenth of an object), made by the decoder or
# by the constructors below.  ``pid`` is the event's ``common_pid``: the task
# that was current on the CPU when the event fired (for a switch: prev).

SWITCH, ENTER, EXIT, LOST = 0, 1, 2, 3
UNKNOWN_PID = -1

# (ts, SWITCH, prev_pid, prev_state, next_pid, next_comm, prev_comm)
# (ts, ENTER | EXIT, pid, kind, source)
# (ts, LOST)
Event = tuple


def Switch(ts: int, prev_pid: int, prev_state: int, next_pid: int, next_comm: str,  # noqa: N802
           prev_comm: str = "") -> Event:
    """``prev_state``: runnable when the low state bits are 0."""
    return (ts, SWITCH, prev_pid, prev_state, next_pid, next_comm, prev_comm)


def IntrEnter(ts: int, kind: Kind, source: str, pid: int = UNKNOWN_PID) -> Event:  # noqa: N802
    """A hard IRQ / system vector (IRQ) or softirq (SOFTIRQ) begins."""
    return (ts, ENTER, pid, kind, source)


def IntrExit(ts: int, kind: Kind, source: str, pid: int = UNKNOWN_PID) -> Event:  # noqa: N802
    return (ts, EXIT, pid, kind, source)


def Lost(ts: int) -> Event:  # noqa: N802
    """The kernel dropped events before ``ts``: the CPU's state is unknown
    until an event names the current task again."""
    return (ts, LOST)


def runnable(prev_state: int) -> bool:
    # The low byte holds TASK_* sleep states; 0 is TASK_RUNNING, and the
    # preemption marker (TASK_REPORT_MAX, 0x100 on ≥ 4.14) sits above it.
    return prev_state & 0xFF == 0


_PERCPU_SUFFIX = re.compile(r"/[^/]*\d[^/]*$")
_THREADED_IRQ = re.compile(r"^irq/\d+-(.+)$")
_DIGITS = re.compile(r"\d+")


def fold_comm(comm: str) -> str:
    """A comm as a bounded label: the per-CPU / numeric part folded.

    ``kworker/1:2H`` → ``kworker``, ``kworker/u8:0`` → ``kworker/u``
    (unbound), ``ksoftirqd/1`` → ``ksoftirqd``,
    ``irq/24-eth0`` → ``irq/eth0`` (the action name), ``CPU 1/KVM`` → ``CPU N/KVM``,
    ``worker12`` → ``workerN``.
    """
    comm = comm.strip() or "?"
    m = _THREADED_IRQ.match(comm)
    if m:
        return "irq/" + m[1]   # the action name, as hard IRQs are labelled
    if comm.startswith("kworker/u"):
        # Unbound workers are fixed differently (the workqueue cpumask) from
        # a CPU's own bound kworkers: keep them apart.
        return "kworker/u"
    if "/" in comm:
        folded = _PERCPU_SUFFIX.sub("", comm)
        if folded:
            comm = folded
    return _DIGITS.sub("N", comm)


# ---------------------------------------------------------------------------
# one CPU


@dataclass
class Tally:
    ns: int = 0
    count: int = 0


@dataclass(frozen=True, slots=True)
class _Ctx:
    role: TaskRole
    kind: Kind | None
    source: str
    pid: int = -1
    comm: str = ""
    tally: Tally | None = None     # where its time goes (None: idle, owner)


Classifier = Callable[[int, str], tuple[Kind, str]]


class CpuAccount:
    """The accountant of one CPU.  ``owners`` are the tids whose time is not
    interference (the realtime vCPU pinned here); ``classify(pid, comm)``
    gives a foreign task's kind and source (``comm`` is ``""`` when no trace
    event named it: the classifier looks it up).

    The current task is taken from *every* event (its ``common_pid``), not
    from context switches alone: a kernel may leave switches out of the
    trace (this machine's leaves out every switch out of CPU 1's idle task,
    docs/interference.md), and a task already running when tracing began
    was never switched in.  When an event names another task than the one
    believed current, a switch was missed; it is taken to have happened
    right after the previous event on this CPU — an idle CPU that halts
    leaves idle only through an interrupt, whose exit is traced — and
    counted as one switch-in (and in ``inferred``).
    """

    def __init__(self, cpu: int, classify: Classifier, owners: Iterable[int] = ()):
        self.cpu = cpu
        self.classify = classify
        self.owners: frozenset[int] = frozenset(owners)
        self.totals: dict[tuple[Kind, str], Tally] = {}
        self.preempted: dict[int, dict[Kind, int]] = {}
        self.lost = 0
        self.inconsistent = 0
        self.inferred = 0      # switches the trace left out, seen from the next event's task
        self._now: int | None = None
        self._task: _Ctx | None = None
        self._stack: list[_Ctx] = []
        self._waiting_owner: int | None = None
        self._victim: int | None = None     # the owner that foreign time now delays
        self._ctx_cache: dict[tuple[int, str], _Ctx] = {}
        self._intr_cache: dict[tuple[Kind, str], _Ctx] = {}
        self._run_ns = 0       # charged to the current task since it became current
        self._after_exit = False   # the previous event was an interrupt's exit

    # -- public

    def set_owners(self, tids: Iterable[int]) -> None:
        owners = frozenset(tids)
        if owners != self.owners:
            self.owners = owners
            self._ctx_cache.clear()
            if self._task is not None:
                self._task = self._role_of(self._task.pid, self._task.comm)
            self._set_victim()

    def feed(self, events: Iterable[Event]) -> None:
        evs = events if isinstance(events, (list, tuple)) else list(events)
        advance = self._advance
        for i in range(len(evs)):
            ev = evs[i]
            code = ev[1]
            if code == LOST:
                self._lost(ev[0])
                continue
            pid = ev[2]
            task = self._task
            if pid >= 0 and (task is None or task.pid != pid):
                if task is not None and (task.role is not TaskRole.IDLE or not self._after_exit):
                    # The believed task was running at the previous event;
                    # when it stopped is unknown: it is charged up to here.
                    # Idle is left right after the interrupt that woke the
                    # CPU; without one traced, nothing is back-dated.
                    advance(ev[0])
                self._missed_switch(pid, ev[6] if code == SWITCH else None, evs, i)
            advance(ev[0])
            self._after_exit = code == EXIT
            if code == SWITCH:
                self._switch(ev)
            elif code == ENTER:
                self._enter(ev[3], ev[4])
            else:
                stack = self._stack
                if stack and stack[-1].kind is ev[3]:
                    stack.pop()
                else:
                    # Tracing began inside this handler, or the entry was lost.
                    self.inconsistent += 1

    def advance(self, ts: int) -> None:
        """Charge the running context up to ``ts`` (no event needed: a busy
        task may run for seconds without one)."""
        self._advance(ts)

    # -- internals

    def _advance(self, ts: int) -> None:
        now = self._now
        if now is None or ts <= now:
            # Out-of-order by a hair (an event committed after advance()) is
            # charged as zero rather than rewinding.
            if now is None:
                self._now = ts
            return
        self._now = ts
        top = self._stack[-1] if self._stack else self._task
        if top is None or top.tally is None:
            return
        dt = ts - now
        top.tally.ns += dt
        if not self._stack:
            self._run_ns += dt
        if self._victim is not None:
            per = self.preempted.setdefault(self._victim, {})
            per[top.kind] = per.get(top.kind, 0) + dt

    def _set_victim(self) -> None:
        task = self._task
        self._victim = task.pid if task is not None and task.role is TaskRole.OWNER else self._waiting_owner

    def _tally(self, kind: Kind, source: str) -> Tally:
        key = (kind, source)
        t = self.totals.get(key)
        if t is None:
            if len(self.totals) >= MAX_SOURCES:
                key = (kind, OTHER)
                t = self.totals.get(key)
                if t is None:
                    t = self.totals[key] = Tally()
            else:
                t = self.totals[key] = Tally()
        return t

    def _role_of(self, pid: int, comm: str) -> _Ctx:
        key = (pid, comm)
        ctx = self._ctx_cache.get(key)
        if ctx is None:
            if len(self._ctx_cache) >= 4096:
                self._ctx_cache.clear()
            ctx = self._ctx_cache[key] = self._new_role(pid, comm)
        return ctx

    def _new_role(self, pid: int, comm: str) -> _Ctx:
        if pid == 0:
            return _Ctx(TaskRole.IDLE, None, "idle", 0, comm)
        if pid in self.owners:
            return _Ctx(TaskRole.OWNER, None, "owner", pid, comm)
        kind, source = self.classify(pid, comm)
        return _Ctx(TaskRole.FOREIGN, kind, source, pid, comm, self._tally(kind, source))

    def _switched_in(self, nxt: _Ctx) -> None:
        if nxt.role is TaskRole.OWNER or (self._waiting_owner is not None and self._waiting_owner not in self.owners):
            self._waiting_owner = None
        self._task = nxt
        self._run_ns = 0
        if nxt.tally is not None:
            nxt.tally.count += 1
        self._set_victim()

    def _missed_switch(self, pid: int, comm: str | None, events: list[Event] | tuple[Event, ...], i: int) -> None:
        # After idle this runs before the time since the previous event is
        # charged: that time goes to the task this event names.
        if self._task is not None:
            self.inferred += 1
        # Its own later switch names it best; else the classifier reads the
        # name the kernel has now ("") — not one from an earlier run, which
        # may be stale (a process renames itself after it starts).
        comm = comm or _comm_ahead(events, i, pid)
        self._switched_in(self._role_of(pid, comm))

    def _switch(self, ev: Event) -> None:
        _ts, _code, prev_pid, prev_state, next_pid, next_comm, prev_comm = ev
        if self._stack:
            # No context switch happens inside a hard IRQ; a leftover frame
            # means an exit event was lost.
            self.inconsistent += 1
            self._stack.clear()
        task = self._task
        if task is not None and task.pid == prev_pid and prev_comm and prev_comm != task.comm:
            self._renamed(task, prev_comm)
        if prev_pid in self.owners and runnable(prev_state):
            self._waiting_owner = prev_pid
        self._switched_in(self._ctx_cache.get((next_pid, next_comm)) or self._role_of(next_pid, next_comm))

    def _renamed(self, task: _Ctx, comm: str) -> None:
        """The task switched out under another name than it was switched in
        with (a process names itself after start: prctl, exec): this run is
        the new name's."""
        new = self._role_of(task.pid, comm)
        if task.tally is not None and new.tally is not None and new.tally is not task.tally:
            task.tally.ns -= self._run_ns
            task.tally.count -= 1
            new.tally.ns += self._run_ns
            new.tally.count += 1

    def _enter(self, kind: Kind, source: str) -> None:
        stack = self._stack
        if len(stack) >= MAX_DEPTH:
            self.inconsistent += 1
            stack.clear()
        ctx = self._intr_cache.get((kind, source))
        if ctx is None:
            if len(self._intr_cache) >= 4096:
                self._intr_cache.clear()
            ctx = self._intr_cache[(kind, source)] = _Ctx(TaskRole.FOREIGN, kind, source, -1, "",
                                                           self._tally(kind, source))
        ctx.tally.count += 1
        stack.append(ctx)

    def _lost(self, _ts: int) -> None:
        self.lost += 1
        self._now = None       # nothing is charged across the gap
        self._task = None
        self._stack.clear()
        self._waiting_owner = None
        self._victim = None


def _comm_ahead(events: list[Event] | tuple[Event, ...], i: int, pid: int) -> str:
    """The comm the first later switch gives ``pid`` ("" if none): a task
    first seen in an interrupt it took is named by its own switch out,
    usually in the same read.  Runs once per such task, not per event."""
    for j in range(i, len(events)):
        ev = events[j]
        if ev[1] == SWITCH:
            if ev[2] == pid and ev[6]:
                return ev[6]
            if ev[4] == pid:
                return ev[5]
    return ""


# ---------------------------------------------------------------------------
# bounded export


class StickyTop:
    """At most ``top_n`` exported sources per CPU, plus ``other`` per kind.

    The exported set follows the *recent* top (time over the status
    window): free slots go to the largest recent sources, and a newcomer
    replaces the weakest exported source only when its recent time is more
    than twice that one's (hysteresis, so series do not flap).

    Every nanosecond is exported exactly once, and every exported series is
    monotonic: an admitted source's series starts at 0 (what it had before
    stays in ``other``); an evicted source's series ends (``other`` does not
    jump: it only receives the source's growth from then on), and if it
    comes back its new series starts at 0 again, which ``rate()`` reads as a
    counter reset.  So ``sum(rate(...))`` over a CPU never spikes on churn.
    """

    HYSTERESIS = 2.0

    def __init__(self, top_n: int):
        self.top_n = top_n
        self._base: dict[tuple[Kind, str], tuple[int, int]] = {}      # exported now: totals at admission
        self._retired: dict[tuple[Kind, str], tuple[int, int]] = {}   # what past series of a source exported
        self._last: dict[tuple[Kind, str], tuple[int, int]] = {}      # each exported series' last value

    def _admit(self, key: tuple[Kind, str], tally: Tally) -> None:
        self._base[key] = (tally.ns, tally.count)

    def _evict(self, key: tuple[Kind, str]) -> None:
        # The series ends at the value last exported; growth since then is
        # the other series' (it has not been shown anywhere yet).
        self._base.pop(key)
        last = self._last.pop(key, (0, 0))
        r = self._retired.get(key, (0, 0))
        self._retired[key] = (r[0] + last[0], r[1] + last[1])

    def _rank(self, totals: Mapping[tuple[Kind, str], Tally],
              recent: Mapping[tuple[Kind, str], int]) -> None:
        def score(k: tuple[Kind, str]) -> int:
            return recent.get(k, 0)

        cands = sorted((k for k in totals if k[1] != OTHER and k not in self._base and score(k) > 0),
                       key=lambda k: (-score(k), k[0].value, k[1]))
        for key in cands:
            if len(self._base) < self.top_n:
                self._admit(key, totals[key])
                continue
            weakest = min(self._base, key=lambda k: (score(k), k[0].value, k[1]))
            if score(key) <= self.HYSTERESIS * score(weakest):
                break
            self._evict(weakest)
            self._admit(key, totals[key])

    def export(self, totals: Mapping[tuple[Kind, str], Tally],
               recent: Mapping[tuple[Kind, str], int] | None = None) -> dict[tuple[Kind, str], tuple[int, int]]:
        """``recent``: ns per source over the recent window (default: the totals)."""
        self._rank(totals, recent if recent is not None else {k: t.ns for k, t in totals.items()})
        out: dict[tuple[Kind, str], tuple[int, int]] = {}
        other: dict[tuple[Kind, str], tuple[int, int]] = {}
        for key, tally in totals.items():
            retired = self._retired.get(key, (0, 0))
            base = self._base.get(key)
            if base is not None:
                out[key] = self._last[key] = (tally.ns - base[0], tally.count - base[1])
                rest = (base[0] - retired[0], base[1] - retired[1])
            else:
                rest = (tally.ns - retired[0], tally.count - retired[1])
            okey = (key[0], OTHER)
            o = other.get(okey, (0, 0))
            other[okey] = (o[0] + rest[0], o[1] + rest[1])
        out.update(other)
        return out


# ---------------------------------------------------------------------------
# the last minute


@dataclass(frozen=True)
class Culprit:
    kind: Kind
    source: str
    seconds: float
    count: int

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind.value, "source": self.source, "seconds": round(self.seconds, 6), "count": self.count}


@dataclass(frozen=True)
class WindowView:
    cpu: int
    window_s: float
    foreign_s: float
    culprits: tuple[Culprit, ...]
    events: int = 0      # foreign switch-ins and interrupt entries in the window

    @property
    def share(self) -> float:
        return self.foreign_s / self.window_s if self.window_s > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {"cpu": self.cpu, "window_s": round(self.window_s, 3), "foreign_s": round(self.foreign_s, 6),
                "share": round(self.share, 6), "events": self.events,
                "culprits": [c.to_json() for c in self.culprits]}


@dataclass
class Window:
    """Totals sampled over time, for "the last ``span_s`` seconds"."""

    span_s: float = 60.0
    samples: deque[tuple[float, dict[tuple[Kind, str], tuple[int, int]]]] = field(default_factory=deque)

    def add(self, t: float, totals: Mapping[tuple[Kind, str], Tally]) -> None:
        self.samples.append((t, {k: (v.ns, v.count) for k, v in totals.items()}))
        # Keep one sample at or before the window's start as the baseline.
        while len(self.samples) >= 2 and self.samples[1][0] <= t - self.span_s:
            self.samples.popleft()

    def recent(self) -> dict[tuple[Kind, str], int]:
        """ns per source over the window."""
        if not self.samples:
            return {}
        first, last = self.samples[0][1], self.samples[-1][1]
        return {k: ns - first.get(k, (0, 0))[0] for k, (ns, _c) in last.items()}

    def view(self, cpu: int, top: int = 3) -> WindowView:
        if not self.samples:
            return WindowView(cpu, 0.0, 0.0, ())
        t0, first = self.samples[0]
        t1, last = self.samples[-1]
        deltas = []
        for key, (ns, count) in last.items():
            b_ns, b_count = first.get(key, (0, 0))
            if ns - b_ns > 0 or count - b_count > 0:
                deltas.append(Culprit(key[0], key[1], (ns - b_ns) / 1e9, count - b_count))
        deltas.sort(key=lambda c: (-c.seconds, c.kind.value, c.source))
        return WindowView(cpu, t1 - t0, sum(c.seconds for c in deltas), tuple(deltas[:top]),
                          sum(c.count for c in deltas))
