"""The /metrics server built on prometheus_client's make_wsgi_app: read-only
on every prometheus_client version (0.16, Debian 12's, answered POST with the
metrics), stops cleanly, binds IPv6 literals."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from rtagent.monitor import httpserve

pytestmark = pytest.mark.unit


def _registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Gauge("rtagent_test_value", "a value", registry=reg).set(7)
    return reg


def test_get_serves_and_writes_are_refused():
    httpd, thread = httpserve.start("127.0.0.1", 0, _registry())
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
        assert "rtagent_test_value 7.0" in urllib.request.urlopen(url, timeout=10).read().decode()
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            req = urllib.request.Request(url, data=b"rtagent_test_value 0\n", method=method)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code == 405, method
            assert err.value.headers["Allow"] == "GET, HEAD"
        assert "rtagent_test_value 7.0" in urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert not thread.is_alive()


def test_ipv6_literal_binds_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        httpd, thread = httpserve.start("::1", 0, _registry())
    except OSError as err:  # ::1 not configured (IPv6 disabled on lo)
        pytest.skip(f"cannot bind ::1: {err}")
    try:
        assert httpd.socket.family == socket.AF_INET6
        body = urllib.request.urlopen(f"http://[::1]:{httpd.server_address[1]}/metrics", timeout=10).read()
        assert b"rtagent_test_value" in body
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_unresolvable_host_raises_before_binding():
    with pytest.raises(socket.gaierror):
        httpserve.start("no-such-host.invalid", 0, _registry())
