"""config/alertmanager/alertmanager.yml: valid for the real Alertmanager
(`amtool check-config`), grouped by node, and routing every severity the
rules use (the fleet tier runs it for real)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "alertmanager" / "alertmanager.yml"
RULES = ROOT / "config" / "prometheus" / "rtagent-rules.yml"


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (Debian: prometheus-alertmanager)")
def test_amtool_accepts_the_example():
    res = subprocess.run(["amtool", "check-config", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_grouped_by_node_never_by_guest():
    text = EXAMPLE.read_text()
    groups = re.findall(r"^\s*group_by:\s*\[(.*)\]", text, re.M)
    assert groups, "no group_by"
    for g in groups:
        labels = {x.strip() for x in g.split(",")}
        assert "instance" in labels and not labels & {"domain", "vcpu"}, labels


def test_every_severity_in_the_rules_is_routed():
    severities = set(re.findall(r"^\s*severity:\s*(\w+)\s*$", RULES.read_text(), re.M))
    routed = set(re.findall(r"severity=\"(\w+)\"", EXAMPLE.read_text()))
    assert severities and severities <= routed, (severities, routed)
