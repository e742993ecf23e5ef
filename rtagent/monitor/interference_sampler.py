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
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..kernel import Kernel, tracefs
from ..kernel.tasks import PF_KTHREAD
from ..threadname import name_thread
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
READER_THREAD_NAME = "rtagent-itf"   # its comm: top -H, the benchmarks


# ---------------------------------------------------------------------------
# records → events


# How a record becomes an event: by the row ``Decoder`` keeps per event id.
_FIXED, _SOFTIRQ, _IRQ_ENTRY, _SWITCH = 0, 1, 2, 3


def _word(fmt: tracefs.EventFormat, name: str) -> int:
    """The 32-bit word a field starts at (its low word for a 64-bit one)."""
    f = fmt.fields[name]
    if f.offset % 4 or f.size not in (4, 8) or f.data_loc:
        raise tracefs.TracefsError(f"{fmt.system}:{fmt.name}: field {name} is not an aligned integer "
                                   f"(offset {f.offset}, size {f.size}): this kernel's layout is not supported")
    return f.offset // 4


class Decoder:
    """Turns raw records into accountant events (tuples) using the
    instance's formats.

    The hot path (every context switch and interrupt of a realtime CPU):
    fields read as 32-bit words of the page at the offsets this kernel's
    formats give, no object but the event tuple, comm strings decoded once
    per distinct value, IRQ names once per IRQ number."""

    def __init__(self, formats: Mapping[int, tracefs.EventFormat]):
        self._rows: dict[int, tuple] = {}
        self._comms: dict[bytes, str] = {}
        self._irq_names: dict[int, str] = {}
        self._irq_fmt: tracefs.EventFormat | None = None
        for ident, fmt in formats.items():
            row = self._row(fmt)
            if row is not None:
                self._rows[ident] = row

    def _row(self, fmt: tracefs.EventFormat) -> tuple | None:
        name = fmt.name
        pid = _word(fmt, "common_pid")
        if name == "sched_switch":
            comm = (fmt.fields["next_comm"].offset, fmt.fields["prev_comm"].offset, fmt.fields["next_comm"].size)
            return (_SWITCH, _word(fmt, "prev_pid"), _word(fmt, "prev_state"), _word(fmt, "next_pid"), comm)
        if name == "irq_handler_entry":
            self._irq_fmt = fmt
            return (_IRQ_ENTRY, pid, _word(fmt, "irq"))
        if name == "irq_handler_exit":
            return (_FIXED, pid, EXIT, Kind.IRQ, "")
        if name in ("softirq_entry", "softirq_exit"):
            symbols = dict(fmt.symbols or _SOFTIRQ_FALLBACK)
            return (_SOFTIRQ, pid, ENTER if name.endswith("entry") else EXIT, _word(fmt, "vec"), symbols)
        if fmt.system == "irq_vectors" and (name.endswith("_entry") or name.endswith("_exit")):
            vector, side = name.rsplit("_", 1)
            return (_FIXED, pid, ENTER if side == "entry" else EXIT, Kind.IRQ, vector)
        return None

    def _comm(self, raw: bytes) -> str:
        s = self._comms.get(raw)
        if s is None:
            if len(self._comms) > 4096:
                self._comms.clear()
            s = self._comms[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return s

    def _irq_name(self, irq: int, page: bytes, off: int) -> str:
        name = self._irq_names.get(irq)
        if name is None:
            # The action name is a __data_loc string: decoded once per IRQ.
            name = str(self._irq_fmt.get(bytes(page[off:off + 256]), "name")) or f"irq{irq}"
            if len(self._irq_names) < 1024:
                self._irq_names[irq] = name
        return name

    def events(self, pages: Iterable[bytes], header: tracefs.PageHeader) -> tuple[list[Event], int]:
        out: list[Event] = []
        lost = 0
        for page, recs, missed in tracefs.pages_records(pages, header):
            if missed:
                lost += missed
                out.append((recs[0][0] if recs else 0, LOST))
            if recs:
                self._decode(page, recs, out)
        return out, lost

    def _decode(self, page: bytes, recs: list[tuple[int, int]], out: list[Event]) -> None:
        words, rows, comms, append = tracefs.page_words(page), self._rows, self._comms, out.append
        for ts, off in recs:
            w = off >> 2
            row = rows.get(words[w] & 0xFFFF)
            if row is None:
                continue
            how = row[0]
            if how == _FIXED:
                append((ts, row[2], words[w + row[1]], row[3], row[4]))
            elif how == _SWITCH:
                n_off, p_off, size = row[4]
                n_raw, p_raw = page[off + n_off:off + n_off + size], page[off + p_off:off + p_off + size]
                n_comm, p_comm = comms.get(n_raw) or self._comm(n_raw), comms.get(p_raw) or self._comm(p_raw)
                append((ts, SWITCH, words[w + row[1]], words[w + row[2]], words[w + row[3]], n_comm, p_comm))
            elif how == _SOFTIRQ:
                vec = words[w + row[3]]
                append((ts, row[2], words[w + row[1]], Kind.SOFTIRQ, row[4].get(vec) or f"vec{vec}"))
            else:
                irq = words[w + row[2]]
                append((ts, ENTER, words[w + row[1]], Kind.IRQ, self._irq_names.get(irq) or self._irq_name(irq, page, off)))


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
    inferred: int = 0    # switches the kernel left out of the trace (docs/interference.md)


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
            "cpus": [{**c.window.to_json(), "lost_events": c.lost, "inferred_switches": c.inferred}
                     for c in self.cpus],
        }


