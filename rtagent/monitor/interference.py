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
# events (decoded from the trace by the sampler, or synthetic in tests);
# slotted, not frozen: one is made per context switch and interrupt


@dataclass(slots=True)
class Switch:
    ts: int
    prev_pid: int
    prev_state: int     # sched_switch prev_state; runnable when the low state bits are 0
    next_pid: int
    next_comm: str


@dataclass(slots=True)
class IntrEnter:
    ts: int
    kind: Kind          # IRQ or SOFTIRQ
    source: str


@dataclass(slots=True)
class IntrExit:
    ts: int
    kind: Kind
    source: str


@dataclass(slots=True)
class Lost:
    """The kernel dropped events before ``ts``: the CPU's state is unknown
    until the next context switch."""
    ts: int


Event = Switch | IntrEnter | IntrExit | Lost


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


@dataclass(frozen=True)
class _Ctx:
    role: TaskRole
    kind: Kind | None
    source: str
    pid: int = -1


Classifier = Callable[[int, str], tuple[Kind, str]]


class CpuAccount:
    """The accountant of one CPU.  ``owners`` are the tids whose time is not
    interference (the realtime vCPU pinned here); ``classify(pid, comm)``
    gives a foreign task's kind and source."""

    def __init__(self, cpu: int, classify: Classifier, owners: Iterable[int] = ()):
        self.cpu = cpu
        self.classify = classify
        self.owners: frozenset[int] = frozenset(owners)
        self.totals: dict[tuple[Kind, str], Tally] = {}
        self.preempted: dict[int, dict[Kind, int]] = {}
        self.lost = 0
        self.inconsistent = 0
        self._now: int | None = None
        self._task: _Ctx | None = None
        self._stack: list[_Ctx] = []
        self._waiting_owner: int | None = None
        self._ctx_cache: dict[tuple[int, str], _Ctx] = {}

    # -- public

    def set_owners(self, tids: Iterable[int]) -> None:
        owners = frozenset(tids)
        if owners != self.owners:
            self.owners = owners
            self._ctx_cache.clear()

    def feed(self, events: Iterable[Event]) -> None:
        handlers = {Switch: self._switch, IntrEnter: self._enter, IntrExit: self._exit, Lost: self._lost}
        advance = self._advance
        for ev in events:
            advance(ev.ts)
            handlers[type(ev)](ev)

    def advance(self, ts: int) -> None:
        """Charge the running context up to ``ts`` (no event needed: a busy
        task may run for seconds without one)."""
        self._advance(ts)

    # -- internals

    def _advance(self, ts: int) -> None:
        if self._now is None or ts <= self._now:
            # Out-of-order by a hair (an event committed after advance()) is
            # charged as zero rather than rewinding.
            self._now = ts if self._now is None else self._now
            return
        dt = ts - self._now
        self._now = ts
        top = self._stack[-1] if self._stack else self._task
        if top is None or top.role is not TaskRole.FOREIGN or top.kind is None:
            return
        self._tally(top.kind, top.source).ns += dt
        owner = self._affected_owner()
        if owner is not None:
            per = self.preempted.setdefault(owner, {})
            per[top.kind] = per.get(top.kind, 0) + dt

    def _affected_owner(self) -> int | None:
        if self._task is not None and self._task.role is TaskRole.OWNER:
            return self._task.pid
        return self._waiting_owner

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
            return _Ctx(TaskRole.IDLE, None, "idle", 0)
        if pid in self.owners:
            return _Ctx(TaskRole.OWNER, None, "owner", pid)
        kind, source = self.classify(pid, comm)
        return _Ctx(TaskRole.FOREIGN, kind, source, pid)

    def _switch(self, ev: Switch) -> None:
        if self._stack:
            # No context switch happens inside a hard IRQ; a leftover frame
            # means an exit event was lost.
            self.inconsistent += 1
            self._stack.clear()
        if ev.prev_pid in self.owners and runnable(ev.prev_state):
            self._waiting_owner = ev.prev_pid
        nxt = self._role_of(ev.next_pid, ev.next_comm)
        if nxt.role is TaskRole.OWNER or (self._waiting_owner is not None and self._waiting_owner not in self.owners):
            self._waiting_owner = None
        self._task = nxt
        if nxt.role is TaskRole.FOREIGN and nxt.kind is not None:
            self._tally(nxt.kind, nxt.source).count += 1

    def _enter(self, ev: IntrEnter) -> None:
        if len(self._stack) >= MAX_DEPTH:
            self.inconsistent += 1
            self._stack.clear()
        self._stack.append(_Ctx(TaskRole.FOREIGN, ev.kind, ev.source))
        self._tally(ev.kind, ev.source).count += 1

    def _exit(self, ev: IntrExit) -> None:
        if self._stack and self._stack[-1].kind is ev.kind:
            self._stack.pop()
        else:
            # Tracing began inside this handler, or the entry was lost.
            self.inconsistent += 1

    def _lost(self, _ev: Lost | None = None) -> None:
        self.lost += 1
        self._task = None
        self._stack.clear()
        self._waiting_owner = None


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
