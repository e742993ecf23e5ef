"""scripts/node/apt_mirror.py: the node image is bootstrapped from the mirror
apt is configured with, in either sources format."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

_path = Path(__file__).resolve().parents[2] / "scripts" / "node" / "apt_mirror.py"
_spec = importlib.util.spec_from_file_location("apt_mirror", _path)
apt_mirror = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apt_mirror)


def _etc(tmp_path: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


def test_deb822_skips_security_disabled_and_deb_src(tmp_path):
    root = _etc(tmp_path, {"sources.list.d/debian.sources": """\
Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""})
    assert apt_mirror.mirrors("bookworm", root) == ["http://mirror.example/debian"]


def test_one_line_format_with_options(tmp_path):
    root = _etc(tmp_path, {"sources.list": """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.example/debian bookworm main non-free
deb http://one.example/debian-security bookworm-security main
"""})
    assert apt_mirror.mirrors("bookworm", root) == ["http://one.example/debian"]


def test_other_suite_or_component_is_not_a_bookworm_mirror(tmp_path):
    root = _etc(tmp_path, {"sources.list": "deb http://x.example/debian trixie main\n"
                                           "deb http://y.example/debian bookworm contrib\n",
                           "sources.list.d/node.list": "deb http://z.example/debian bookworm main\n"})
    assert apt_mirror.mirrors("bookworm", root) == ["http://z.example/debian"]
    assert apt_mirror.mirrors("trixie", root) == ["http://x.example/debian"]
    assert apt_mirror.mirrors("sid", root) == []
