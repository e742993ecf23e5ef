"""The shipped Grafana dashboard's interference panels, queried as Grafana
would, against a real Prometheus scraping the real daemon while known noise
runs on CPU 1: the per-CPU variable lists CPU 1, "top culprits" names the
injected task with its kind, "foreign share by kind" shows task time there.

Grafana itself is not run (it is not packaged for this machine); its
template variables are substituted the way "All" expands them.  Prometheus
and the daemon are ended by their own PIDs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from rtagent.kernel import tracefs
from tests.conftest import unique_name
from tests.system.test_prometheus_scrape import free_port, http_get, prom_query, stop, wait_for
from tests.threads.test_interference_real import busy, comm_name, finish

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "rtagent.json"
RT_CPU = 1


def panel_exprs(title_part: str) -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        if title_part in p.get("title", ""):
            assert p.get("repeat") == "cpu", f"panel {p['title']!r} is not repeated per CPU"
            return [t["expr"] for t in p["targets"]]
    raise AssertionError(f"no dashboard panel titled like {title_part!r}")


def as_grafana(expr: str) -> str:
    """Template variables as Grafana expands them: "All" clusters and
    instances, the panel's CPU, a rate interval of 4 scrapes, the range."""
    for var, value in (("$cluster", ".*"), ("$instance", ".*"), ("$cpu", str(RT_CPU)),
                       ("$__rate_interval", "10s"), ("$__range", "5m")):
        expr = expr.replace(var, value)
    return expr


def cpu_values(prom: str) -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    var = next(v for v in dash["templating"]["list"] if v["name"] == "cpu")
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    selector = as_grafana(query[len("label_values("):query.rindex(",")])
    body = json.loads(http_get(f"{prom}/api/v1/label/cpu/values?{urllib.parse.urlencode({'match[]': selector})}"))
    return body["data"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus server not installed")
@pytest.mark.skipif(tracefs.find_tracefs() is None, reason="tracefs is not mounted")
def test_dashboard_interference_panels_show_the_injected_noise(daemon_factory, tmp_path):
    metrics_port, prom_port = free_port(), free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    d = daemon_factory(extra=f'[interference]\ninstance = "{unique_name("rti_dash")}"\npoll_interval_s = 0.2\n',
                       metrics_port=metrics_port)
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: rtagent
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
""")
    prom_log = tmp_path / "prometheus.log"
    promp = None
    try:
        with open(prom_log, "wb") as out:
            promp = subprocess.Popen(
                ["prometheus", f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs = [("prometheus", promp, prom_log), ("rtagent", d.proc, d.log)]
        wait_for(lambda: http_get(f"{prom}/-/ready"), 60, "prometheus ready", procs=procs)
        wait_for(lambda: prom_query(prom, 'rtagent_interference_up{job="rtagent"} == 1'), 30,
                 "the accounting's series in prometheus", procs=procs)
        time.sleep(3)          # a few scrapes before the noise: increase() needs a start
        name = comm_name("dash")
        injected = finish(busy(name, 1.0))

        def culprit():
            rows = prom_query(prom, as_grafana(panel_exprs("top culprits")[0]))
            return next((r for r in rows if r["metric"].get("source") == name), None)

        row = wait_for(culprit, 30, "the injected task among the dashboard's top culprits", procs=procs)
        assert row["metric"]["kind"] == "task" and row["metric"]["cpu"] == str(RT_CPU)
        # The series starts when the source is admitted to the top N (its
        # first seconds stay in "other"): some, and not more than was run.
        assert 0 < float(row["value"][1]) * 1e9 <= injected * 1.2, (row, injected)

        share_expr, threshold_expr = (as_grafana(e) for e in panel_exprs("foreign share by kind"))
        kinds = {r["metric"]["kind"] for r in prom_query(prom, share_expr)}
        assert "task" in kinds and kinds <= {"task", "kthread", "guest", "irq", "softirq"}, kinds
        assert prom_query(prom, threshold_expr)[0]["value"][1] == "0.01"
        assert str(RT_CPU) in cpu_values(prom)
    finally:
        stop(promp)
        d.stop()
