"""The endpoint's server thread renders with Python's cyclic collector off
and turns it back on after every GET, whatever the answer (plain, gzip,
HEAD, a failed render), over real loopback sockets (rtagent/monitor/gcpause.py)."""

from __future__ import annotations

import gc
import socket
import threading

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from rtagent.config import MetricsConfig
from rtagent.monitor.exposition import FastMetric
from rtagent.monitor.metrics import serve
from rtagent.state import StateStore

pytestmark = pytest.mark.threads


class _Probe(Collector):
    """Where collect() ran and whether the collector was on meanwhile."""

    def __init__(self):
        self.seen: list[tuple[int, bool]] = []
        self.fail = False

    def collect(self):
        self.seen.append((threading.get_native_id(), gc.isenabled()))
        if self.fail:
            raise RuntimeError("render failed")
        m = FastMetric("rtagent_probe", "probe", "gauge", ["x"])
        m.add_metric(["a"], 1)
        yield m


def _get(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_every_render_on_the_server_thread_runs_with_the_collector_off():
    reg = CollectorRegistry()
    probe = _Probe()
    reg.register(probe)
    srv = serve(StateStore(), MetricsConfig(listen="127.0.0.1:0"), registry=reg, reuse_s=0.0)
    assert gc.isenabled()
    try:
        tid = srv.server._thread.native_id
        heads = [b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n"
                 b"Accept-Encoding: gzip\r\n\r\n", b"HEAD /metrics HTTP/1.1\r\n\r\n"]
        for head in heads:
            assert _get(srv.port, head).startswith(b"HTTP/1.0 200 ")
            assert gc.isenabled()  # back on once the answer is built
        probe.fail = True
        assert _get(srv.port, heads[0]).startswith(b"HTTP/1.0 500 ")
        assert gc.isenabled()
        assert probe.seen == [(tid, False)] * (len(heads) + 1)
    finally:
        srv.close()
