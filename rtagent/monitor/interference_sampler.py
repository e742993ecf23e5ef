"""The interference sampler: a tracefs instance on the realtime CPUs, read
from a housekeeping CPU on a timer and fed to the pure accountant.

``InterferenceSampler(cpus, instance=..., owners=..., guests=...)`` —
``start()`` creates the instance (removing a leftover of the same name) and
a reader thread, ``poll()`` reads and accounts everything available now (the
thread calls it every ``poll_interval_s``; the one-shot CLI calls it
directly), ``snapshot()`` returns plain copies, ``stop()`` removes the
instance.  ``owners()`` returns ``{cpu: {tid: (domain, vcpu)}}`` (the
realtime vCPUs pinned there), ``guests()`` returns ``{qemu_pid: domain}``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..kernel import Kernel, tracefs
from ..kernel.tasks import PF_KTHREAD
from .interference import (
    ENTER,
    EXIT,
    LOST,
    SWITCH,
    CpuAccount,
    Event,
    Kind,
    StickyTop,
    Window,
    WindowView,
    fold_comm,
)

log = logging.getLogger(__name__)

EVENTS = (
    ("sched", "sched_switch"),
    ("irq", "irq_handler_entry"), ("irq", "irq_handler_exit"),
    ("irq", "softirq_entry"), ("irq", "softirq_exit"),
)
# x86 system vectors never pass irq_handler_entry: the local timer (the tick)
# and IPIs are only visible here.  Enabled where the kernel has them.
_VECTORS = ("local_timer", "reschedule", "call_function", "call_function_single", "irq_work",
            "x86_platform_ipi", "thermal_apic", "error_apic", "spurious_apic")
OPTIONAL_EVENTS = tuple(("irq_vectors", f"{v}_{side}") for v in _VECTORS for side in ("entry", "exit"))
_SOFTIRQ_FALLBACK = {0: "HI", 1: "TIMER", 2: "NET_TX", 3: "NET_RX", 4: "BLOCK", 5: "IRQ_POLL",
                     6: "TASKLET", 7: "SCHED", 8: "HRTIMER", 9: "RCU"}

Owners = Mapping[int, Mapping[int, tuple[str, int]]]


# ---------------------------------------------------------------------------
# records → events


class Decoder:
    """Turns raw records into accountant events (tuples) using the
    instance's formats.

    The hot path (every context switch and interrupt of a realtime CPU):
    one ``struct`` unpack per record straight from the page, comm strings
    decoded once per distinct value, IRQ names once per IRQ number."""

    def __init__(self, formats: Mapping[int, tracefs.EventFormat]):
        self._by_id: dict[int, Callable[[int, bytes, int], Event]] = {}
        self._comms: dict[bytes, str] = {}
        for ident, fmt in formats.items():
            fn = self._converter(fmt)
            if fn is not None:
                self._by_id[ident] = fn

    def _comm(self, raw: bytes) -> str:
        s = self._comms.get(raw)
        if s is None:
            if len(self._comms) > 4096:
                self._comms.clear()
            s = self._comms[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return s

    def _converter(self, fmt: tracefs.EventFormat) -> Callable[[int, bytes, int], Event] | None:
        name = fmt.name
        if name == "sched_switch":
            return self._switch(fmt)
        if name == "irq_handler_entry":
            return self._irq_entry(fmt)
        if name == "irq_handler_exit":
            read_pid = fmt.reader(("common_pid",))
            return lambda ts, page, off: (ts, EXIT, read_pid(page, off)[0], Kind.IRQ, "")
        if name in ("softirq_entry", "softirq_exit"):
            symbols = fmt.symbols or _SOFTIRQ_FALLBACK
            code = ENTER if name.endswith("entry") else EXIT
            read_vec = fmt.reader(("common_pid", "vec"))

            def soft(ts: int, page: bytes, off: int) -> Event:
                pid, vec = read_vec(page, off)
                return (ts, code, pid, Kind.SOFTIRQ, symbols.get(vec) or f"vec{vec}")
            return soft
        if fmt.system == "irq_vectors" and (name.endswith("_entry") or name.endswith("_exit")):
            vector, side = name.rsplit("_", 1)
            code = ENTER if side == "entry" else EXIT
            read_pid = fmt.reader(("common_pid",))
            return lambda ts, page, off: (ts, code, read_pid(page, off)[0], Kind.IRQ, vector)
        return None

    def _switch(self, fmt: tracefs.EventFormat) -> Callable[[int, bytes, int], Event]:
        read = fmt.reader(("prev_pid", "prev_state", "next_pid", "next_comm", "prev_comm"))
        comm = self._comm

        def switch(ts: int, page: bytes, off: int) -> Event:
            prev_pid, prev_state, next_pid, next_comm, prev_comm = read(page, off)
            return (ts, SWITCH, prev_pid, prev_state, next_pid, comm(next_comm), comm(prev_comm))
        return switch

    def _irq_entry(self, fmt: tracefs.EventFormat) -> Callable[[int, bytes, int], Event]:
        read = fmt.reader(("common_pid", "irq"))
        names: dict[int, str] = {}

        def irq_entry(ts: int, page: bytes, off: int) -> Event:
            pid, irq = read(page, off)
            name = names.get(irq)
            if name is None:
                # The action name (a __data_loc string): decoded once per IRQ.
                payload = bytes(page[off:off + 64])
                name = str(fmt.get(payload, "name")) or f"irq{irq}"
                if len(names) < 1024:
                    names[irq] = name
            return (ts, ENTER, pid, Kind.IRQ, name)
        return irq_entry

    def events(self, pages: Iterable[bytes], header: tracefs.PageHeader) -> tuple[list[Event], int]:
        out: list[Event] = []
        lost = 0
        by_id = self._by_id
        for page in pages:
            recs, missed = tracefs.page_records(page, header)
            if missed:
                lost += max(missed, 1)
                out.append((recs[0][0] if recs else 0, LOST))
            for ts, off, _plen in recs:
                fn = by_id.get(page[off] | page[off + 1] << 8)
                if fn is None:
                    continue
                try:
                    out.append(fn(ts, page, off))
                except (ValueError, IndexError, KeyError, UnicodeError, struct.error):
                    continue
        return out, lost


# ---------------------------------------------------------------------------
# who is a task


class ProcClassifier:
    """Kind and source of a pid from /proc, cached by (pid, comm).  A task
    that has exited before we look is a ``task`` (no way to tell)."""

    def __init__(self, guests: Callable[[], Mapping[int, str]] = dict, kernel: Kernel | None = None,
                 limit: int = 4096):
        self._guests = guests
        self._tasks = (kernel or Kernel()).tasks
        self._cache: dict[tuple[int, str], tuple[Kind, str]] = {}
        self._qemu: dict[int, str | None] = {}
        self._limit = limit

    def __call__(self, pid: int, comm: str) -> tuple[Kind, str]:
        key = (pid, comm)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._classify(pid, comm)
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _classify(self, pid: int, comm: str) -> tuple[Kind, str]:
        try:
            stat = self._tasks.stat(pid)
            # No trace event named this task yet (its switch-in was not
            # traced): its comm as the kernel has it now.
            comm = comm or stat.comm
            if stat.flags & PF_KTHREAD:
                return Kind.KTHREAD, fold_comm(comm)
            tgid_text = self._tasks.status(pid).get("Tgid", "")
            tgid = int(tgid_text) if tgid_text.isdigit() else None
        except (OSError, ValueError, IndexError, KeyError):
            return Kind.TASK, fold_comm(comm)
        domain = self._guests().get(tgid) if tgid is not None else None
        if domain is None and tgid is not None:
            # A guest the daemon does not manage is still another guest.
            domain = self._qemu_guest(tgid)
        if domain is not None:
            return Kind.GUEST, domain
        return Kind.TASK, fold_comm(comm)

    def _qemu_guest(self, tgid: int) -> str | None:
        if tgid not in self._qemu:
            if len(self._qemu) >= self._limit:
                self._qemu.clear()
            try:
                self._qemu[tgid] = guest_name_from_cmdline(self._tasks.cmdline_raw(tgid))
            except OSError:
                return None
        return self._qemu[tgid]


def guest_name_from_cmdline(cmdline: bytes) -> str | None:
    """The domain name of a QEMU started by libvirt (``-name guest=NAME,...``)."""
    args = cmdline.split(b"\0")
    for i, arg in enumerate(args[:-1]):
        if arg == b"-name":
            value = args[i + 1].decode("utf-8", "replace")
            for part in value.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
            return value.split(",")[0] or None
    return None


# ---------------------------------------------------------------------------
# snapshot


@dataclass(frozen=True)
class CpuSnapshot:
    cpu: int
    exported: dict[tuple[Kind, str], tuple[int, int]]   # (ns, count), bounded by top_n
    window: WindowView
    lost: int
    preempted: dict[tuple[str, int], dict[Kind, int]]     # (domain, vcpu) -> kind -> ns


@dataclass(frozen=True)
class InterferenceSnapshot:
    running: bool
    instance: str
    clock: str
    cpus: tuple[CpuSnapshot, ...]
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "running": self.running, "instance": self.instance, "clock": self.clock, "error": self.error,
            "cpus": [{**c.window.to_json(), "lost_events": c.lost} for c in self.cpus],
        }


# ---------------------------------------------------------------------------


class InterferenceSampler:
    def __init__(self, cpus: Iterable[int], *, instance: str = "rtagent",
                 owners: Callable[[], Owners] = dict, guests: Callable[[], Mapping[int, str]] = dict,
                 housekeeping: Iterable[int] = (), top_n: int = 10, poll_interval_s: float = 0.5,
                 window_s: float = 60.0, buffer_kb: int = 1024, root: Path | None = None):
        self.cpus = tuple(sorted(set(cpus)))
        self.instance_name = instance
        self._owners_fn = owners
        self._housekeeping = frozenset(housekeeping)
        self._poll = poll_interval_s
        self._buffer_kb = buffer_kb
        self._root = root
        classify = ProcClassifier(guests)
        self._acc = {c: CpuAccount(c, classify) for c in self.cpus}
        self._top = {c: StickyTop(top_n) for c in self.cpus}
        self._window = {c: Window(window_s) for c in self.cpus}
        self._owner_labels: dict[int, tuple[str, int]] = {}
        self._exported: dict[int, dict[tuple[Kind, str], tuple[int, int]]] = {c: {} for c in self.cpus}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inst: tracefs.Instance | None = None
        self._decoder: Decoder | None = None
        self.error: str | None = None

    # -- lifecycle

    def open(self) -> None:
        """Create the instance (no thread).  Raises TracefsError."""
        root = self._root or tracefs.find_tracefs()
        if root is None:
            raise tracefs.TracefsError("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
        if not self.cpus:
            raise tracefs.TracefsError("no realtime CPUs to account")
        # The window starts before tracing does, so no event predates it.
        started = time.monotonic()
        self._inst = tracefs.Instance.create(root, self.instance_name, self.cpus, EVENTS,
                                             optional_events=OPTIONAL_EVENTS, buffer_kb=self._buffer_kb)
        self._decoder = Decoder(self._inst.formats)
        for c in self.cpus:
            self._window[c].add(started, {})

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._run, name="rtagent-interference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._inst is not None:
            try:
                self._inst.remove()
            except tracefs.TracefsError as exc:
                log.warning("interference: %s", exc)
            self._inst = None

    def _run(self) -> None:
        if self._housekeeping:
            try:
                # The reader must never run on the CPUs it measures.
                Kernel().tasks.set_affinity(0, frozenset(self._housekeeping))
            except OSError as exc:
                log.warning("interference: cannot confine the reader to %s: %s", sorted(self._housekeeping), exc)
        while not self._stop.wait(self._poll):
            try:
                self.poll()
            except Exception as exc:  # the daemon never dies on the sampler's behalf
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("interference: poll failed")

    # -- work

    def poll(self) -> None:
        inst, dec = self._inst, self._decoder
        if inst is None or dec is None or inst.header is None:
            return
        owners = self._owners_fn()
        batches = {c: dec.events(inst.read_pages(c), inst.header) for c in self.cpus}
        self.account(batches, owners, time.monotonic())

    def account(self, batches: Mapping[int, tuple[list[Event], int]], owners: Owners, now: float) -> None:
        """Feed decoded ``{cpu: (events, lost)}``; ``owners`` as of now."""
        labels: dict[int, tuple[str, int]] = {}
        for per in owners.values():
            labels.update(per)
        with self._lock:
            # A vCPU that is gone (guest stopped) loses its series, like
            # every per-guest series; this also bounds the memory.
            self._owner_labels = labels
            for c in self.cpus:
                acc = self._acc[c]
                acc.set_owners(owners.get(c, {}).keys())
                for tid in [t for t in acc.preempted if t not in labels]:
                    del acc.preempted[tid]
                events, lost = batches.get(c, ([], 0))
                acc.feed(events)
                acc.lost += lost
                # No advance() to "now": events older than now can still be
                # in flight (not yet readable), and charging the current
                # context up to now would misattribute them (measured: up to
                # 2x on this machine).  Time is charged at the next event.
                self._window[c].add(now, acc.totals)
                # The exported top N follows the window's recent top; ranked
                # here, early and often, so a new series starts near zero.
                self._exported[c] = self._top[c].export(acc.totals, self._window[c].recent())

    def snapshot(self, top: int = 3) -> InterferenceSnapshot:
        with self._lock:
            cpus = []
            for c in self.cpus:
                acc = self._acc[c]
                pre = {}
                for tid, per in acc.preempted.items():
                    label = self._owner_labels.get(tid)
                    if label is not None:
                        merged = pre.setdefault(label, {})
                        for k, ns in per.items():
                            merged[k] = merged.get(k, 0) + ns
                cpus.append(CpuSnapshot(c, dict(self._exported[c]), self._window[c].view(c, top),
                                        acc.lost, pre))
        clock = self._inst.clock_name() if self._inst is not None else ""
        return InterferenceSnapshot(self._inst is not None, self.instance_name, clock, tuple(cpus), self.error)
