"""The /metrics HTTP(S) server, the same on every supported prometheus_client.

prometheus_client's ``start_http_server`` returns the server (needed to stop
it) and takes TLS options only from 0.17 on; Debian 12 ships 0.16.  This
builds the equivalent from what 0.16 already has (``make_wsgi_app``) and the
standard library, so the Debian package runs on Debian's own
python3-prometheus-client.

The endpoint is read-only: any method but GET/HEAD gets 405 before the
exposition app runs (0.16's app would answer a POST with the metrics).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

_READ_METHODS = ("GET", "HEAD")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request; threads do not keep the process alive."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Scrapes are not log lines."""


def read_only(app: Callable) -> Callable:
    """Wrap a WSGI app so that anything but GET/HEAD is refused with 405."""

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in _READ_METHODS:
            start_response("405 Method Not Allowed",
                           [("Allow", ", ".join(_READ_METHODS)), ("Content-Type", "text/plain")])
            return [b"405 Method Not Allowed: the metrics endpoint is read-only\n"]
        return app(environ, start_response)

    return guarded


def start(host: str, port: int, registry: CollectorRegistry,
          tls: ssl.SSLContext | None = None) -> tuple[WSGIServer, threading.Thread]:
    """Bind ``host:port`` (IPv4 or IPv6 by what ``host`` resolves to) and serve
    ``registry`` on a daemon thread.  Raises ``socket.gaierror``/``OSError``
    as binding does; nothing is left open then."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_MetricsServer", (_ThreadingServer,), {"address_family": family})
    httpd = make_server(host, port, read_only(make_wsgi_app(registry)), server_class,
                        handler_class=_QuietHandler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread
