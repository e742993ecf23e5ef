"""tracefs: a dedicated trace instance and its binary per-CPU buffers.

Everything the decoder needs comes from tracefs itself: the ring-buffer page
header (``events/header_page``), each event's field layout
(``events/<system>/<event>/format``) and softirq vector names (the format's
``__print_symbolic`` table).  Only the entry header encoding (type_len 5 bits,
time_delta 27 bits, the padding/time-extend/time-stamp types 29/30/31) is
fixed here: it is the documented ABI that ``events/header_event`` prints and
that trace-cmd's libtraceevent hard-codes too.

Reading costs the traced CPU next to nothing beyond writing the events: the
buffers are read with ``O_NONBLOCK`` from a housekeeping CPU on a timer, and
a reader waiting in ``poll()`` between reads is woken only when a buffer is
``buffer_percent`` (``WAKE_PERCENT``) full.  The wakeup is an ``irq_work``
self-IPI *on the traced CPU*; with ``buffer_percent`` 0 it would be sent
for every event — exactly the noise we measure.
"""

from __future__ import annotations

import errno
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..cpulist import format_hexmask
from . import fs
from ..errors import RtagentError

DEFAULT_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Ring-buffer entry types (include/linux/ring_buffer.h).
_TYPE_PADDING = 29
_TYPE_TIME_EXTEND = 30
_TYPE_TIME_STAMP = 31
_TS_SHIFT = 27
_TS_MSB = ~((1 << 59) - 1) & ((1 << 64) - 1)
# Page ``commit`` flag bits (kernel/trace/ring_buffer.c).
_MISSED_EVENTS = 1 << 31
_MISSED_STORED = 1 << 30
_COMMIT_MASK = (1 << 30) - 1
WAKE_PERCENT = 50     # buffer_percent: see Instance._configure


class TracefsError(RtagentError):
    """tracefs is missing, an event is unknown, or the kernel refused a write."""


# ---------------------------------------------------------------------------
# formats


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    signed: bool
    data_loc: bool = False   # __data_loc: u32 = (length << 16) | offset
    is_string: bool = False  # char[N] or __data_loc char[]


@dataclass(frozen=True)
class EventFormat:
    system: str
    name: str
    id: int
    fields: dict[str, Field]
    symbols: dict[int, str] = field(default_factory=dict)  # first __print_symbolic table

    def get(self, payload: bytes, name: str) -> int | str:
        f = self.fields[name]
        if f.data_loc:
            (loc,) = struct.unpack_from("<I", payload, f.offset)
            start, length = loc & 0xFFFF, loc >> 16
            return payload[start:start + length].split(b"\0", 1)[0].decode("utf-8", "replace")
        if f.is_string:
            raw = payload[f.offset:f.offset + f.size]
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        raw = payload[f.offset:f.offset + f.size]
        return int.from_bytes(raw, "little", signed=f.signed)


    def reader(self, names: tuple[str, ...]) -> Callable[[bytes, int], tuple]:
        """A fast reader of fixed-size fields: ``read(buf, offset)`` → their
        values in ``names`` order (char arrays as raw bytes, NUL-padded).
        One ``struct`` unpack at the field offsets this kernel's format
        gives, for the hot path; :meth:`get` for everything else."""
        fields = sorted((self.fields[n] for n in names), key=lambda f: f.offset)
        fmt, pos = "<", 0
        for f in fields:
            if f.data_loc or f.offset < pos:
                raise TracefsError(f"{self.system}:{self.name}: field {f.name} cannot be read at a fixed offset")
            fmt += f"{f.offset - pos}x" if f.offset > pos else ""
            if f.is_string:
                fmt += f"{f.size}s"
            else:
                code = {1: "b", 2: "h", 4: "i", 8: "q"}.get(f.size)
                if code is None:
                    raise TracefsError(f"{self.system}:{self.name}: field {f.name} has size {f.size}")
                fmt += code if f.signed else code.upper()
            pos = f.offset + f.size
        st = struct.Struct(fmt)
        order = [fields.index(self.fields[n]) for n in names]

        def read(buf: bytes, offset: int) -> tuple:
            vals = st.unpack_from(buf, offset)
            return tuple(vals[i] for i in order)
        return read


_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<sig>\d+);")
_SYMBOL = re.compile(r"\{\s*(-?\d+|0x[0-9a-fA-F]+)\s*,\s*\"([^\"]*)\"\s*\}")


