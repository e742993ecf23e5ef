"""The descriptor budget: client caps fit under RLIMIT_NOFILE with the
enforcement reserve to spare."""

from __future__ import annotations

import resource

import pytest

from rtagent.monitor.fdlimit import ENFORCEMENT_RESERVE, client_budget, raise_nofile

pytestmark = pytest.mark.unit


def test_caps_that_fit_are_kept():
    b = client_budget(65536, 64, 64)
    assert (b.metrics, b.status, b.lowered) == (64, 64, False)


@pytest.mark.parametrize("soft", [1024, 300, ENFORCEMENT_RESERVE + 10, 16])
def test_caps_are_lowered_to_leave_the_reserve(soft, caplog):
    b = client_budget(soft, 5000, 5000)
    assert b.lowered and b.metrics >= 1 and b.status >= 1
    assert b.metrics + b.status <= max(2, soft - ENFORCEMENT_RESERVE)
    assert "metrics.max_connections lowered" in caplog.text


def test_raise_nofile_reaches_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        got = raise_nofile()
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got == (hard if hard != resource.RLIM_INFINITY else got) and got >= min(256, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_scrapes_descriptors_come_after_the_clients():
    """The kept schedstat descriptors get what the reserve and the client caps
    leave, at most COUNTER_FDS, and never push the clients down."""
    from rtagent.monitor.fdlimit import COUNTER_FDS

    assert client_budget(65536, 64, 64).counters == COUNTER_FDS
    b = client_budget(1024, 64, 64)
    assert (b.metrics, b.status, b.counters) == (64, 64, 1024 - ENFORCEMENT_RESERVE - 128)
    b = client_budget(ENFORCEMENT_RESERVE + 100, 64, 64)
    assert (b.metrics, b.status, b.counters) == (32, 32, 36)
    assert client_budget(ENFORCEMENT_RESERVE + 10, 5000, 5000).counters >= 0
    assert client_budget(65536, 64, 64, counters=0).counters == 0
