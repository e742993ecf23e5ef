"""B3's per-second rows, the wake-up floor and the drift-watch switch (pure)."""

from __future__ import annotations

import math
import os

import pytest

from bench import b3_cost, b3_floor

pytestmark = pytest.mark.unit


def _w(proc_cpu_s: float, wall_s: float = 10.0, switches: int = 10, us_per_wake: float | None = None,
       resyncs: float = 10.0, main_cpu_s: float | None = None) -> dict:
    w = {"proc_cpu_s": proc_cpu_s, "wall_s": wall_s, "main_switches": switches, "resyncs": resyncs,
         "main_cpu_s": proc_cpu_s if main_cpu_s is None else main_cpu_s}
    if us_per_wake is not None:
        w["sleeper"] = {"wakes": 10, "us_per_wake": us_per_wake}
    return w


def test_per_second_pools_windows_so_a_full_check_in_one_window_counts():
    # Three windows of 10 s; the full check (30 ms) landed in the last one.
    samples = [_w(0.001), _w(0.001), _w(0.031)]
    idle = [_w(0.0005)] * 3
    # Pooled: (0.033 - 0.0015) s / 30 s / 6 threads; a median would say 0.0005/10/6.
    assert b3_floor.per_second_above_idle(samples, idle, 6) == pytest.approx(1e6 * 0.0315 / 30 / 6)
    assert b3_floor.per_second_total(samples, 6) == pytest.approx(1e6 * 0.033 / 30 / 6)


def test_per_second_without_idle_or_threads_is_not_a_number():
    assert math.isnan(b3_floor.per_second_above_idle([_w(0.01)], [], 6))
    assert math.isnan(b3_floor.per_second_total([_w(0.01)], 0))


def test_floor_is_the_sleepers_cost_per_wake_times_the_extra_wakes():
    # Main thread: 15 wake-ups in 10 s with guests, 3 in 10 s idle; the
    # sleeper costs 120 µs a wake-up.
    samples = [_w(0.005, switches=15, us_per_wake=120.0), _w(0.005, switches=15, us_per_wake=130.0),
               _w(0.005, switches=15, us_per_wake=110.0)]
    idle = [_w(0.002, switches=3)] * 3
    f = b3_floor.floor_row(samples, idle, 6)
    assert f["us_per_wake"] == 120.0  # the median
    assert f["wakes_per_s"] == pytest.approx(1.5) and f["idle_wakes_per_s"] == pytest.approx(0.3)
    assert f["floor_us_per_thread_s"] == pytest.approx(120.0 * 1.2 / 6)
    assert f["floor_total_us_per_thread_s"] == pytest.approx(120.0 * 1.5 / 6)
    above = b3_floor.per_second_above_idle(samples, idle, 6)
    assert f["floor_share"] == pytest.approx(f["floor_us_per_thread_s"] / above)


def test_floor_without_a_sleeper_result_is_left_out():
    assert b3_floor.floor_row([_w(0.005)], [_w(0.001)], 6) == {}
    failed = _w(0.005)
    failed["sleeper"] = {"error": "boom"}
    assert b3_floor.floor_row([failed], [_w(0.001)], 6) == {}


def test_bare_sleeper_runs_and_reports_its_cpu_per_wake():
    r = b3_floor.run_sleeper(20.0, 0.3)
    assert "error" not in r, r
    assert r["wakes"] >= 1 and r["cpu_ns"] > 0 and r["us_per_wake"] > 0


def _row(per_s: float, guests: int = 1) -> dict:
    return {"guests": guests, "us_per_thread": 3.0, "cpu_pct": 0.1, "rss_mib": 39.0, "marginal_us_per_thread": 2.0, "resyncs_per_s": 0.1,
            "per_s_above_idle_us": per_s, "per_s_total_us": per_s + 1,
            "wake_floor": {"us_per_wake": 120.0, "wakes_per_s": 0.5, "idle_wakes_per_s": 0.3,
                           "floor_us_per_thread_s": 4.0, "floor_share": 0.5}}


def test_the_mark_is_on_the_per_second_row_and_a_fail_shows():
    rows = b3_cost._daemon_goal_rows({"rows": [_row(8.0), _row(4.0, 10)], "resync_s": 1.0}, "paused guests")
    per_s = [r for r in rows if r[0].startswith("CPU per managed thread per second")]
    assert [r[3] for r in per_s] == ["FAIL", "pass"]
    per_resync = [r for r in rows if "per resync" in r[0]]
    assert per_resync and all(r[3] == "" and r[2] == "mark on the row above" for r in per_resync)
    floor = [r for r in rows if "wake-up floor" in r[0]]
    assert floor and floor[0][1].startswith("4.0 µs (nan); 50 % of the row")
    flat = [r for r in rows if r[0].endswith("flat?")]
    assert flat and flat[0][3] == "FAIL"


