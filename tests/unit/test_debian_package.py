"""debian/ stays consistent with pyproject.toml and the repository's unit:
the same dependency floors (Debian's package names), the unit installed
disabled, the packaged ExecStart the one dh_python installs."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_NAMES = {"libvirt-python": "python3-libvirt", "prometheus-client": "python3-prometheus-client",
                "python-prctl": "python3-prctl", "psutil": "python3-psutil"}


def _floors_pyproject() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([\d.]+)", d.replace(" ", ""))
        assert m, f"pyproject dependency without a plain floor: {d!r}"
        out[m.group(1)] = m.group(2)
    return out


def _depends_control() -> dict[str, str]:
    text = (ROOT / "debian/control").read_text()
    block = re.search(r"^Depends:(.*?)(?=^\S)", text, re.M | re.S).group(1)
    return dict(re.findall(r"(python3-[a-z-]+) \(>= ([\d.]+)\)", block))


def test_every_python_dependency_is_a_debian_package_with_the_same_floor():
    py, deb = _floors_pyproject(), _depends_control()
    assert set(py) <= set(DEBIAN_NAMES), f"dependency without a Debian mapping: {set(py) - set(DEBIAN_NAMES)}"
    for name, floor in py.items():
        assert deb.get(DEBIAN_NAMES[name]) == floor, (name, floor, deb)
    extra = set(deb) - {DEBIAN_NAMES[n] for n in py}
    assert not extra, f"debian/control depends on packages pyproject.toml does not: {extra}"


def test_unit_is_installed_disabled_and_rewritten_to_usr_bin():
    rules = (ROOT / "debian/rules").read_text()
    assert re.search(r"^\tdh_installsystemd --no-enable$", rules, re.M)
    sed = re.search(r"sed '(s\|[^']+)' systemd/rtagent.service > debian/rtagent.service", rules)
    assert sed, "debian/rules no longer derives the unit from systemd/rtagent.service"
    out = subprocess.run(["sed", sed.group(1), str(ROOT / "systemd/rtagent.service")],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"^ExecStart=/usr/bin/rtagent run ", out, re.M), "packaged ExecStart"


def test_shipped_files_exist_and_nothing_lands_in_etc_sysctl():
    lines = (ROOT / "debian/rtagent.install").read_text().split("\n")
    pairs = [line.split() for line in lines if line.strip()]
    for src, dest in pairs:
        assert (ROOT / src).is_file(), src
        assert not dest.startswith(("etc/sysctl", "usr/lib/sysctl", "lib/sysctl")), (src, dest)
    assert ["config/rtagent.toml", "etc/rtagent/"] in pairs  # a conffile (dh_installdeb: all of /etc)


def test_purge_removes_the_daemons_state():
    postrm = (ROOT / "debian/rtagent.postrm").read_text()
    state = tomllib.loads((ROOT / "config/rtagent.toml").read_text())["host_tuning"]["state_file"]
    assert Path(state).parent.as_posix() == "/var/lib/rtagent"
    assert re.search(r'if \[ "\$1" = purge \]; then\s+rm -rf /var/lib/rtagent /run/rtagent /var/cache/rtagent\n',
                     postrm)


def test_the_unit_runs_python_without_docstrings_from_a_cache_it_may_write():
    """-OO loads .opt-2.pyc files, which nothing installs: the unit's cache
    prefix must lie in the CacheDirectory= systemd makes writable under
    ProtectSystem=strict (and purge removes), or every start compiles every
    module in memory."""
    from bench.installed import unit_environment

    unit = (ROOT / "systemd/rtagent.service").read_text()
    env = unit_environment(unit)
    assert env.get("PYTHONOPTIMIZE") == "2"
    cache = re.search(r"^CacheDirectory=(\S+)$", unit, re.M)
    assert cache, "no CacheDirectory= for the bytecode"
    assert Path(env["PYTHONPYCACHEPREFIX"]).is_relative_to(Path("/var/cache") / cache.group(1))
    assert re.search(r"^ProtectSystem=strict$", unit, re.M)
