"""The drift watch's pure parts: enter/exit pairing, the decoder over pages
built byte by byte from this kernel's real format files, stale instances,
the cadence it allows and the tid → guest map."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from rtagent.daemon.cadence import due_after
from rtagent.daemon.steady import Baseline, SteadyCheck
from rtagent.kernel import tracefs
from rtagent.kernel.probe import Expected
from rtagent.kernel.schedwatch import (FILTER_MAX, NOTHING, Decoder, Event, EventKind, Pairing, instance_name, stale_instances,
                                      target_filter)
from tests.unit.test_tracefs_decode import DATA, HEADER, entry, page

pytestmark = pytest.mark.unit

ENTER, EXIT, ATTACH = EventKind.ENTER, EventKind.EXIT, EventKind.ATTACH


def test_exit_yields_the_target_its_enter_named():
    p = Pairing()
    # taskset -p 4245 from task 900; chrt on itself (pid 0) from task 901.
    got = p.feed([Event(10, ENTER, 900, 4245), Event(11, ENTER, 901, 0), Event(12, EXIT, 900, 0),
                  Event(13, EXIT, 901, 0)])
    assert got == ({4245, 901}, set(), False, 12)
    assert p.pending == {}


def test_enter_alone_yields_nothing_until_its_exit_lands():
    p = Pairing()
    assert p.feed([Event(10, ENTER, 900, 4245)]) == (set(), set(), False, None)
    assert p.feed([Event(20, EXIT, 900, 0)]) == ({4245}, set(), False, 20)


def test_a_refused_syscall_changed_nothing():
    p = Pairing()
    assert p.feed([Event(10, ENTER, 900, 4245), Event(11, EXIT, 900, -1)]) == (set(), set(), False, None)


def test_an_exit_without_its_enter_is_someone_elses():
    # Its enter was filtered out in the kernel (another process's target).
    assert Pairing().feed([Event(10, EXIT, 900, 0)]) == (set(), set(), False, None)


def test_kernel_filters_name_the_targets_and_self_calls():
    assert target_filter([12, 11], self_calls=False) == "(pid >= 11 && pid <= 12)"
    assert target_filter([14, 11], self_calls=False) == "pid == 11 || pid == 14"
    assert target_filter([11], self_calls=True) == "pid == 11 || (pid == 0 && (common_pid == 11))"
    assert target_filter([], self_calls=True) == NOTHING
    # Too long for one filter write even with ranges: the reader filters alone.
    assert target_filter(range(100_000, 3_000_000, 5000), self_calls=True) is None


def _passes(expr: str, pid: int, common_pid: int) -> bool:
    """The kernel filter's meaning, evaluated in Python."""
    code = _compiled.get(expr) or _compiled.setdefault(
        expr, compile(expr.replace("&&", "and").replace("||", "or"), "<filter>", "eval"))
    return eval(code, {}, {"pid": pid, "common_pid": common_pid})


_compiled: dict[str, object] = {}


def test_consecutive_targets_are_one_range_and_nothing_else_passes():
    tids = [*range(5000, 5006), 5010, *range(7000, 7003)]
    f = target_filter(tids, self_calls=False)
    assert f == "(pid >= 5000 && pid <= 5005) || pid == 5010 || (pid >= 7000 && pid <= 7002)"
    assert [t for t in range(4990, 7010) if _passes(f, t, 1)] == tids


def test_a_hundred_guests_fit_one_write_by_joining_ranges_and_every_target_passes():
    import random

    rng = random.Random(7)
    tids: list[int] = []
    for g in range(100):  # six threads born together and one later, guests apart
        t0 = 20_000 + g * rng.randint(40, 70)
        tids += [t0 + i for i in range(5)] + [t0 + rng.randint(8, 30)]
    for self_calls in (False, True):
        f = target_filter(tids, self_calls=self_calls)
        assert f is not None and len(f) < FILTER_MAX
        assert all(_passes(f, t, 1) for t in tids)
        if self_calls:  # a call on itself (pid 0) by a managed thread
            assert all(_passes(f, 0, t) for t in tids) and not _passes(f, 0, 1)
        extra = [t for t in range(min(tids), max(tids) + 1) if t not in set(tids) and _passes(f, t, 1)]
        assert len(extra) < 3 * len(tids)  # a few other threads' events, which the reader drops


def test_cgroup_moves_are_their_own_set():
    got = Pairing().feed([Event(10, ATTACH, 1, 4245), Event(9, ATTACH, 1, 4246)])
    assert got == (set(), {4245, 4246}, False, 9)


def _fmt(name: str) -> tracefs.EventFormat:
    return tracefs.parse_event_format((DATA / f"{name}.format").read_text(), name.split("_", 1)[0])


