"""Layering rules of the package, checked on its source (ast, no imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[2] / "rtagent"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_only_the_libvirt_boundary_imports_libvirt():
    """Everything above ``libvirt_host`` works on ``Guest`` wrappers and
    rtagent's own errors, never on a virDomain or libvirtError."""
    offenders = sorted(str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py")
                       if "libvirt" in _imports(p) and p != PKG / "libvirt_host.py")
    assert offenders == []


def test_the_daemon_loop_stays_small():
    lines = len((PKG / "daemon" / "loop.py").read_text().splitlines())
    assert lines <= 200, f"rtagent/daemon/loop.py has {lines} lines"
