"""Modules only some configurations need are imported only by those
(daemon RSS, issue 14): ``ssl`` for TLS, the interference service (and with
it ``prometheus_client``) for ``[interference] enabled``.  Each check runs
in a fresh interpreter, since this one has imported everything already."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_daemon_imports_neither_ssl_nor_prometheus_nor_subprocess():
    """Everything ``rtagent run`` imports before its services start (the
    inotify wrapper used to run ldconfig through ctypes.util: subprocess,
    tempfile, shutil…)."""
    out = _run("""
        import sys
        import rtagent.cli, rtagent.daemon, rtagent.kernel.inotify
        print(sorted(m for m in ("ssl", "prometheus_client", "subprocess", "ctypes.util", "tempfile",
                                 "rtagent.monitor.interference_service", "rtagent.kernel.tracefs")
                     if m in sys.modules))
    """)
    assert out == "[]"


def test_a_plain_connection_server_serves_without_ssl():
    """A server without TLS answers a client and never imports ssl."""
    out = _run("""
        import socket, sys
        from rtagent.monitor.connserver import ConnectionServer, Limits

        class Echo:
            reads_request, linger = True, False
            def answer(self, data):
                return b"ok:" + data if data.endswith(b"\\n") else None

        lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(8)
        srv = ConnectionServer(lst, Echo(), Limits(max_connections=4, idle_timeout_s=5, request_timeout_s=5),
                               name="t")
        srv.start()
        with socket.create_connection(lst.getsockname(), timeout=5) as c:
            c.sendall(b"hi\\n")
            got = b""
            while chunk := c.recv(100):
                got += chunk
        srv.close()
        print(got.decode().strip(), "ssl" in sys.modules)
    """)
    assert out == "ok:hi False"


_START = """
    import sys
    from rtagent.config import parse_config
    from rtagent.daemon.services import start_interference
    from rtagent.state import StateStore
    # resolve=False: no partition, so the service says "no realtime CPUs" and returns None.
    cfg = parse_config({"interference": {"enabled": ENABLED}}, resolve=False)
    svc = start_interference(cfg, StateStore())
    print(svc, "rtagent.monitor.interference_service" in sys.modules, "prometheus_client" in sys.modules)
"""


def test_interference_off_does_not_import_it():
    assert _run(_START.replace("ENABLED", "False")) == "None False False"


def test_interference_on_imports_and_starts_it():
    """On: the service's own start decides (here: no realtime CPUs, so it
    says so and returns None — the path a daemon takes, module loaded)."""
    assert _run(_START.replace("ENABLED", "True")) == "None True True"


def test_parsing_the_command_line_imports_no_shutil():
    """argparse's formatter would import shutil (bz2, lzma, zlib) for the
    terminal width; rtagent's reads it itself (rtagent/argparsing.py)."""
    out = _run("""
        import sys
        import rtagent.cli
        args = rtagent.cli.build_parser().parse_args(["run", "--config", "x.toml"])
        print(args.command, sorted(m for m in ("shutil", "bz2", "lzma") if m in sys.modules))
    """)
    assert out == "run []"


def test_the_daemon_drops_what_only_its_start_up_needs():
    """argparse (with gettext) parsed the command line and tomllib (with the
    pure-Python datetime) the config, once: after start-up
    (daemon/startonly.py) they are gone from sys.modules *and* freed — no
    daemon module still refers to them (an `import argparse` at the top of
    one would keep the parser classes alive and fail this)."""
    out = _run("""
        import gc, sys, weakref
        import rtagent.cli, rtagent.commands.daemon, rtagent.daemon, rtagent.daemon.loop, rtagent.daemon.services
        from rtagent.config import load_config
        from rtagent.daemon import startonly
        args = rtagent.cli.parse(["--log-level", "debug", "run", "--config", "config/rtagent.toml"])
        load_config(args.config, resolve=False)
        refs = [weakref.ref(sys.modules[m]) for m in ("argparse", "gettext", "locale", "tomllib._parser", "datetime")]
        startonly.forget()
        gone = ("argparse", "gettext", "locale", "tomllib", "datetime", "rtagent.argparsing")
        print(args.command, args.config, sorted(m for m in sys.modules if m.split(".")[0] in gone
                                                or m == "rtagent.argparsing"), [r() is None for r in refs])
    """)
    assert out == "run config/rtagent.toml [] [True, True, True, True, True]"


def test_a_reload_drops_tomllib_again():
    out = _run("""
        import sys
        from rtagent.config import load_config
        from rtagent.daemon.services import reload_config
        current = load_config("config/rtagent.toml", resolve=False)
        new = reload_config(current, "config/rtagent.toml")
        print(new is not None, "tomllib" in sys.modules)
    """)
    assert out == "True False"