def test_watch_config_lines_and_refusals():
    absent = {"resync_interval_s": 1.0}
    as_str, as_bool = {"drift_watch": "off"}, {"drift_watch": False}
    # The bench's default: the watch on wherever the daemon has one.
    assert b3_cost.effective_watch("default", as_str) == "on"
    assert b3_cost.effective_watch("default", absent) == "absent"
    assert b3_cost.watch_config("default", absent) == ""
    assert b3_cost.watch_config("default", as_str) == 'drift_watch = "on"\n'
    assert b3_cost.watch_config("off", as_str) == 'drift_watch = "off"\n'
    assert b3_cost.watch_config("on", as_bool) == "drift_watch = true\n"
    assert b3_cost.watch_config("off", as_bool) == "drift_watch = false\n"
    with pytest.raises(ValueError, match="no \\[daemon\\] drift_watch"):
        b3_cost.watch_config("off", absent)
    with pytest.raises(ValueError, match="one of"):
        b3_cost.watch_config("sometimes", as_str)


def test_runs_name_the_watch_when_set():
    res = {"daemon": {"drift_watch": "on"}, "daemon_watch_off": {"drift_watch": "off"},
           "daemon_running": {"drift_watch": "absent"}}
    assert [t for _d, t in b3_cost._runs(res)] == ["paused guests, drift watch on", "paused guests, drift watch off",
                                                  "running guests"]


def test_a_row_below_its_idle_baseline_claims_no_pass():
    rows = b3_cost._daemon_goal_rows({"rows": [_row(-3.0), _row(2.0, 10)], "resync_s": 1.0}, "paused guests")
    per_s = [r[3] for r in rows if r[0].startswith("CPU per managed thread per second")]
    assert per_s == ["n/a (below idle)", "pass"]
    assert [r[3] for r in rows if r[0].endswith("flat?")] == ["n/a (below idle)"]


def test_the_host_checks_are_timed_apart_and_added_at_their_share(tmp_path):
    cfg = tmp_path / "rtagent.toml"
    cfg.write_text('[host]\nrealtime_cpus = "1"\n')
    assert b3_cost.host_checks_config({"host_check_interval_s": 300.0}) == "host_check_interval_s = 86400.0\n"
    assert b3_cost.host_checks_config({}) == ""  # an rtagent that ran them inside every window
    share = b3_cost.host_checks_share(cfg)
    # One real run on this host, at the default interval's share.
    assert share["host_checks_ms"] > 0 and share["host_threads"] > 0 and share["host_checks_every_s"] == 300.0
    assert share["host_checks_us_per_s"] == pytest.approx(1000 * share["host_checks_ms"] / 300.0)

    row = _row(2.0)
    b3_cost._add_host_checks(row, {"host_checks_us_per_s": 30.0}, {**share, "host_checks_us_per_s": 90.0}, 6)
    assert row["per_s_above_idle_us"] == pytest.approx(2.0 + 60.0 / 6)  # the difference to idle's share
    twin_row = {**_row(2.0), "per_s_above_twin_us": 1.0}
    b3_cost._add_host_checks(twin_row, {"host_checks_us_per_s": 30.0}, {**share, "host_checks_us_per_s": 90.0}, 6)
    assert twin_row["per_s_above_twin_us"] == pytest.approx(1.0 + 60.0 / 6)
    assert row["per_s_total_us"] == pytest.approx(3.0 + 90.0 / 6) and row["cpu_pct"] == pytest.approx(0.1 + 0.009)
    assert row["host_checks_us_per_thread_s"] == pytest.approx(15.0)

    idle = {"rtagent_cpu_pct": 0.051, "rtagent_cpu_pct_windows": 0.049, **share, "host_checks_us_per_s": 20.0,
            "threads": {}}
    rows = b3_cost._daemon_goal_rows({"rows": [], "idle": idle, "resync_s": 1.0}, "paused guests")
    line = next(r for r in rows if r[0].startswith("idle daemon (no realtime guest"))
    assert line[1].startswith("0.051 % (windows 0.049 + host checks") and line[1].endswith(": 0.002)")
    assert line[3] == "FAIL"


def test_a_benchmarked_tree_is_byte_compiled_as_an_install_would(tmp_path):
    """A ``git archive`` has no ``.pyc``: the bench compiles it before its
    first daemon (with PYTHONDONTWRITEBYTECODE each start compiled every
    module in memory, for the daemon's whole life)."""
    from bench.common import installed_env

    (tmp_path / "rtagent").mkdir()
    (tmp_path / "rtagent" / "__init__.py").write_text('"""x"""\n')
    env = installed_env(tmp_path, NOTIFY_SOCKET="/x")
    assert list((tmp_path / "rtagent" / "__pycache__").glob("__init__.*.pyc"))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path.resolve()) and env["NOTIFY_SOCKET"] == "/x"