def parse_event_format(text: str, system: str = "") -> EventFormat:
    """One ``events/<system>/<event>/format`` file."""
    name, ident = None, None
    fields: dict[str, Field] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("ID:"):
            ident = int(line.split(":", 1)[1])
        m = _FIELD.search(line)
        if m:
            decl = m["decl"].strip()
            fname = re.sub(r"\[.*\]$", "", decl.split()[-1])
            fields[fname] = Field(fname, int(m["off"]), int(m["size"]), m["sig"] == "1",
                                  data_loc="__data_loc" in decl, is_string=decl.split()[0] in ("char", "__data_loc") and "char" in decl)
    if name is None or ident is None:
        raise TracefsError(f"tracefs event format without name/ID: {text[:80]!r}")
    symbols: dict[int, str] = {}
    fmt = text.split("print fmt:", 1)[1] if "print fmt:" in text else ""
    if "__print_symbolic" in fmt:
        table = fmt.split("__print_symbolic", 1)[1]
        for num, sym in _SYMBOL.findall(table):
            symbols[int(num, 0)] = sym
    return EventFormat(system, name, ident, fields, symbols)


@dataclass(frozen=True)
class PageHeader:
    ts_offset: int
    commit_offset: int
    commit_size: int
    data_offset: int


def parse_header_page(text: str) -> PageHeader:
    """``events/header_page``: where the page timestamp, commit and data are."""
    offs: dict[str, tuple[int, int]] = {}
    for m in re.finditer(r"field:\s*(?:[\w ]+?)\s+(\w+);\s*offset:(\d+);\s*size:(\d+);", text):
        offs.setdefault(m[1], (int(m[2]), int(m[3])))
    try:
        return PageHeader(offs["timestamp"][0], offs["commit"][0], offs["commit"][1], offs["data"][0])
    except KeyError as exc:
        raise TracefsError(f"events/header_page lacks field {exc.args[0]}") from None


# ---------------------------------------------------------------------------
# pages


@dataclass(frozen=True)
class RawRecord:
    ts: int          # trace clock, ns
    payload: bytes   # starts with common_type (u16)

    @property
    def event_id(self) -> int:
        return int.from_bytes(self.payload[:2], "little")


@dataclass(frozen=True)
class DecodedPage:
    records: tuple[RawRecord, ...]
    missed: int          # events the kernel dropped before this page (-1: some, count unknown)


def page_words(page: bytes) -> memoryview:
    """The page as native 32-bit words: every ring-buffer entry and every
    fixed field of the events decoded here sits on a 4-byte boundary, and
    indexing a word view is the cheapest read Python has (half a
    ``struct.unpack_from``)."""
    if len(page) % 4:
        page = bytes(page) + b"\0" * (4 - len(page) % 4)
    return memoryview(page).cast("I")


def page_records(page: bytes, header: PageHeader) -> tuple[list[tuple[int, int]], int]:
    """One ``trace_pipe_raw`` sub-buffer → ``([(ts, offset), ...], missed)``:
    each record's payload starts at ``page[offset]`` (not copied: this is
    the hot path).  ``missed``: events the kernel dropped before this page
    (-1: some, count unknown).  A partly written page (the writer was still
    on it when it was read) ends at its ``commit``; the rest of it comes
    in a later read, with the page timestamp of the last record read."""
    if len(page) < header.data_offset:
        return [], 0
    words = page_words(page)
    ts = words[header.ts_offset >> 2] | words[(header.ts_offset >> 2) + 1] << 32
    commit = words[header.commit_offset >> 2]          # flags and size are in the low word
    start = header.data_offset
    end = min(start + (commit & _COMMIT_MASK), len(page))
    missed = 0
    if commit & _MISSED_EVENTS:
        missed = -1
        if commit & _MISSED_STORED and end + 8 <= len(page):
            missed = _U64.unpack_from(page, end)[0] if header.commit_size == 8 else _U32.unpack_from(page, end)[0]
    return _entries(words, start, end, ts), missed


def pages_records(pages: Iterable[bytes], header: PageHeader) -> Iterator[tuple[bytes, list[tuple[int, int]], int]]:
    """:func:`page_records` of each page: ``(page, records, missed)``, with
    ``missed`` ≥ 1 when the kernel dropped events before the page (1 when it
    did not say how many), else 0."""
    for page in pages:
        recs, missed = page_records(page, header)
        yield page, recs, max(missed, 1) if missed else 0


def decode_page(page: bytes, header: PageHeader) -> DecodedPage:
    """:func:`page_records` with the payloads copied out (tests, tools)."""
    recs, missed = page_records(page, header)
    out = []
    for i, (ts, off) in enumerate(recs):
        nxt = recs[i + 1][1] if i + 1 < len(recs) else len(page)
        out.append(RawRecord(ts, bytes(page[off:nxt])))
    return DecodedPage(tuple(out), missed)


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _entries(words: memoryview, pos: int, end: int, ts: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    append = out.append
    while pos + 4 <= end:
        word = words[pos >> 2]
        type_len = word & 0x1F
        if 0 < type_len <= 28:              # the common case: a small event
            ts += word >> 5
            nxt = pos + 4 + type_len * 4
            if nxt > end:
                break
            append((ts, pos + 4))
            pos = nxt
            continue
        if pos + 8 > end:
            break
        length = words[(pos >> 2) + 1]
        if type_len == _TYPE_PADDING:
            if word >> 5 == 0:    # the rest of the page is unused
                break
            pos += 4 + length
        elif type_len == _TYPE_TIME_EXTEND:
            ts += (length << _TS_SHIFT) + (word >> 5)
            pos += 8
        elif type_len == _TYPE_TIME_STAMP:
            ts = ((length << _TS_SHIFT) + (word >> 5)) | (ts & _TS_MSB)
            pos += 8
        else:                     # type_len 0: length word first
            ts += word >> 5
            if length <= 4 or pos + 4 + length > end:
                break
            append((ts, pos + 8))
            pos += 4 + length
    return out


# ---------------------------------------------------------------------------
# the filesystem


_join = os.path.join
_read = fs.read_text  # the floor's one os.read of a small file


def find_tracefs(mounts_path: str = "/proc/self/mounts", candidates: Iterable[str] = DEFAULT_MOUNTS) -> str | None:
    """Where tracefs is mounted (the first ``tracefs`` line of the mount
    table, else a candidate directory that looks like tracefs).  Paths here
    are strings joined by ``os.path``: ``pathlib`` would bring
    ``urllib.parse`` and ``ipaddress`` into the daemon (docs/design.md,
    "What the daemon imports")."""
    try:
        lines = fs.read_text(mounts_path).splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            return parts[1].replace("\\040", " ")
    for cand in candidates:
        if os.path.isdir(_join(cand, "instances")) and os.path.isdir(_join(cand, "events")):
            return str(cand)
    return None


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except OSError as exc:
        raise TracefsError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


@dataclass
class Instance:
    """A tracefs instance of our own (``instances/<name>``): its own buffers,
    ``tracing_cpumask`` and enabled events, invisible to other tracers."""

    root: str
    name: str
    cpus: frozenset[int]
    formats: dict[int, EventFormat] = field(default_factory=dict)
    header: PageHeader | None = None
    subbuf_size: int = 4096
    _fds: dict[int, int] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return _join(self.root, "instances", self.name)

    @classmethod
    def create(cls, root: str, name: str, cpus: Iterable[int], events: Iterable[tuple[str, str]],
               *, optional_events: Iterable[tuple[str, str]] = (), buffer_kb: int = 1024,
               clock: str = "mono", wake_percent: int = WAKE_PERCENT) -> Instance:
        """Create (after removing a leftover of the same name: a daemon killed
        with SIGKILL cannot remove its own) and start tracing ``events`` on
        ``cpus``.  ``optional_events`` are enabled where the kernel has them.
        ``wake_percent``: the ``buffer_percent`` a poll()ing reader waits
        for (0: woken by every event, for rare events such as
        kernel/schedwatch.py's)."""
        if not _INSTANCE_NAME.match(name):
            raise TracefsError(f"bad tracefs instance name {name!r}: use letters, digits, '_', '-', '.'")
        inst = cls(root, name, frozenset(cpus))
        if os.path.exists(inst.path):
            remove_instance(root, name)
        try:
            os.mkdir(inst.path)
        except OSError as exc:
            raise TracefsError(f"cannot create tracefs instance {inst.path}: {exc.strerror}") from None
        try:
            inst._configure(events, optional_events, buffer_kb, clock, wake_percent)
        except BaseException:
            inst.remove()
            raise
        return inst

    def _configure(self, events: Iterable[tuple[str, str]], optional: Iterable[tuple[str, str]],
                   buffer_kb: int, clock: str, wake_percent: int = WAKE_PERCENT) -> None:
        p = self.path
        _write(_join(p, "tracing_on"), "0")
        _write(_join(p, "tracing_cpumask"), format_hexmask(self.cpus))
        # An instance has a buffer on every CPU; only the traced ones need
        # one of size (the rest get the kernel's minimum, a page or two).
        per_cpu = _join(p, "per_cpu")
        for cpu in sorted(int(n[3:]) for n in os.listdir(per_cpu) if n[:3] == "cpu" and n[3:].isdigit()):
            _write(_join(per_cpu, f"cpu{cpu}", "buffer_size_kb"), str(buffer_kb) if cpu in self.cpus else "1")
        # A reader blocked in poll() is woken (by an irq_work on the traced
        # CPU) only once this share of the buffer is full, never per event:
        # 0 would mean a wakeup IPI on the realtime CPU for every event.
        if os.path.exists(_join(p, "buffer_percent")):
            _write(_join(p, "buffer_percent"), str(wake_percent))
        clocks = _read(_join(p, "trace_clock"))
        if clock in clocks.replace("[", " ").replace("]", " ").split():
            _write(_join(p, "trace_clock"), clock)
        self.header = parse_header_page(_read(_join(self.root, "events", "header_page")))
        sub = _join(p, "buffer_subbuf_size_kb")
        self.subbuf_size = int(_read(sub)) * 1024 if os.path.exists(sub) else os.sysconf("SC_PAGE_SIZE")
        for system, event in events:
            self._enable(system, event, required=True)
        for system, event in optional:
            self._enable(system, event, required=False)
        _write(_join(p, "tracing_on"), "1")

    def _enable(self, system: str, event: str, *, required: bool) -> None:
        fmt_path = _join(self.root, "events", system, event, "format")
        try:
            fmt = parse_event_format(_read(fmt_path), system)
        except OSError:
            if required:
                raise TracefsError(f"the kernel has no trace event {system}:{event} ({fmt_path})") from None
            return
        _write(_join(self.path, "events", system, event, "enable"), "1")
        self.formats[fmt.id] = fmt

    def not_tracing(self, events: Iterable[tuple[str, str]]) -> str | None:
        """None while the instance traces and every one of ``events`` is
        enabled in it; else what is wrong.  Two reads, ``tracing_on`` and
        ``set_event`` (every enabled event, ``system:event`` a line), through
        the floor's ``os.read``: one buffered ``open()`` of each event's
        ``enable`` file cost the drift watch's check ≈ 1 ms every 30 s.
        Raises OSError when the instance is gone."""
        if fs.read_text(_join(self.path, "tracing_on")).strip() != "1":
            return f"tracing turned off in {self.path}"
        enabled = set(fs.read_text(_join(self.path, "set_event")).split())
        for system, event in events:
            if f"{system}:{event}" not in enabled:
                return f"event {system}:{event} disabled in {self.path}"
        return None

    def set_filter(self, system: str, event: str, expr: str) -> None:
        """The instance's kernel-side filter of one enabled event (events
        that do not match are never written to its buffer)."""
        _write(_join(self.path, "events", system, event, "filter"), expr)

    def clock_name(self) -> str:
        text = _read(_join(self.path, "trace_clock"))
        m = re.search(r"\[(\w[\w-]*)\]", text)
        return m[1] if m else "local"

    def fd(self, cpu: int) -> int:
        """``per_cpu/cpu<N>/trace_pipe_raw``, opened once, non-blocking (to
        ``poll()`` on: readable when the buffer is ``WAKE_PERCENT`` full)."""
        fd = self._fds.get(cpu)
        if fd is None:
            fd = os.open(_join(self.path, "per_cpu", f"cpu{cpu}", "trace_pipe_raw"), os.O_RDONLY | os.O_NONBLOCK)
            self._fds[cpu] = fd
        return fd

    def read_pages(self, cpu: int, max_pages: int = 256) -> list[bytes]:
        """Every sub-buffer available now on ``cpu``, without blocking.  One
        ``read`` per page (the kernel hands out one per call); a fresh
        ``bytes`` each, as the decoder keys its comm cache on slices."""
        fd = self.fd(cpu)
        pages: list[bytes] = []
        for _ in range(max_pages):
            try:
                chunk = os.read(fd, self.subbuf_size)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if not chunk:
                break
            pages.append(chunk)
        return pages

    def remove(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        remove_instance(self.root, self.name)


def remove_instance(root: str, name: str) -> bool:
    """Remove ``instances/<name>`` if present (the kernel disables its events
    and frees its buffers).  True if it existed."""
    path = _join(root, "instances", name)
    if not os.path.exists(path):
        return False
    try:
        _write(_join(path, "tracing_on"), "0")
    except TracefsError:
        pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise TracefsError(f"cannot remove tracefs instance {path}: {exc.strerror} "
                           f"(a reader still has its buffers open?)") from None
    return True
