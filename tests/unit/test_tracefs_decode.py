"""tracefs formats and ring-buffer pages: decoded from the real format files of
a 6.18 kernel (tests/data/tracefs) and pages built here byte by byte."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from rtagent.kernel import tracefs
from rtagent.monitor.interference import IntrEnter, IntrExit, Kind, Lost, Switch
from rtagent.monitor.interference_sampler import Decoder

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent.parent / "data" / "tracefs"


def fmt(name: str) -> tracefs.EventFormat:
    system = name.split("_", 1)[0] if not name.startswith("irq_vectors") else "irq_vectors"
    if name.startswith("irq_vectors"):
        system = "irq_vectors"
    elif name.startswith("irq_"):
        system = "irq"
    return tracefs.parse_event_format((DATA / f"{name}.format").read_text(), system)


HEADER = tracefs.parse_header_page((DATA / "header_page").read_text())


def test_header_page_layout():
    assert HEADER == tracefs.PageHeader(ts_offset=0, commit_offset=8, commit_size=8, data_offset=16)


def test_header_page_missing_field_is_an_error():
    with pytest.raises(tracefs.TracefsError, match="commit"):
        tracefs.parse_header_page("\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n")


def test_sched_switch_format_fields():
    f = fmt("sched_sched_switch")
    assert f.name == "sched_switch" and f.id == 372
    assert f.fields["next_pid"].offset == 56 and f.fields["next_comm"].is_string
    assert f.fields["prev_state"].size == 8 and f.fields["prev_state"].signed


def test_softirq_symbols_come_from_the_format():
    f = fmt("irq_softirq_entry")
    assert f.symbols[1] == "TIMER" and f.symbols[9] == "RCU" and len(f.symbols) == 10


def test_irq_name_is_data_loc():
    f = fmt("irq_irq_handler_entry")
    assert f.fields["name"].data_loc


# -- building pages ---------------------------------------------------------


def switch_payload(f, prev_pid, prev_state, next_pid, next_comm):
    buf = bytearray(64)
    struct.pack_into("<H", buf, 0, f.id)
    struct.pack_into("<16s", buf, 8, b"prev")
    struct.pack_into("<i", buf, 24, prev_pid)
    struct.pack_into("<q", buf, 32, prev_state)
    struct.pack_into("<16s", buf, 40, next_comm.encode())
    struct.pack_into("<i", buf, 56, next_pid)
    return bytes(buf)


def irq_entry_payload(f, irq, name):
    raw = name.encode() + b"\0"
    buf = bytearray(16 + len(raw))
    struct.pack_into("<H", buf, 0, f.id)
    struct.pack_into("<i", buf, 8, irq)
    struct.pack_into("<I", buf, 12, (len(raw) << 16) | 16)
    buf[16:] = raw
    while len(buf) % 4:
        buf.append(0)
    return bytes(buf)


def simple_payload(f, value, pid=0):
    buf = bytearray(12)
    struct.pack_into("<H", buf, 0, f.id)
    struct.pack_into("<i", buf, 4, pid)          # common_pid: the task the event interrupted
    struct.pack_into("<I", buf, 8, value)
    return bytes(buf)


def entry(delta, payload, *, force_len=False):
    assert len(payload) % 4 == 0
    if force_len or len(payload) > 28 * 4:
        return struct.pack("<II", (delta << 5) | 0, len(payload) + 4) + payload
    return struct.pack("<I", (delta << 5) | (len(payload) // 4)) + payload


def extend(delta):
    return struct.pack("<II", (delta & ((1 << 27) - 1)) << 5 | 30, delta >> 27)


def page(ts, body, *, missed=None, size=4096):
    commit = len(body)
    tail = b""
    if missed is not None:
        commit |= 1 << 31 | 1 << 30
        tail = struct.pack("<Q", missed)
    raw = struct.pack("<QQ", ts, commit) + body + tail
    return raw + b"\0" * (size - len(raw))


def test_decode_page_time_deltas_extend_and_padding():
    sw = fmt("sched_sched_switch")
    ent = fmt("irq_irq_handler_entry")
    body = (entry(100, switch_payload(sw, 0, 0, 42, "noise"))
            + entry(0, irq_entry_payload(ent, 36, "virtio1-req.0"), force_len=True)
            + extend(3 << 27)                                    # beyond 27 bits of delta
            + struct.pack("<II", (1 << 5) | 29, 12) + b"\0" * 8  # a discarded event
            + entry(7, switch_payload(sw, 42, 1, 0, "swapper/1")))
    d = tracefs.decode_page(page(1_000, body), HEADER)
    assert [r.ts for r in d.records] == [1_100, 1_100, 1_100 + (3 << 27) + 7]
    assert d.missed == 0
    assert ent.get(d.records[1].payload, "name") == "virtio1-req.0"
    assert sw.get(d.records[2].payload, "next_comm") == "swapper/1"


def test_decode_page_stops_at_null_padding_and_commit():
    sw = fmt("sched_sched_switch")
    body = entry(5, switch_payload(sw, 0, 0, 1, "a")) + struct.pack("<I", 29) + b"\xff" * 40
    d = tracefs.decode_page(page(10, body), HEADER)
    assert len(d.records) == 1


def test_decode_page_reports_missed_events():
    sw = fmt("sched_sched_switch")
    d = tracefs.decode_page(page(10, entry(5, switch_payload(sw, 0, 0, 1, "a")), missed=17), HEADER)
    assert d.missed == 17 and len(d.records) == 1


def test_truncated_page_yields_only_whole_records():
    sw = fmt("sched_sched_switch")
    raw = page(10, entry(5, switch_payload(sw, 0, 0, 1, "a")) * 2)[:16 + 68 + 10]
    assert len(tracefs.decode_page(raw, HEADER).records) == 1
    assert tracefs.decode_page(b"\0" * 8, HEADER).records == ()


def test_decoder_maps_records_to_accountant_events():
    formats = {f.id: f for f in (fmt(n) for n in (
        "sched_sched_switch", "irq_irq_handler_entry", "irq_irq_handler_exit",
        "irq_softirq_entry", "irq_softirq_exit", "irq_vectors_local_timer_entry", "irq_vectors_local_timer_exit"))}
    by_name = {f.name: f for f in formats.values()}
    body = (entry(1, switch_payload(by_name["sched_switch"], 0, 0, 42, "noise"))
            + entry(1, irq_entry_payload(by_name["irq_handler_entry"], 36, "virtio1-req.0"))
            + entry(1, simple_payload(by_name["irq_handler_exit"], 36))
            + entry(1, simple_payload(by_name["softirq_entry"], 4))
            + entry(1, simple_payload(by_name["softirq_exit"], 4))
            + entry(1, simple_payload(by_name["local_timer_entry"], 236, pid=4711))
            + entry(1, simple_payload(by_name["local_timer_exit"], 236, pid=4711)))
    events, lost = Decoder(formats).events([page(0, body, missed=3)], HEADER)
    assert lost == 3
    assert events == [
        Lost(1), Switch(1, 0, 0, 42, "noise", prev_comm="prev"),
        IntrEnter(2, Kind.IRQ, "virtio1-req.0", pid=0), IntrExit(3, Kind.IRQ, "", pid=0),
        IntrEnter(4, Kind.SOFTIRQ, "BLOCK", pid=0), IntrExit(5, Kind.SOFTIRQ, "BLOCK", pid=0),
        IntrEnter(6, Kind.IRQ, "local_timer", pid=4711), IntrExit(7, Kind.IRQ, "local_timer", pid=4711),
    ]


def test_cpumask_is_the_kernels_bitmap_format():
    # tracing_cpumask takes the format cpulist writes for every bitmap.
    from rtagent.cpulist import format_hexmask

    assert format_hexmask([1]) == "00000002"
    assert format_hexmask([0, 33]) == "00000002,00000001"


def test_find_tracefs_from_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nnodev /srv/trace tracefs rw 0 0\n")
    assert tracefs.find_tracefs(str(mounts), candidates=()) == "/srv/trace"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert tracefs.find_tracefs(str(mounts), candidates=(str(tmp_path / "none"),)) is None
    (tmp_path / "t" / "instances").mkdir(parents=True)
    (tmp_path / "t" / "events").mkdir()
    assert tracefs.find_tracefs(str(tmp_path / "absent"), candidates=(str(tmp_path / "t"),)) == str(tmp_path / "t")


def test_bad_instance_name_is_refused(tmp_path):
    with pytest.raises(tracefs.TracefsError, match="bad tracefs instance name"):
        tracefs.Instance.create(tmp_path, "../escape", [1], [])


def test_a_layout_the_word_reader_cannot_read_is_refused_by_name():
    """Fields are read as aligned 32-bit words; a kernel whose format puts
    one elsewhere makes the sampler fail loudly (the daemon then runs on
    without the accounting, saying why) instead of decoding garbage."""
    text = (DATA / "sched_sched_switch.format").read_text().replace("offset:24;", "offset:26;")
    odd = tracefs.parse_event_format(text, "sched")
    with pytest.raises(tracefs.TracefsError, match="prev_pid is not an aligned integer"):
        Decoder({odd.id: odd})
