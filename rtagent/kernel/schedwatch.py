"""The drift watch's kernel side: who changed a thread's scheduling or
cgroup, seen through trace events of tracefs instances of its own.

What can drift a managed thread from outside, and the event that says so:

- the ``sched_setaffinity``, ``sched_setscheduler``, ``sched_setattr`` and
  ``sched_setparam`` syscalls (taskset, chrt, libvirt, any tool): the
  ``syscalls:sys_enter_*`` event names the target (its ``pid`` argument; 0
  is the caller itself), the ``sys_exit_*`` event of the same calling task
  fires after the change landed.  A notice is posted at the exit only (at
  the enter the check could run before the syscall took effect), and only
  when the syscall succeeded;
- a move to another cgroup (``tasks`` / ``cgroup.procs`` writes; a cpuset
  move changes the affinity): ``cgroup:cgroup_attach_task``, emitted after
  the migration and the controllers' attach callbacks.

The events are rare, so the reader is woken by each one
(``buffer_percent`` 0) and blocks in ``poll()`` otherwise (a look at its
instances every 30 s).  Only the threads the caller watches matter
(:meth:`SchedWatch.set_tids`): the enter and attach events are filtered in
the kernel to those targets (:func:`target_filter`, while the expression
fits in a filter write) and the reader drops what is left for other
threads, so another guest's start on a shared host does not wake the
caller's loop.  The exits name no target: they go to a second instance
(``<name>-exits``, only the caller's own calls filtered out) that never
wakes the reader (``buffer_percent`` 100) and is read after a watched
enter, ≤ ``EXIT_WAIT_S`` for its exit; an exit whose enter was not watched
is ignored (the caller's first full check covers a syscall in flight
while the watch started).  Events the kernel dropped from the first
instance (a full buffer) are reported as "check everything".

Cost (docs/design.md, "The drift watch"): an enabled syscall tracepoint
sends *every* syscall on the host through the tracing slow path (+24 ns
each here), which is why the daemon makes the watch a config choice.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..cpulist import parse_cpulist
from ..threadname import name_thread
from . import fs, tracefs

log = logging.getLogger(__name__)

__all__ = ["EVENTS", "EXITS", "Notice", "Pairing", "SchedWatch", "instance_name", "stale_instances"]

SYSCALLS = ("sched_setaffinity", "sched_setscheduler", "sched_setattr", "sched_setparam")
ATTACH = ("cgroup", "cgroup_attach_task")
# The instance that wakes the reader: what names a target.
EVENTS: tuple[tuple[str, str], ...] = (*(("syscalls", f"sys_enter_{name}") for name in SYSCALLS), ATTACH)
# The exits carry no target, so no filter can keep other processes' out:
# they go to a second instance that never wakes the reader
# (buffer_percent 100) and is read only after a watched enter.
EXITS: tuple[tuple[str, str], ...] = tuple(("syscalls", f"sys_exit_{name}") for name in SYSCALLS)
EXITS_SUFFIX = "-exits"
EXIT_WAIT_S = 0.25  # how long a watched enter waits for its exit before it is taken as landed
PREFIX = "rtagent-watch-"
READER_THREAD_NAME = "rtagent-drift"
CHECK_EVERY_S = 30.0  # the reader looks at its instance when no event came for this long
BUFFER_KB = 64     # per CPU: a guest start's burst of cgroup moves is a few KiB
_MAX_PENDING = 4096  # callers between enter and exit; more means lost exits


class WatchBroken(tracefs.TracefsError):
    """The instance no longer traces what the watch needs."""


@dataclass(frozen=True)
class Notice:
    """What a batch of events says: the threads whose scheduling changed
    (``sched``), those moved to another cgroup (``moved``), or that events
    were lost and anything may have changed (``everything``).  ``at``: the
    earliest change's time (CLOCK_MONOTONIC, seconds) — the detection time."""

    sched: frozenset[int] = frozenset()
    moved: frozenset[int] = frozenset()
    everything: bool = False
    at: float = 0.0
    events: int = 0   # events decoded (the watch's counter)
    lost: int = 0     # events the kernel dropped (-1: some, count unknown, counted as 1)

    @property
    def empty(self) -> bool:
        return not (self.sched or self.moved or self.everything)


class EventKind:
    ENTER, EXIT, ATTACH = "enter", "exit", "attach"


@dataclass(frozen=True)
class Event:
    ts: int       # ns, the instance's trace clock
    kind: str     # EventKind
    caller: int   # common_pid: the calling task
    arg: int      # enter: the pid argument; exit: the return value; attach: the moved task


