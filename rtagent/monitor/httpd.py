"""The ``/metrics`` HTTP endpoint: prometheus_client's exposition, our sockets.

The exposition (text format or OpenMetrics by ``Accept``, gzip by
``Accept-Encoding``) is prometheus_client's own ``choose_encoder`` (through
:mod:`rtagent.monitor.exposition`, which writes rtagent's families and hands
the answer over in parts) over the daemon's private registry (present in
every version we support, down to Debian 12's 0.16); gzip is
:mod:`rtagent.monitor.gzipparts` (a family unchanged since the last scrape is
not compressed again); the socket handling is
:class:`~rtagent.monitor.connserver.ConnectionServer` (bounded connections,
timeouts, no thread per client).  One request per connection, as
prometheus_client's ``http.server`` handler does (HTTP/1.0 semantics,
``Connection: close``).

A rendered body is reused for :data:`RENDER_REUSE_S`: however many clients
ask at once, the daemon renders at most a few times a second, so scraping in
a loop cannot turn into a CPU (and GIL) load on the enforcement path.  The
collector copies the state under the store's lock and renders outside it
(:mod:`rtagent.monitor.metrics`), with Python's garbage collector paused
(:mod:`rtagent.monitor.gcpause`: its passes found nothing to free there and
were a scrape's largest cost after the kernel reads).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from .exposition import choose_parts_encoder  # prometheus_client's negotiation; rtagent's families written fast
from .gcpause import paused
from .gzipparts import PartsGzip

log = logging.getLogger(__name__)

__all__ = ["MAX_REQUEST_BYTES", "METRICS_PATHS", "RENDER_REUSE_S", "MetricsHandler"]

MAX_REQUEST_BYTES = 8192
RENDER_REUSE_S = 0.5
METRICS_PATHS = ("/metrics", "/")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status


def parse_request(data: bytes) -> Request | None:
    """The request head once it is complete (``None`` before); raises
    :class:`BadRequest` for a head that is too long or malformed."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    if end < 0:
        if len(data) > MAX_REQUEST_BYTES:
            raise BadRequest(431, "request head too long")
        return None
    if end > MAX_REQUEST_BYTES:
        raise BadRequest(431, "request head too long")
    lines = data[:end].decode("latin-1").splitlines()
    parts = lines[0].split() if lines else []
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(400, "malformed request line")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(parts[0].upper(), target_path(parts[1]), headers)


def target_path(target: str) -> str:
    """The path of a request target (RFC 9112 3.2): origin form
    ``/metrics?x=1`` or absolute form ``http://host/metrics``.  Split by
    hand: ``urllib.parse`` would bring ``ipaddress`` with it, 0.3 MiB the
    daemon holds for nothing (docs/design.md, "What the daemon imports")."""
    scheme, sep, rest = target.partition("://")
    if sep and "/" not in scheme:
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    for mark in "?#":
        target = target.partition(mark)[0]
    return target


def response(status: int, body: bytes, headers: list[tuple[str, str]] = (), *, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.0 {status} {_REASONS.get(status, '')}", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else body)


def _gzip_accepted(accept_encoding: str) -> bool:
    """prometheus_client has this only from 0.17 on; Debian 12 ships 0.16."""
    return any(part.split(";")[0].strip().lower() == "gzip" for part in accept_encoding.split(","))


class MetricsHandler:
    reads_request = True
    linger = True

    def __init__(self, registry: CollectorRegistry, *, reuse_s: float = RENDER_REUSE_S):
        self.registry = registry
        self.reuse_s = reuse_s
        self._cache: dict[tuple[str, bool], tuple[float, bytes]] = {}
        self._gzip: dict[str, PartsGzip] = {}  # per content type: its parts recur scrape to scrape
        self.renders = 0

    def answer(self, request: bytes) -> bytes | None:
        with paused():  # no collection inside a render: it finds no garbage there (gcpause.py)
            return self._answer(request)

    def _answer(self, request: bytes) -> bytes | None:
        try:
            req = parse_request(request)
        except BadRequest as err:
            return response(err.status, f"{err}\n".encode(), [("Content-Type", "text/plain")])
        if req is None:
            return None
        if req.method not in ("GET", "HEAD"):
            return response(405, b"only GET and HEAD\n", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
        if req.path not in METRICS_PATHS:
            return response(404, b"see /metrics\n", [("Content-Type", "text/plain")], head_only=req.method == "HEAD")
        try:
            body, headers = self._render(req.headers.get("accept", ""), req.headers.get("accept-encoding", ""))
        except Exception:
            log.exception("rendering /metrics failed")
            return response(500, b"rendering failed\n", [("Content-Type", "text/plain")])
        return response(200, body, headers, head_only=req.method == "HEAD")

    def _render(self, accept: str, accept_encoding: str) -> tuple[bytes, list[tuple[str, str]]]:
        encoder, content_type = choose_parts_encoder(accept)
        gz = _gzip_accepted(accept_encoding)
        headers = [("Content-Type", content_type)] + ([("Content-Encoding", "gzip")] if gz else [])
        now = time.monotonic()
        cached = self._cache.get((content_type, gz))
        if cached is not None and now - cached[0] < self.reuse_s:
            return cached[1], headers
        parts = encoder(self.registry)
        if gz:
            body = self._gzip.setdefault(content_type, PartsGzip()).compress(parts)
        else:
            body = b"".join(parts)
        self.renders += 1
        self._cache[(content_type, gz)] = (now, body)
        return body, headers