# ---------------------------------------------------------------------------


class InterferenceSampler:
    def __init__(self, cpus: Iterable[int], *, instance: str = "rtagent",
                 owners: Callable[[], Owners] = dict, guests: Callable[[], Mapping[int, str]] = dict,
                 housekeeping: Iterable[int] = (), top_n: int = 10, poll_interval_s: float = 0.5,
                 window_s: float = 60.0, buffer_kb: int = 1024, root: str | None = None):
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
        self._clock = ""  # the instance's trace clock, read once at open()
        self._decoder: Decoder | None = None
        self.error: str | None = None
        self._wake: tuple[int, int] | None = None    # stop() wakes the reader out of poll()

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
        # Read once: a scrape may run while stop() removes the instance.
        self._clock = self._inst.clock_name()
        for c in self.cpus:
            self._window[c].add(started, {})

    def start(self) -> None:
        self.open()
        self._wake = os.pipe()
        os.set_blocking(self._wake[1], False)
        self._thread = threading.Thread(target=self._run, name="rtagent-interference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        if self._inst is not None:
            try:
                self._inst.remove()
            except tracefs.TracefsError as exc:
                log.warning("interference: %s", exc)
            self._inst = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _run(self) -> None:
        name_thread(READER_THREAD_NAME)
        if self._housekeeping:
            try:
                # The reader must never run on the CPUs it measures.
                Kernel().tasks.set_affinity(0, frozenset(self._housekeeping))
            except OSError as exc:
                log.warning("interference: cannot confine the reader to %s: %s", sorted(self._housekeeping), exc)
        waiter = self._waiter()
        while not self._stop.is_set():
            # Every poll_interval_s, or at once when a buffer is half full
            # (a burst that would otherwise overrun it before the timer).
            waiter.poll(self._poll * 1000)
            if self._stop.is_set():
                break
            try:
                self.poll()
            except Exception as exc:  # the daemon never dies on the sampler's behalf
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("interference: poll failed")
                self._stop.wait(self._poll)   # and never spins on a failing read

    def _waiter(self) -> select.poll:
        waiter = select.poll()
        if self._wake is not None:
            waiter.register(self._wake[0], select.POLLIN)
        if self._inst is not None:
            for c in self.cpus:
                waiter.register(self._inst.fd(c), select.POLLIN)
        return waiter

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
                                        acc.lost, pre, acc.inferred))
        active = self._inst is not None
        return InterferenceSnapshot(active, self.instance_name, self._clock if active else "", tuple(cpus),
                                    self.error)
