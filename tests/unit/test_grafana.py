"""The shipped Grafana dashboard only queries metrics that exist: every
``rtagent_*`` name in its expressions is produced by the collector (from a
populated store) or recorded by config/prometheus/rtagent-rules.yml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rtagent.monitor.metrics import RtagentCollector
from rtagent.monitor.interference_service import InterferenceCollector
from tests.unit.test_interference_service import populated_service
from tests.unit.test_metrics import populated_store, report_counters

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "rtagent.json"
RULES = ROOT / "config" / "prometheus" / "rtagent-rules.yml"

# A metric name in PromQL: starts with rtagent_ or is a recording rule
# (level:rtagent_metric:operations).
_NAME = re.compile(r"(?<![\w:])((?:[a-zA-Z_]\w*:)?rtagent_[\w:]*|up)(?=\s*[{\[)\s,]|$)")


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def expressions(dash: dict) -> list[str]:
    out = [t["expr"] for p in walk_panels(dash["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def metric_names(expr: str) -> set[str]:
    # label_values(metric{…}, label): the first argument is a selector.
    expr = re.sub(r"label_values\(", "(", expr)
    # Drop label matchers' contents so label values never look like names.
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    return set(_NAME.findall(expr))


def exported_names() -> set[str]:
    reg = CollectorRegistry()
    store = populated_store()
    reg.register(RtagentCollector(store, counters=report_counters(store)))
    reg.register(InterferenceCollector(populated_service()))
    text = generate_latest(reg).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)\s*$", RULES.read_text(), re.M))


def test_dashboard_parses_and_is_well_formed():
    dash = load()
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    panels = list(walk_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert {p["title"] for p in panels if p["type"] == "row"} >= {"Fleet overview", "Node $instance", "Guest $domain"}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names >= {"datasource", "cluster", "instance", "domain"}


def test_every_referenced_metric_exists():
    exported, recorded = exported_names(), recorded_names()
    assert recorded, "no recording rules found"
    referenced: set[str] = set()
    for expr in expressions(load()):
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        referenced |= names
    missing = {n for n in referenced if n != "up" and n not in exported and n not in recorded}
    assert missing == set(), f"dashboard queries metrics nobody produces: {sorted(missing)}"
    # the per-guest vCPU delay view is there
    assert "rtagent_vcpu_run_delay_seconds_total" in referenced


def test_no_thread_id_labels_in_queries():
    for expr in expressions(load()):
        assert not re.search(r"\b(tid|pid|thread)\b", expr), expr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_expressions_are_valid_promql(tmp_path):
    """promtool parses each expression (Grafana's variables substituted) as a
    recording rule."""
    subst = {"$__rate_interval": "5m", "$__range": "1h", "$cluster": ".*", "$instance": ".*", "$domain": ".*",
             "$cpu": ".*"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(e for e in expressions(load()) if not e.startswith("label_values(")):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        lines += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dash-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    res = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
