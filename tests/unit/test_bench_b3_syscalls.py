"""B3's drift-watch balance: the host's syscall count (one real count on this
host's tracefs) and the balance rows (pure)."""

from __future__ import annotations

import os

import pytest

from bench import b3_syscalls
from rtagent.kernel import tracefs

pytestmark = pytest.mark.unit


def test_written_events_are_the_kept_plus_the_overwritten():
    stats = "entries: 87\noverrun: 3180\ncommit overrun: 0\nbytes: 4000\noldest event ts:     0.000000\n"
    assert b3_syscalls.written_events(stats) == 3267


@pytest.mark.skipif(os.geteuid() != 0 or tracefs.find_tracefs() is None, reason="needs root and tracefs")
def test_a_count_sees_a_known_number_of_syscalls_and_leaves_no_instance():
    n = 200_000

    def calls():
        for _ in range(n):
            os.getppid()

    res = b3_syscalls.host_rate(seconds=1.0, during=calls)
    # The calls ran inside the window: a lower bound, whatever else the host did.
    assert res["per_s"] * res["seconds"] >= n
    root = tracefs.find_tracefs()
    assert not os.path.exists(os.path.join(root, "instances", f"{b3_syscalls.PREFIX}{os.getpid()}"))


def _row(guests: int, cpu_pct: float, rate: float | None = None) -> dict:
    r = {"guests": guests, "cpu_pct": cpu_pct}
    if rate is not None:
        r["host_syscalls"] = {"per_s": rate}
    return r


def test_the_balance_sets_the_daemons_saving_against_the_hosts_tax():
    res = {"syscall_cost": {"extra_ns": 25.0},
           "daemon": {"drift_watch": "on", "rows": [_row(1, 0.02, 10_000), _row(100, 0.17, 100_000)]},
           "daemon_watch_off": {"drift_watch": "off", "rows": [_row(1, 0.06), _row(100, 0.32)]},
           "daemon_running": {"drift_watch": "on", "rows": [_row(30, 0.06, 40_000)]}}
    rows = b3_syscalls.balance_rows(res)
    assert [r[1] for r in rows] == ["0.040 % / 0.025 %", "0.150 % / 0.250 %", "0.100 %"]
    assert [r[3] for r in rows] == ["saves more", "costs more", ""]
    assert "100,000/s × 25 ns" in rows[1][0]


def test_no_balance_without_both_series_or_the_syscall_cost():
    on = {"drift_watch": "on", "rows": [_row(1, 0.02, 10_000)]}
    assert b3_syscalls.balance_rows({"daemon": on, "daemon_watch_off": {"rows": [_row(1, 0.06)]}}) == []
    assert b3_syscalls.balance_rows({"syscall_cost": {"extra_ns": 25.0}, "daemon": on}) == []