def _sys_payload(f: tracefs.EventFormat, caller: int, arg: int) -> bytes:
    buf = bytearray(40 if f.name.startswith("sys_enter") else 24)
    struct.pack_into("<H", buf, 0, f.id)
    struct.pack_into("<i", buf, 4, caller)
    struct.pack_into("<Q" if f.name.startswith("sys_enter") else "<q", buf, 16, arg)
    return bytes(buf)


def _attach_payload(f: tracefs.EventFormat, caller: int, pid: int) -> bytes:
    buf = bytearray(40)
    struct.pack_into("<H", buf, 0, f.id)
    struct.pack_into("<i", buf, 4, caller)
    struct.pack_into("<i", buf, 24, pid)
    return bytes(buf)


def test_decoder_reads_the_real_formats():
    enter, exit_, attach = (_fmt("syscalls_sys_enter_sched_setaffinity"), _fmt("syscalls_sys_exit_sched_setaffinity"),
                            _fmt("cgroup_cgroup_attach_task"))
    dec = Decoder({f.id: f for f in (enter, exit_, attach)})
    body = (entry(5, _sys_payload(enter, 900, 4245)) + entry(3, _sys_payload(exit_, 900, 0))
            + entry(2, _attach_payload(attach, 77, 4246)) + entry(1, _sys_payload(exit_, 901, -22)))
    events, lost = dec.events([page(1_000, body)], HEADER)
    assert lost == 0
    assert events == [Event(1_005, ENTER, 900, 4245), Event(1_008, EXIT, 900, 0), Event(1_010, ATTACH, 77, 4246),
                      Event(1_011, EXIT, 901, -22)]


def test_decoder_counts_lost_events():
    enter = _fmt("syscalls_sys_enter_sched_setaffinity")
    events, lost = Decoder({enter.id: enter}).events([page(1, entry(1, _sys_payload(enter, 1, 2)), missed=7)], HEADER)
    assert lost == 7 and len(events) == 1


def test_stale_instances_are_those_of_dead_pids():
    names = ["rtagent-watch-100", "rtagent-watch-200", "rtagent-watch-x", "other-100", "rtagent-watch-100-1"]
    assert stale_instances(names, alive=lambda pid: pid == 200) == ["rtagent-watch-100"]
    assert instance_name(4242) == "rtagent-watch-4242"


def test_watched_cadence_backs_off_but_keeps_the_full_check():
    # Watch off: every interval, as before.
    assert due_after(100.0, 1.0, idle=False, probe_every_s=5.0, next_full=130.0) == 101.0
    # Watch on: the watched interval, or the full check when that comes first...
    assert due_after(100.0, 1.0, idle=False, probe_every_s=5.0, next_full=130.0, watched_s=10.0) == 110.0
    assert due_after(100.0, 1.0, idle=False, probe_every_s=5.0, next_full=104.0, watched_s=10.0) == 104.0
    # ...but never sooner than the normal interval.
    assert due_after(100.0, 1.0, idle=False, probe_every_s=5.0, next_full=90.0, watched_s=10.0) == 101.0
    # An idle daemon: its liveness probe's cadence, which with the watch
    # healthy is the watched interval (as with guests), or the full check.
    assert due_after(100.0, 1.0, idle=True, probe_every_s=5.0, next_full=130.0) == 105.0
    assert due_after(100.0, 1.0, idle=True, probe_every_s=5.0, next_full=130.0, watched_s=10.0) == 110.0
    assert due_after(100.0, 1.0, idle=True, probe_every_s=5.0, next_full=107.0, watched_s=10.0) == 107.0
    assert due_after(100.0, 1.0, idle=True, probe_every_s=15.0, next_full=130.0, watched_s=10.0) == 115.0


def test_owners_map_tids_to_the_guest_whose_baseline_holds_them():
    told: list[frozenset[int]] = []
    steady = SteadyCheck(probe=object(), on_owners=told.append)
    steady._baselines["u1"] = Baseline(10, (Expected.of(11, "fifo", 1, {1}), Expected.of(12, "other", 0, {0})))
    steady._owner.update({11: "u1", 12: "u1"})
    steady._baselines["u2"] = Baseline(20, (Expected.of(21, "other", 0, {0}),))
    steady._owner[21] = "u2"
    assert steady.owners([11, 21, 99]) == {"u1": {11}, "u2": {21}}
    steady.forget("u1")
    assert steady.owners([11, 12, 21]) == {"u2": {21}}
    assert told == [frozenset({21})]  # the drift watch's filter follows
    steady.forget("u1")
    assert len(told) == 1  # nothing changed: not told again


