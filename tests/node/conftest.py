"""The node tier: one boot of a Debian 12 node VM per session, every
scenario a test over what the node reported (see nodevm.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from .nodevm import NodeRun, run_node

_RUN: dict[str, NodeRun] = {}


def _missing_tools() -> list[str]:
    tools = ("qemu-system-x86_64", "debootstrap", "dpkg-buildpackage", "mkfs.ext4")
    return [t for t in tools if shutil.which(t) is None]


@pytest.fixture(scope="session")
def node_run() -> NodeRun:
    if os.geteuid() != 0:
        pytest.skip("the node tier needs root (debootstrap, chroot)")
    missing = _missing_tools()
    if missing:
        pytest.fail(f"node tier: missing {', '.join(missing)}: run scripts/setup-host.sh")
    if "run" not in _RUN:
        _RUN["run"] = run_node()
    return _RUN["run"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    run = _RUN.get("run")
    if run is None:
        return
    tr = terminalreporter
    tr.section("node tier (Debian 12 VM, systemd, cgroup v2)")
    for s in run.scenarios.values():
        tr.line(f"node: {s.name:<24} {'PASS' if s.ok else 'FAIL'} {s.seconds:6.1f}s  {s.detail[:160]}")
    tr.line("node: timings " + ", ".join(f"{k} {v:.0f}" for k, v in run.timings.items()))
    tr.line(run.closing or "node: the node reported no closing line")
