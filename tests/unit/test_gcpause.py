"""No cyclic collection during a /metrics render; start-up objects frozen
(rtagent/monitor/gcpause.py).  The freeze is checked in a fresh interpreter:
freezing pytest's own objects would outlive the test."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from rtagent.monitor import gcpause
from rtagent.monitor.exposition import FastMetric
from rtagent.monitor.httpd import MetricsHandler

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_nests_and_restores():
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off():
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()


def test_an_exception_inside_re_enables():
    with pytest.raises(ValueError), gcpause.paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_many_survivors_are_collected_on_leaving():
    """A render that leaves more tracked objects than the young generation's
    threshold has them collected on its own thread, at once."""
    kept = []
    with gcpause.paused():
        kept.extend([i] for i in range(gc.get_threshold()[0] * 3))
        assert gc.get_count()[0] > gc.get_threshold()[0]
    assert gc.get_count()[0] <= gc.get_threshold()[0]
    assert len(kept) == gc.get_threshold()[0] * 3


class _Probe(Collector):
    """Records whether the collector ran while families were collected."""

    def __init__(self, fail: bool = False):
        self.seen: list[bool] = []
        self.fail = fail

    def collect(self):
        self.seen.append(gc.isenabled())
        if self.fail:
            raise RuntimeError("render failed")
        m = FastMetric("rtagent_probe", "probe", "gauge", ["x"])
        m.add_metric(["a"], 1)
        yield m


@pytest.mark.parametrize("request_head", [b"GET /metrics HTTP/1.1\r\n\r\n",
                                          b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n"])
def test_the_endpoint_renders_with_the_collector_paused(request_head):
    reg = CollectorRegistry()
    probe = _Probe()
    reg.register(probe)
    answer = MetricsHandler(reg, reuse_s=0).answer(request_head)
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert probe.seen == [False]
    assert gc.isenabled()


def test_a_failed_render_re_enables_the_collector():
    reg = CollectorRegistry()
    probe = _Probe(fail=True)
    reg.register(probe)
    assert MetricsHandler(reg, reuse_s=0).answer(b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 500 ")
    assert probe.seen == [False] and gc.isenabled()


def test_freeze_startup_freezes_the_living_not_the_garbage():
    code = textwrap.dedent("""
        import gc, weakref
        from rtagent.monitor import gcpause

        class Node:
            pass

        alive = Node()
        garbage = Node(); garbage.me = garbage  # a cycle nothing refers to
        dead = weakref.ref(garbage); del garbage
        n = gcpause.freeze_startup()
        print(n > 1000, dead() is None, gc.get_freeze_count() == n, gc.isenabled())
        # Frozen objects are still freed by reference counting.
        ref = weakref.ref(alive); del alive
        print(ref() is None)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "True", "True"]