def test_watched_interval_is_validated_and_never_shortens_the_resync():
    from rtagent.config import parse_config
    from rtagent.errors import ConfigError

    # A long resync_interval_s with the default watched interval: valid, and
    # the watch leaves the cadence as it is.
    cfg = parse_config({"daemon": {"resync_interval_s": 3600.0}}, resolve=False)
    assert cfg.daemon.watched_resync_interval_s < cfg.daemon.resync_interval_s
    assert due_after(0.0, 3600.0, idle=False, probe_every_s=5.0, next_full=30.0,
                     watched_s=cfg.daemon.watched_resync_interval_s) == 3600.0
    for bad in (0.01, 4000, True, "10"):
        with pytest.raises(ConfigError, match="daemon.watched_resync_interval_s"):
            parse_config({"daemon": {"watched_resync_interval_s": bad}}, resolve=False)
    with pytest.raises(ConfigError, match="daemon.drift_watch = 'yes': must be one of: auto, on, off"):
        parse_config({"daemon": {"drift_watch": "yes"}}, resolve=False)


def _cfg(mode: str):
    from rtagent.config import parse_config

    return parse_config({"daemon": {"drift_watch": mode}}, resolve=False)


def test_a_missing_tracefs_is_a_start_error_when_on_and_said_when_auto(monkeypatch):
    from rtagent.daemon.driftwatch import DriftWatch, DriftWatchError
    from rtagent.kernel import tracefs as tfs
    from rtagent.state import StateStore

    monkeypatch.setattr(tfs, "find_tracefs", lambda *a, **k: None)
    store, put = StateStore(), []
    with pytest.raises(DriftWatchError, match='drift_watch = "on".*tracefs is not mounted'):
        DriftWatch(store, put.append).start(_cfg("on"))
    w = DriftWatch(store, put.append)
    w.start(_cfg("auto"))
    assert not w.healthy
    assert store.daemon.drift_watch["state"] == "unavailable"
    assert "tracefs is not mounted" in store.daemon.drift_watch["reason"]
    off = DriftWatch(store, put.append)
    off.start(_cfg("off"))
    assert store.daemon.drift_watch["state"] == "off" and not off.healthy and put == []


def test_status_line_says_what_the_watch_does():
    from rtagent.commands.status import _drift_watch

    assert _drift_watch({"state": "running", "events": 12, "lost": 0, "interval_s": 10.0}) == \
        "running (12 events, 0 lost; resync every 10.0s)"
    assert _drift_watch({"state": "unavailable", "reason": "tracefs is not mounted"}) == \
        "unavailable (tracefs is not mounted)"
    assert _drift_watch({"state": "off"}) == "off" and _drift_watch(None) == "off"


def test_metrics_say_whether_the_watch_runs_and_count_its_events():
    from rtagent.daemon.driftwatch import DriftWatch
    from rtagent.kernel.schedwatch import Notice
    from rtagent.state import StateStore
    from tests.unit.test_metrics import scrape

    store = StateStore()
    _, s = scrape(store)
    assert [x.value for x in s["rtagent_drift_watch_up"]] == [0]
    store.daemon.drift_watch = {"state": "running", "reason": "", "interval_s": 10.0}
    DriftWatch(store, lambda _item: None)._notice(Notice(events=3, lost=2))
    _, s = scrape(store)
    assert [x.value for x in s["rtagent_drift_watch_up"]] == [1]
    assert {x.labels["source"]: x.value for x in s["rtagent_events_total"]} == {"drift_watch": 3}
    assert {x.labels["source"]: x.value for x in s["rtagent_events_dropped_total"]} == {"drift_watch": 2}


def test_instance_check_reads_tracing_on_and_set_event(tmp_path):
    """The reader's 30 s look (SchedWatch.intact) asks two files per
    instance: tracing off, an event missing from set_event, or the instance
    gone each say so."""
    inst = tracefs.Instance(root=tmp_path, name="rtagent-watch-1", cpus=frozenset({0}))
    events = (("syscalls", "sys_enter_sched_setaffinity"), ("cgroup", "cgroup_attach_task"))
    with pytest.raises(OSError):
        inst.not_tracing(events)  # no instance directory
    d = Path(inst.path)
    d.mkdir(parents=True)
    (d / "tracing_on").write_text("1\n")
    (d / "set_event").write_text("syscalls:sys_enter_sched_setaffinity\ncgroup:cgroup_attach_task\n")
    assert inst.not_tracing(events) is None
    (d / "set_event").write_text("cgroup:cgroup_attach_task\n")
    assert inst.not_tracing(events) == f"event syscalls:sys_enter_sched_setaffinity disabled in {inst.path}"
    (d / "tracing_on").write_text("0\n")
    assert inst.not_tracing(events) == f"tracing turned off in {inst.path}"
