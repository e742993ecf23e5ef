"""bench/installed.py: how a benchmarked daemon's environment follows the
unit of the tree under test."""

from __future__ import annotations

import pytest

from bench.installed import tree_unit_env, unit_environment

pytestmark = pytest.mark.unit


def test_unit_environment_reads_systemds_syntax():
    text = """[Service]
Environment=A=1 B="two words"
# Environment=C=commented
Environment=A=3
  Environment=D=4
ExecStart=/bin/true
"""
    assert unit_environment(text) == {"A": "3", "B": "two words", "D": "4"}


def test_an_empty_assignment_resets_the_list():
    assert unit_environment("Environment=A=1\nEnvironment=\nEnvironment=B=2\n") == {"B": "2"}


def test_the_tree_s_cache_is_its_own_not_the_installed_one(tmp_path):
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd/rtagent.service").write_text(
        "[Service]\nEnvironment=PYTHONOPTIMIZE=2 PYTHONPYCACHEPREFIX=/var/cache/rtagent/bytecode\n")
    env = tree_unit_env(tmp_path)
    assert env == {"PYTHONOPTIMIZE": "2", "PYTHONPYCACHEPREFIX": str(tmp_path / "build" / "bench-bytecode")}


def test_an_old_tree_without_the_lines_runs_as_its_unit_said(tmp_path):
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd/rtagent.service").write_text("[Service]\nExecStart=/usr/local/bin/rtagent run\n")
    assert tree_unit_env(tmp_path) == {}
    assert tree_unit_env(tmp_path / "missing") == {}
