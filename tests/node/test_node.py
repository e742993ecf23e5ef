"""Scenarios inside a real compute node: Debian 12, systemd as PID 1,
cgroup v2, a stock kernel without RT group scheduling, isolcpus/nohz_full,
rtagent installed from its .deb with apt (inside/scenarios.py says what each
scenario does and checks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.node

_spec = importlib.util.spec_from_file_location("node_scenarios", Path(__file__).parent / "inside" / "scenarios.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
NAMES = [fn.__name__.removeprefix("scenario_") for fn in _mod.SCENARIOS]


@pytest.mark.parametrize("name", NAMES)
def test_scenario(node_run, name):
    s = node_run.scenarios.get(name)
    assert s is not None, (f"scenario {name} did not report; node output:\n{node_run.tail()}\n"
                           f"console:\n{node_run.console_tail}")
    assert s.ok, f"{name}: {s.detail}\n--- node output tail:\n{node_run.tail(120)}"


def test_closing_line_counts_every_scenario(node_run):
    assert node_run.closing.endswith(
        f"{sum(s.ok for s in node_run.scenarios.values())} passed, "
        f"{sum(not s.ok for s in node_run.scenarios.values())} failed"), node_run.closing
    assert len(node_run.scenarios) == len(NAMES), sorted(node_run.scenarios)
