"""What the daemon imports: no ``pathlib``, ``urllib.parse`` or ``ipaddress``.

Those three hold ≈ 0.6 MiB of objects in a fresh interpreter and the daemon
needs none of them (docs/design.md, "What the daemon imports").  Only
prometheus_client brings them (its exposition module imports http.server),
and the daemon imports it only where /metrics or the interference
collector are on.  The check runs in ``python -S`` as the installed daemon
runs: the development venv's editable-install finder imports pathlib
itself (bench/installed.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("pathlib", "urllib.parse", "ipaddress")
# The modules that import prometheus_client (and with it the three above).
PROMETHEUS_USERS = {
    "rtagent.commands.status",
    "rtagent.monitor.exposition",
    "rtagent.monitor.httpd",
    "rtagent.monitor.interference_service",
    "rtagent.monitor.metrics",
}

_SCRIPT = """
import importlib, json, pkgutil, sys
import rtagent
skip = set(sys.argv[1].split(","))
names = [m.name for m in pkgutil.walk_packages(rtagent.__path__, "rtagent.")
         if m.name not in skip and not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": len(names), "loaded": sorted(sys.modules)}))
"""


def _loaded(skip: set[str]) -> dict:
    import json
    paths = [ROOT, *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    out = subprocess.run([sys.executable, "-S", "-c", _SCRIPT, ",".join(sorted(skip))], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_no_module_outside_the_prometheus_users_imports_pathlib_urllib_or_ipaddress():
    res = _loaded(PROMETHEUS_USERS)
    assert res["imported"] > 100  # the whole package, not an empty walk
    loaded = set(res["loaded"])
    # A new user of prometheus_client belongs in PROMETHEUS_USERS (and is
    # imported only when its feature is on), not in the daemon's core.
    assert "prometheus_client" not in loaded
    assert [m for m in HEAVY if m in loaded] == []


def test_the_check_sees_them_where_they_are_imported():
    """The same check, with the prometheus users in: it does see what the
    library brings (so an empty result above is not a blind check)."""
    loaded = set(_loaded(set())["loaded"])
    assert {"prometheus_client", "urllib.parse", "ipaddress"} <= loaded
