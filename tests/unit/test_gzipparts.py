"""The /metrics gzip made of per-part deflate blocks: every inflater reads
it as the whole body, recurring parts are not compressed again, and the
endpoint's gzip answer is its plain answer, compressed."""

from __future__ import annotations

import gzip
import io
import zlib

import pytest
from prometheus_client import CollectorRegistry

from rtagent.monitor.gzipparts import PartsGzip
from rtagent.monitor.httpd import MetricsHandler
from tests.unit.test_exposition import _Fixed, _store
from tests.unit.test_metrics import report_counters

pytestmark = pytest.mark.unit


def _inflate_all_ways(data: bytes) -> set[bytes]:
    streamed = zlib.decompressobj(wbits=31)
    pieces = [streamed.decompress(data[i:i + 7]) for i in range(0, len(data), 7)]
    assert streamed.eof and not streamed.unused_data  # one member, nothing after it
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        via_file = f.read()
    return {gzip.decompress(data), b"".join(pieces) + streamed.flush(), via_file}


def test_the_parts_inflate_to_the_body():
    parts = [b"# HELP a x\n" * 300, b"", "b_total{domain=\"\u00e9\"} 1.0\n".encode() * 50, bytes(range(256)) * 40]
    z = PartsGzip()
    assert _inflate_all_ways(z.compress(parts)) == {b"".join(parts)}
    assert _inflate_all_ways(z.compress([])) == {b""}


def test_recurring_parts_are_compressed_once_and_changes_show():
    z = PartsGzip()
    static, static2 = b"rtagent_domain_info{domain=\"a\"} 1.0\n" * 500, b"# TYPE x gauge\nx 1.0\n"
    first = z.compress([static, b"counter 1.0\n", static2])
    assert z.compressed == 3 and gzip.decompress(first) == static + b"counter 1.0\n" + static2
    second = z.compress([static, b"counter 2.0\n", static2])
    assert z.compressed == 4  # only the part that changed
    assert gzip.decompress(second) == static + b"counter 2.0\n" + static2
    third = z.compress([static2, static])  # order and set change: still the body
    assert gzip.decompress(third) == static2 + static and z.compressed == 4


def test_the_endpoints_gzip_answer_is_its_plain_answer():
    store = _store()
    reg = CollectorRegistry()
    reg.register(_Fixed(store, version="9.9.9", counters=report_counters(store)))
    h = MetricsHandler(reg, reuse_s=0.0)
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        ask = f"GET /metrics HTTP/1.1\r\nAccept: {accept}\r\n".encode()
        plain = h.answer(ask + b"\r\n").partition(b"\r\n\r\n")[2]
        for _ in range(2):  # the second from kept blocks
            head, _, body = h.answer(ask + b"Accept-Encoding: gzip\r\n\r\n").partition(b"\r\n\r\n")
            assert b"Content-Encoding: gzip" in head and _inflate_all_ways(body) == {plain}