@pytest.mark.parametrize("rates, floor, quiet", [
    ([], 0.001, False),
    ([0.0005], 0.001, True),             # at the idle daemon's floor at once
    ([0.010], 0.001, False),             # one step above the floor says nothing yet
    ([0.010, 0.004], 0.001, False),      # still falling
    ([0.010, 0.004, 0.0038], 0.001, True),  # stopped falling: the steady state
    ([0.004, 0.006], 0.001, True),       # rose (a full check in the step): not falling either
])
def test_the_daemon_is_quiet_at_its_idle_floor_or_once_its_cpu_stops_falling(rates, floor, quiet):
    assert b3_cost.daemon_quiet(rates, floor) is quiet


def test_the_idle_floor_is_half_again_the_idle_daemon_and_a_margin():
    idle = {"windows": [_w(0.002), _w(0.001), _w(0.003)]}  # 0.01-0.03 % of a core
    assert b3_cost._idle_floor(idle) == pytest.approx(1.5 * 0.0002 + 1e-4)
    assert b3_cost._idle_floor({}) == pytest.approx(1e-4)


def test_the_settle_wait_says_what_the_daemon_counted_meanwhile():
    class Daemon:  # the bench's DaemonProc as the wait uses it: a pid and its status answer
        pid = os.getpid()
        answers = iter([{"resyncs": 5, "full_checks": 1, "events": {"proc": 2, "libvirt": 3}},
                        {"resyncs": 9, "full_checks": 1, "events": {"proc": 7, "libvirt": 3, "drift_watch": 1}}])

        def status(self):
            return {"daemon": next(self.answers)}

    st = b3_cost._daemon_settle(Daemon(), floor=1e6, timeout=5.0, step=0.01)  # any rate is under this floor
    assert st["quiet"] and len(st["cpu_pct"]) == 1
    assert st["counted"] == {"resyncs": 4, "proc": 5, "drift_watch": 1}
    assert b3_cost._settle_cell(st).endswith("%)") and b3_cost._settle_cell(None) == "n/a"
    never = b3_cost._daemon_settle(type("D", (Daemon,), {"answers": iter([{"resyncs": 1}] * 2)})(), floor=-1.0,
                                   timeout=0.0, step=0.01)  # the bound ran out before the first step
    assert never["cpu_pct"] == [] and not never["quiet"] and "not quiet" in b3_cost._settle_cell(never)


def _tw(proc_cpu_s: float, twin_cpu_s: float, wall_s: float = 10.0) -> dict:
    w = _w(proc_cpu_s, wall_s)
    w["twin_proc_cpu_s"] = twin_cpu_s
    return w


def test_above_the_twin_is_the_difference_in_the_same_windows_pooled():
    # The machine got dearer between the idle windows and the row's: the
    # earlier idle baseline says 10 µs a thread, the twin beside it 1.
    idle = [_tw(0.0010, 0.0010)] * 2
    samples = [_tw(0.0016, 0.00154), _tw(0.0016, 0.00154)]
    assert b3_floor.per_second_above_idle(samples, idle, 6) == pytest.approx(1e6 * 0.0006 / 10 / 6)
    assert b3_floor.per_second_above_twin(samples, 6) == pytest.approx(1e6 * 0.00006 / 10 / 6)
    assert b3_floor.twin_offset(idle) == pytest.approx(0.0)
    assert b3_floor.twin_offset([_tw(0.0012, 0.0010)]) == pytest.approx(20.0)  # µs a second


def test_without_the_twin_in_every_window_the_row_is_judged_above_idle():
    assert math.isnan(b3_floor.per_second_above_twin([_tw(0.001, 0.001), _w(0.001)], 6))
    assert math.isnan(b3_floor.twin_offset([_w(0.001)]))
    assert b3_floor.judged({"per_s_above_idle_us": 7.0}) == 7.0
    assert b3_floor.judged({"per_s_above_idle_us": 7.0, "per_s_above_twin_us": float("nan")}) == 7.0
    assert b3_floor.judged({"per_s_above_idle_us": 7.0, "per_s_above_twin_us": 2.0}) == 2.0


def test_the_mark_follows_the_twin_and_shows_the_earlier_baseline_beside_it():
    r = _row(42.0)  # above the idle daemon measured minutes before: FAIL
    r["per_s_above_twin_us"] = 2.5
    d = {"rows": [r, _row(1.0, 10)], "resync_s": 1.0,
         "idle": {"rtagent_cpu_pct": 0.012, "twin_offset_us_per_s": -3.0}}
    rows = b3_cost._daemon_goal_rows(d, "paused guests")
    first = next(x for x in rows if x[0].startswith("CPU per managed thread per second, 1 "))
    assert "above the idle twin" in first[0] and first[1].startswith("2.5 µs (42.0;") and first[3] == "pass"
    flat = next(x for x in rows if "flat?" in x[0])
    assert flat[1] == "2.5 / 1.0 µs" and flat[3] == "pass"
    err = next(x for x in rows if "twin method's error" in x[0])
    assert err[1].startswith("-3.0 µs/s") and err[2] == "reference"
