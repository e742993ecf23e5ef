"""The /metrics HTTP handling: request parsing, methods, paths, gzip, render
reuse; and the endpoint over real loopback sockets (IPv4, IPv6, TLS is in
test_metrics.py).  Read-only on every prometheus_client version we support
(Debian 12's 0.16 answered a POST with the metrics): the method check is ours."""

from __future__ import annotations

import gzip
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from rtagent.config import MetricsConfig
from rtagent.errors import RtagentError
from rtagent.monitor.httpd import MAX_REQUEST_BYTES, BadRequest, MetricsHandler, parse_request, target_path
from rtagent.monitor.metrics import serve
from rtagent.state import StateStore

pytestmark = pytest.mark.unit


def _registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Gauge("rtagent_test_value", "a value", registry=reg).set(7)
    return reg


def test_parse_waits_for_the_whole_head():
    assert parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n") is None
    req = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
    assert (req.method, req.path, req.headers["accept-encoding"]) == ("GET", "/metrics", "gzip")


@pytest.mark.parametrize("target", [
    "/metrics", "/metrics?x=1", "/metrics#frag", "/metrics?a=b#c", "/", "/a/b?c=d/e",
    "http://host/metrics", "https://host:9100/metrics?x=1", "http://host", "http://host?x",
    "*", "metrics", "/x://y",
])
def test_the_target_path_is_what_urlsplit_makes_of_it(target):
    from urllib.parse import urlsplit  # the reference; the daemon does not import it
    expect = urlsplit(target).path or ("/" if "://" in target else "")
    assert target_path(target) == expect


@pytest.mark.parametrize("head, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /metrics\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST_BYTES + 1), 431),
])
def test_bad_heads_are_refused(head, status):
    with pytest.raises(BadRequest) as err:
        parse_request(head)
    assert err.value.status == status


def test_methods_paths_and_gzip():
    h = MetricsHandler(_registry())
    ok = h.answer(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert ok.startswith(b"HTTP/1.0 200 ") and b"rtagent_test_value 7.0" in ok
    head = h.answer(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n")
    post = h.answer(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nx=1")
    assert post.startswith(b"HTTP/1.0 405 ") and b"Allow: GET, HEAD" in post
    assert h.answer(b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    gz = h.answer(b"GET / HTTP/1.1\r\nAccept-Encoding: br, gzip;q=0.5\r\n\r\n")
    head, _, body = gz.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head and b"rtagent_test_value 7.0" in gzip.decompress(body)


def test_a_burst_of_scrapes_renders_once():
    reg = _registry()
    h = MetricsHandler(reg, reuse_s=60)
    for _ in range(50):
        h.answer(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert h.renders == 1
    h0 = MetricsHandler(reg, reuse_s=0)
    for _ in range(3):
        h0.answer(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert h0.renders == 3


def test_writes_are_refused_over_http():
    server = serve(StateStore(), MetricsConfig(listen="127.0.0.1:0"), _registry())
    try:
        assert "rtagent_test_value 7.0" in urllib.request.urlopen(server.url, timeout=10).read().decode()
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            req = urllib.request.Request(server.url, data=b"rtagent_test_value 0\n", method=method)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code == 405 and err.value.headers["Allow"] == "GET, HEAD", method
    finally:
        server.close()


def test_ipv6_literal_binds_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        server = serve(StateStore(), MetricsConfig(listen="[::1]:0"), _registry())
    except RtagentError as err:  # ::1 not configured (IPv6 disabled on lo)
        pytest.skip(f"cannot bind ::1: {err}")
    try:
        assert server.server.listener.family == socket.AF_INET6
        assert b"rtagent_test_value" in urllib.request.urlopen(server.url, timeout=10).read()
    finally:
        server.close()


def test_unresolvable_host_names_the_key():
    with pytest.raises(RtagentError) as err:
        serve(StateStore(), MetricsConfig(listen="no-such-host.invalid:0"), _registry())
    assert "metrics.listen" in str(err.value)


def _openssl(*args: str) -> None:
    import subprocess

    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_tls_with_client_certificates(tmp_path):
    """metrics.tls_client_ca: a client without a certificate signed by that CA
    is refused in the handshake; one with it is served."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", str(ca_key), "-out", str(ca))
    certs = {}
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        key, csr, crt, extf = (tmp_path / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        extf.write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", "1", "-extfile", str(extf), "-out", str(crt))
        certs[name] = (crt, key)
    cfg = MetricsConfig(listen="127.0.0.1:0", tls_cert=str(certs["server"][0]), tls_key=str(certs["server"][1]),
                        tls_client_ca=str(ca))
    server = serve(StateStore(), cfg, _registry())
    try:
        anonymous = ssl.create_default_context(cafile=str(ca))
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            urllib.request.urlopen(server.url, timeout=10, context=anonymous).read()
        with_cert = ssl.create_default_context(cafile=str(ca))
        with_cert.load_cert_chain(str(certs["client"][0]), str(certs["client"][1]))
        assert b"rtagent_test_value 7.0" in urllib.request.urlopen(server.url, timeout=10, context=with_cert).read()
        # The refused handshake did not wedge the server.
        assert server.server.stats.open <= 1
    finally:
        server.close()


def test_a_client_streaming_an_endless_head_is_refused_and_others_still_served():
    server = serve(StateStore(), MetricsConfig(listen="127.0.0.1:0"), _registry())
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: ")
            answer = b""
            try:
                for _ in range(1000):  # 16 MiB at most; the server answers long before
                    s.sendall(b"a" * 16384)
            except OSError:
                pass  # the server answered and closed
            try:
                answer = s.recv(65536)
            except OSError:
                pass
        assert answer == b"" or answer.startswith(b"HTTP/1.0 431 ")
        assert "rtagent_test_value" in urllib.request.urlopen(server.url, timeout=10).read().decode()
    finally:
        server.close()