@dataclass
class Pairing:
    """Pure: enter/exit pairs → the targets whose change has landed.

    The enter remembers its target per calling task; the exit with return
    value 0 yields it.  An exit without its enter is someone else's (its
    enter was filtered out in the kernel) and yields nothing; lost events
    are the decoder's to report."""

    pending: dict[int, tuple[int, int]] = field(default_factory=dict)  # caller -> (target, enter ts)

    def feed(self, events: Iterable[Event]) -> tuple[set[int], set[int], bool, int | None]:
        """→ (sched targets, moved tasks, everything, earliest ts of a result)."""
        sched: set[int] = set()
        moved: set[int] = set()
        everything = False
        first: int | None = None
        for ev in events:
            if ev.kind == EventKind.ENTER:
                if len(self.pending) >= _MAX_PENDING:
                    self.pending.clear()
                    everything = True
                self.pending[ev.caller] = (ev.arg if ev.arg > 0 else ev.caller, ev.ts)
                continue
            if ev.kind == EventKind.ATTACH:
                moved.add(ev.arg)
            else:
                entry = self.pending.get(ev.caller)
                if entry is None or ev.ts < entry[1]:
                    continue  # an exit of a call whose enter was not watched
                del self.pending[ev.caller]
                if ev.arg != 0:
                    continue  # refused: nothing changed
                sched.add(entry[0])
            first = ev.ts if first is None else min(first, ev.ts)
        return sched, moved, everything, first


FILTER_MAX = 4000  # a filter is one write of less than a page
NOTHING = "common_pid < 0"  # matches no event
# A range may take in at most this many other TIDs between two managed ones;
# beyond it the kernel would pass most of the host's calls anyway.
GAP_MAX = 1024


def _runs(tids: list[int], gap: int) -> list[tuple[int, int]]:
    """Sorted ``tids`` as ranges, joining neighbours at most ``gap`` apart."""
    runs = [[tids[0], tids[0]]]
    for t in tids[1:]:
        if t - runs[-1][1] <= gap:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return [(lo, hi) for lo, hi in runs]


def _any_of(field: str, runs: list[tuple[int, int]]) -> str:
    return " || ".join(f"{field} == {lo}" if lo == hi else f"({field} >= {lo} && {field} <= {hi})"
                       for lo, hi in runs)


def target_filter(tids: Iterable[int], *, self_calls: bool) -> str | None:
    """A kernel filter passing events whose ``pid`` field is one of
    ``tids``; with ``self_calls`` (the syscall enters) also a call on the
    caller itself (``pid`` 0) by one of them.

    Consecutive TIDs are one range (a guest's threads are mostly born
    together).  When even that is too long for one write, ranges join
    across gaps, doubling the gap until the expression fits: the kernel
    then passes a few other threads' events too, which the reader drops
    (it filters by the set in any case).  None when nothing fits (then the
    reader filters alone)."""
    tids = sorted(set(tids))
    if not tids:
        return NOTHING
    gap = 1
    while gap <= GAP_MAX:
        runs = _runs(tids, gap)
        ors = _any_of("pid", runs)
        if self_calls:
            ors += " || (pid == 0 && (" + _any_of("common_pid", runs) + "))"
        if len(ors) < FILTER_MAX:
            return ors
        gap *= 2
    return None


def instance_name(pid: int, prefix: str = PREFIX) -> str:
    return f"{prefix}{pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_instances(names: Iterable[str], prefix: str = PREFIX,
                    alive: Callable[[int], bool] = _alive) -> list[str]:
    """Instances named ``<prefix><pid>`` whose PID is dead (a daemon killed
    with SIGKILL cannot remove its own).  A live PID's instance is left
    alone, whoever holds that PID now."""
    pat = re.compile(re.escape(prefix) + r"(\d+)(?:" + re.escape(EXITS_SUFFIX) + ")?$")
    return sorted(n for n in names if (m := pat.match(n)) and not alive(int(m[1])))


class Decoder:
    """Raw ring-buffer records of the instance → :class:`Event`."""

    def __init__(self, formats: dict[int, tracefs.EventFormat]):
        self._by_id: dict[int, tuple[str, Callable[[bytes, int], tuple]]] = {}
        for ident, fmt in formats.items():
            if fmt.name.startswith("sys_enter_"):
                self._by_id[ident] = (EventKind.ENTER, fmt.reader(("common_pid", "pid")))
            elif fmt.name.startswith("sys_exit_"):
                self._by_id[ident] = (EventKind.EXIT, fmt.reader(("common_pid", "ret")))
            elif fmt.name == ATTACH[1]:
                self._by_id[ident] = (EventKind.ATTACH, fmt.reader(("common_pid", "pid")))

    def events(self, pages: Iterable[bytes], header: tracefs.PageHeader) -> tuple[list[Event], int]:
        out: list[Event] = []
        lost = 0
        for page, recs, missed in tracefs.pages_records(pages, header):
            lost += missed
            for ts, off in recs:
                known = self._by_id.get(int.from_bytes(page[off:off + 2], "little"))
                if known is None:
                    continue
                caller, arg = known[1](page, off)
                # The enter's pid is an unsigned long: a negative pid_t is
                # refused by the kernel anyway (its exit has ret < 0).
                out.append(Event(ts, known[0], caller, arg & 0xFFFFFFFF if known[0] == EventKind.ENTER else arg))
        return out, lost


