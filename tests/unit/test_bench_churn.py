"""bench/b3_churn.py's verdict (pure): growth from the first empty reading to the last."""

from __future__ import annotations

import math

import pytest

from bench import b3_churn

pytestmark = pytest.mark.unit


def _cycle(full_anon: float, empty_anon: float, *, listed: bool = True) -> dict:
    return {"full": {"rss": 20 + full_anon, "anon": full_anon}, "empty": {"rss": 20 + empty_anon, "anon": empty_anon},
            "listed": listed, "forgotten": True}


def _result(*cycles: dict) -> dict:
    return {"tree": "T", "guests": 20, "start": {"rss": 35.0, "anon": 15.0}, "cycles": list(cycles), "load": [0.1]}


def test_a_high_water_mark_passes_and_a_daemon_that_keeps_growing_fails():
    flat = _result(_cycle(16.5, 15.6), _cycle(16.6, 15.7), _cycle(16.5, 15.7))
    assert b3_churn.growth([c["empty"] for c in flat["cycles"]]) == pytest.approx(0.1)
    assert "pass" in b3_churn.format_result(flat).splitlines()[-1]
    leak = _result(*(_cycle(16.5 + 0.3 * n, 15.6 + 0.3 * n) for n in range(4)))
    assert b3_churn.growth([c["empty"] for c in leak["cycles"]]) == pytest.approx(0.9)
    assert "FAIL" in b3_churn.format_result(leak).splitlines()[-1]


def test_one_cycle_has_no_verdict_and_an_unlisted_cycle_says_so():
    assert math.isnan(b3_churn.growth([{"anon": 1.0}]))
    text = b3_churn.format_result(_result(_cycle(16.5, 15.6, listed=False)))
    assert "n/a" in text.splitlines()[-1] and "not all listed" in text
