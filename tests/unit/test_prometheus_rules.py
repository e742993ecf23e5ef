"""The shipped alerting/recording rules pass `promtool check rules` and their
own `promtool test rules` unit tests (config/prometheus/rtagent-rules.test.yml)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "config" / "prometheus"
RULES = PROMETHEUS_DIR / "rtagent-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "rtagent-rules.test.yml"

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (Debian: prometheus)")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


@needs_promtool
def test_check_rules():
    res = run("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_rule_unit_tests():
    res = run("test", "rules", str(RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def _alert_names() -> set[str]:
    # No YAML library in the runtime dependencies: the rules file is simple
    # enough to read by line ("- alert: Name").
    return set(re.findall(r"^\s*- alert:\s*(\S+)\s*$", RULES.read_text(), re.M))


def _test_cases() -> list[tuple[str, bool]]:
    """(alertname, expects alerts) for each alert_rule_test case."""
    cases: list[tuple[str, bool]] = []
    for chunk in re.split(r"^\s*- eval_time:", RULE_TESTS.read_text(), flags=re.M)[1:]:
        chunk = re.split(r"^\s*- (?:name|interval|expr):", chunk, flags=re.M)[0]
        name = re.search(r"^\s*alertname:\s*(\S+)", chunk, re.M)
        if name:
            cases.append((name.group(1), "exp_alerts:" in chunk))
    return cases


def test_every_alert_is_tested_firing_and_quiet():
    """Each alert in the rules appears in the unit tests both with and
    without expected alerts."""
    alerts = _alert_names()
    assert len(alerts) >= 8
    cases = _test_cases()
    fires = {n for n, f in cases if f}
    quiet = {n for n, f in cases if not f}
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_alerts_have_for_severity_and_annotations():
    blocks = re.split(r"^\s*- (?=alert:|record:)", RULES.read_text(), flags=re.M)[1:]
    alerts = [b for b in blocks if b.startswith("alert:")]
    assert alerts
    for b in alerts:
        name = b.split()[1]
        assert re.search(r"^\s*for:\s*\d+[smh]", b, re.M), name
        assert re.search(r"^\s*severity:\s*(warning|critical)\s*$", b, re.M), name
        assert re.search(r"^\s*summary:", b, re.M) and re.search(r"^\s*description:", b, re.M), name


RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"


def test_every_alert_has_a_runbook():
    """runbook_url names docs/runbooks/<alert>.md, which exists and says what
    the alert means, how to confirm it with `rtagent status` and what to do."""
    blocks = re.split(r"^\s*- (?=alert:|record:)", RULES.read_text(), flags=re.M)[1:]
    for b in (b for b in blocks if b.startswith("alert:")):
        name = b.split()[1]
        url = re.search(r"^\s*runbook_url:\s*(.+)$", b, re.M)
        assert url, f"{name}: no runbook_url"
        assert url.group(1).rstrip("'\"").endswith(f"/{name}.md"), (name, url.group(1))
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"{name}: {page} missing"
        text = page.read_text()
        for heading in ("## Meaning", "## Confirm", "## Fix"):
            assert heading in text, f"{page}: no {heading!r}"
        assert "rtagent status" in text or "curl" in text, page
        assert f"[{name}.md]({name}.md)" in (RUNBOOKS / "README.md").read_text(), f"{name}: not in the runbook index"


def test_alert_texts_name_the_node():
    """Receivers show summary/description only: they must say which node
    (and, for guest and vCPU alerts, which guest and vCPU)."""
    blocks = re.split(r"^\s*- (?=alert:|record:)", RULES.read_text(), flags=re.M)[1:]
    for b in (b for b in blocks if b.startswith("alert:")):
        name = b.split()[1]
        summary = re.search(r"^\s*summary:\s*(.+)$", b, re.M).group(1)
        assert "$labels.instance" in summary, name
        if "$labels.domain" in b.split("annotations:")[0] or "domain" in summary:
            assert "$labels.domain" in summary, name
        if "rtagent_vcpu_" in b.split("labels:")[0]:
            assert "$labels.vcpu" in summary, name