class SchedWatch:
    """The instance and its reader thread.  ``on_notice`` runs on the reader
    thread (keep it to a queue put); ``on_failed(reason)`` once, if the
    reader ends other than by :meth:`stop`."""

    def __init__(self, on_notice: Callable[[Notice], None], on_failed: Callable[[str], None] | None = None, *,
                 root: str | None = None, own_pid: int | None = None, prefix: str = PREFIX,
                 cpus: Iterable[int] | None = None):
        self._on_notice = on_notice
        self._on_failed = on_failed
        self._root = root
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.prefix = prefix
        self._cpus = frozenset(cpus) if cpus is not None else frozenset(os.sched_getaffinity(0)) | _online()
        self.name = instance_name(os.getpid(), prefix)
        self.inst: tracefs.Instance | None = None
        self.exits: tracefs.Instance | None = None  # the exits' instance (EXITS)
        self._decoder: Decoder | None = None
        self._pairing = Pairing()
        self._mono = True
        self._stop = threading.Event()
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self._tids: frozenset[int] | None = None  # None: every thread (no set given yet)
        self._filtered: frozenset[int] | None = None  # what the kernel filters hold now

    # -- lifecycle

    def open(self) -> None:
        """Remove stale instances, create ours, enable and filter the events.
        Raises TracefsError naming what is missing."""
        root = self._root or tracefs.find_tracefs()
        if root is None:
            raise tracefs.TracefsError("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
        self._root = root
        self.remove_stale()
        self.inst = tracefs.Instance.create(root, self.name, self._cpus, EVENTS, buffer_kb=BUFFER_KB, wake_percent=0)
        try:
            self.exits = tracefs.Instance.create(root, self.name + EXITS_SUFFIX, self._cpus, EXITS,
                                                 buffer_kb=BUFFER_KB, wake_percent=100)
            for system, event in EXITS:
                self.exits.set_filter(system, event, f"common_pid != {self.own_pid}")  # its own corrections
            self._apply_filters(force=True)
            self._mono = self.inst.clock_name() == "mono" and self.exits.clock_name() == "mono"
            self._decoder = Decoder({**self.inst.formats, **self.exits.formats})
        except BaseException:
            self._remove_instances()
            raise

    def _remove_instances(self) -> None:
        for attr in ("exits", "inst"):
            inst = getattr(self, attr)
            setattr(self, attr, None)
            if inst is not None:
                try:
                    inst.remove()
                except tracefs.TracefsError as err:
                    log.warning("drift watch: %s", err)

    def remove_stale(self) -> list[str]:
        assert self._root is not None
        try:
            names = os.listdir(os.path.join(self._root, "instances"))
        except OSError:
            return []
        removed = []
        for name in stale_instances(names, self.prefix):
            try:
                if tracefs.remove_instance(self._root, name):
                    removed.append(name)
                    log.info("removed the stale tracefs instance %s (its daemon is gone)", name)
            except tracefs.TracefsError as err:
                log.warning("drift watch: %s", err)
        return removed

    def start(self) -> None:
        self.open()
        self._wake = os.pipe()
        os.set_blocking(self._wake[1], False)
        self._thread = threading.Thread(target=self._run, name=READER_THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        self._remove_instances()
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def set_tids(self, tids: frozenset[int]) -> None:
        """The threads that matter from now on (replaced whole).  The kernel
        filters are rewritten on the reader thread: a filter change waits
        for an RCU grace period, which the caller's loop must not."""
        self._tids = frozenset(tids)
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"f")
            except BlockingIOError:
                pass  # a wake-up is pending already

    def _apply_filters(self, force: bool = False) -> None:
        inst, tids = self.inst, self._tids
        if inst is None or (tids == self._filtered and not force):
            return
        own = f"common_pid != {self.own_pid}"  # the caller's own corrections
        enter, attach = own, "common_pid >= 0"  # every event: no set given yet
        if tids is not None:
            to_enter, to_attach = target_filter(tids, self_calls=True), target_filter(tids, self_calls=False)
            enter = own if to_enter is None else f"({to_enter}) && {own}"
            attach = to_attach or attach
        for system, event in EVENTS:
            inst.set_filter(system, event, enter if system == "syscalls" else attach)
        self._filtered = tids

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def intact(self) -> str | None:
        """None while the instance traces its events; else what is wrong
        (someone removed it, turned its tracing off or disabled an event)."""
        for inst, events in ((self.inst, EVENTS), (self.exits, EXITS)):
            if inst is None:
                return "no tracefs instance"
            try:
                if (why := inst.not_tracing(events)) is not None:
                    return why
            except OSError as err:
                return f"tracefs instance {inst.path} unreadable: {err.strerror}"
        return None

    # -- the reader

    def _run(self) -> None:
        name_thread(READER_THREAD_NAME)
        try:
            waiter = self._waiter()
            next_check = time.monotonic() + CHECK_EVERY_S
            while not self._stop.is_set():
                # Woken by an event, set_tids() or stop(); and every
                # CHECK_EVERY_S to see the instance still traces (someone may
                # turn it off or disable its events): two small reads per
                # instance (tracefs.Instance.not_tracing).
                ready = waiter.poll(max(0.0, next_check - time.monotonic()) * 1000)
                if self._stop.is_set():
                    break
                if time.monotonic() >= next_check:
                    if (why := self.intact()) is not None:
                        raise WatchBroken(why)
                    next_check = time.monotonic() + CHECK_EVERY_S
                if not ready:
                    continue
                if self._wake is not None and any(fd == self._wake[0] for fd, _ev in ready):
                    os.read(self._wake[0], 64)
                    self._apply_filters()
                notice = self.read()
                if notice is not None:
                    self._on_notice(notice)
        except WatchBroken as exc:
            log.warning("drift watch: %s", exc)
            self._failed(str(exc))
        except Exception as exc:  # the daemon falls back to polling; it never dies of this
            log.exception("drift watch: the reader failed")
            self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, why: str) -> None:
        self.error = why
        if self._on_failed is not None and not self._stop.is_set():
            self._on_failed(why)

    def _waiter(self) -> select.poll:
        waiter = select.poll()
        assert self._wake is not None and self.inst is not None
        waiter.register(self._wake[0], select.POLLIN)
        for cpu in sorted(self._cpus):
            waiter.register(self.inst.fd(cpu), select.POLLIN)
        return waiter

    def read(self) -> Notice | None:
        """Everything readable now on every CPU, as one notice (None: nothing)."""
        inst, dec = self.inst, self._decoder
        if inst is None or dec is None or inst.header is None:
            return None
        events, lost = self._read(inst)
        if not events and not lost:
            return None
        # A watched enter: its exit is in the other instance, maybe not yet.
        entered = {ts_caller[1]: ts_caller[0] for ts_caller in sorted(
            [(ts, caller) for caller, (_t, ts) in self._pairing.pending.items()]
            + [(e.ts, e.caller) for e in events if e.kind == EventKind.ENTER])}  # caller -> its last enter
        waited, exits = 0.0, []
        while entered:
            exits += self._read(self.exits)[0]
            exited = {e.caller for e in exits if e.ts > entered.get(e.caller, 1 << 63)}
            if exited >= set(entered) or waited >= EXIT_WAIT_S:
                break
            time.sleep(0.001)
            waited += 0.001
        # An affinity change of the caller itself can move it between its
        # enter and exit: the CPUs' buffers are merged in time order.
        events = sorted(events + exits, key=lambda e: e.ts)
        sched, moved, everything, first = self._pairing.feed(events)
        if self._pairing.pending and waited >= EXIT_WAIT_S:
            # No exit in time (lost, or a call still running): taken as landed.
            sched |= {target for target, _ts in self._pairing.pending.values()}
            self._pairing.pending.clear()
        if lost:
            self._pairing.pending.clear()
        tids = self._tids
        if tids is not None:  # another process's threads (the kernel filter too long, or just changed)
            sched, moved = sched & tids, moved & tids
        if not (sched or moved or everything or lost):
            return Notice(events=len(events)) if events else None  # counted, nothing to do
        at = first / 1e9 if first is not None and self._mono else time.monotonic()
        return Notice(frozenset(sched), frozenset(moved), everything or lost > 0, at, len(events), lost)


    def _read(self, inst: tracefs.Instance | None) -> tuple[list[Event], int]:
        events: list[Event] = []
        lost = 0
        if inst is None or inst.header is None or self._decoder is None:
            return events, lost
        for cpu in sorted(self._cpus):
            evs, missed = self._decoder.events(inst.read_pages(cpu), inst.header)
            events += evs
            lost += missed
        return events, lost


def _online() -> frozenset[int]:
    """Every online CPU: an event can be written on any of them."""
    try:
        text = fs.read_text("/sys/devices/system/cpu/online").strip()
    except OSError:
        return frozenset()
    return frozenset(parse_cpulist(text))
