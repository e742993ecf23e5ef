"""The status socket and the metrics endpoint are read-only and local.

Status socket: 0660, owned by ``status.group``; whatever a client writes is
never read, the daemon answers with its state and nothing changes.
Metrics: loopback unless configured otherwise; any method but GET/HEAD is
refused and changes nothing.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rtagent.config import DEFAULT_METRICS_PORT, MetricsConfig, parse_config
from tests.reliability.conftest import wait_for, wait_tuned

pytestmark = pytest.mark.reliability


@pytest.mark.unit
def test_metrics_bind_loopback_by_default():
    assert MetricsConfig().host_port == ("127.0.0.1", DEFAULT_METRICS_PORT)
    cfg = parse_config({}, resolve=False)
    assert cfg.metrics.host_port[0] == "127.0.0.1"


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) listening on ``port``."""
    out = []
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            addr, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:
                out.append(addr)
    return out


def _ask_with_writes(path: str, payload: bytes) -> dict | None:
    """The answer, or None when the server closed with our bytes unread
    (the kernel then resets the connection: it never reads them)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    try:
        s.sendall(payload)
    except OSError:
        pass  # the server may already have answered and closed: it never reads
    chunks = []
    try:
        while data := s.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        return None
    finally:
        s.close()
    return json.loads(b"".join(chunks))


def _state(d) -> tuple:
    st = d.status()
    dm = st["daemon"]
    return (sorted(g["uuid"] for g in st["domains"]), dm["libvirt"]["reconnects"], dm["libvirt"]["connected"],
            dm["proc_connector"])


@pytest.mark.system
def test_status_socket_mode_group_and_writes_ignored(rel_daemon, guest_factory):
    d = rel_daemon(status_group="kvm", metrics=True)
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == grp.getgrnam("kvm").gr_gid and st.st_uid == 0
    g = guest_factory()
    wait_tuned(d, g)
    wait_for(lambda: d.guest(g.name), 10, "status entry")
    before = _state(d)
    for payload in (b"stop\n", b'{"command": "reload"}\n', b"SIGTERM", os.urandom(256 * 1024)):
        answer = _ask_with_writes(d.socket, payload)
        # Either the JSON answer, or a reset because the server closed
        # with the client's bytes unread: it never reads a command.
        assert answer is None or ("daemon" in answer and "domains" in answer)
        assert "daemon" in d.status()  # the server still answers
    assert d.proc.poll() is None
    assert _state(d) == before
    text = d.log_text()
    assert "reload" not in text and "stopping" not in text


@pytest.mark.system
def test_metrics_loopback_only_and_no_writes(rel_daemon, guest_factory):
    d = rel_daemon(metrics=True)
    port = d.metrics_port
    assert _listening(port) == ["0100007F"], _listening(port)  # 127.0.0.1 only
    g = guest_factory()
    wait_tuned(d, g)
    wait_for(lambda: d.guest(g.name), 10, "status entry")
    url = f"http://127.0.0.1:{port}/metrics"
    before = _state(d)
    body_before = urllib.request.urlopen(url, timeout=10).read().decode()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        req = urllib.request.Request(url, data=b"rtagent_libvirt_up 0\n", method=method)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code != 200 and err.value.code == 405, (method, err.value.code)
    assert _state(d) == before
    body_after = urllib.request.urlopen(url, timeout=10).read().decode()
    assert f'domain="{g.name}"' in body_after
    up = [line for line in body_after.splitlines() if line.startswith("rtagent_libvirt_up")]
    assert up == [line for line in body_before.splitlines() if line.startswith("rtagent_libvirt_up")]
