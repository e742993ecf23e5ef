"""A real Prometheus server scrapes the real daemon.

``rtagent run`` is started as a subprocess with its metrics endpoint on a free
loopback port, ``prometheus`` (Debian's package) on another with a 1 s scrape
interval and the shipped rules loaded.  A realtime guest is started; its
series must reach Prometheus, and vanish from ``/metrics`` (and, by
staleness, from Prometheus' instant queries) when the guest stops.  Both
subprocesses are ended by their own PIDs in ``finally``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "rtagent-rules.yml"
HUGE = "<memoryBacking><hugepages/></memoryBacking>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def wait_for(predicate, timeout: float, what: str, *, procs=(), interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        for name, proc, log in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                     f"{log.read_text(errors='replace')[-4000:]}")
        try:
            value = predicate()
        except (OSError, urllib.error.URLError, ValueError) as err:
            last_err, value = err, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_err})")


def stop(proc: subprocess.Popen | None) -> None:
    """End a subprocess this test started, by its PID only."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def prom_query(base: str, query: str) -> list[dict]:
    body = json.loads(http_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus server not installed")
def test_prometheus_scrapes_the_daemon(tmp_path, guest_factory):
    metrics_port, prom_port = free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    prom = f"http://127.0.0.1:{prom_port}"

    cfg = tmp_path / "rtagent.toml"
    cfg.write_text(f"""
[host]
realtime_cpus = "1"
[daemon]
resync_interval_s = 0.5
lock_file = "{tmp_path}/rtagent.lock"
[status]
socket = "{tmp_path}/rtagent.sock"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[host_tuning]
kthreads = false
kthread_priorities = false
irqs = false
workqueues = false
state_file = "{tmp_path}/host-saved.json"
""")
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: rtagent
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
""")
    daemon_log, prom_log = tmp_path / "rtagent.log", tmp_path / "prometheus.log"
    daemon = promp = None
    try:
        with open(daemon_log, "wb") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "rtagent", "run", "--config", str(cfg)],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        with open(prom_log, "wb") as out:
            promp = subprocess.Popen(
                ["prometheus", f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs = [("rtagent", daemon, daemon_log), ("prometheus", promp, prom_log)]

        wait_for(lambda: "rtagent_libvirt_up 1.0" in http_get(metrics_url), 60, "the daemon's /metrics", procs=procs)
        wait_for(lambda: http_get(f"{prom}/-/ready"), 60, "prometheus ready", procs=procs)

        g = guest_factory(memory_backing=HUGE)
        sel = f'{{domain="{g.name}"}}'
        wait_for(lambda: f'rtagent_vcpu_run_delay_seconds_total{{domain="{g.name}",vcpu="1"}}' in http_get(metrics_url),
                 30, "the guest's vCPU series on /metrics", procs=procs)

        delay = wait_for(lambda: prom_query(prom, f"rtagent_vcpu_run_delay_seconds_total{sel}"), 30,
                         "the run delay series in prometheus", procs=procs)
        assert [s["metric"]["vcpu"] for s in delay] == ["1"]  # only the realtime vCPU
        assert delay[0]["metric"]["job"] == "rtagent"
        assert "tid" not in delay[0]["metric"]
        assert float(delay[0]["value"][1]) >= 0
        compliant = wait_for(lambda: prom_query(prom, f"rtagent_domain_compliant{sel}"), 30,
                             "the compliance series in prometheus", procs=procs)
        assert len(compliant) == 1 and compliant[0]["value"][1] in ("0", "1")
        info = prom_query(prom, f"rtagent_domain_info{sel}")
        assert info and info[0]["metric"]["uuid"] == g.uuid
        assert prom_query(prom, 'up{job="rtagent"}')[0]["value"][1] == "1"
        # No drift_watch key: the default ("auto") runs the watch on a kernel
        # with the syscall trace events (this one has them).
        assert prom_query(prom, 'rtagent_drift_watch_up{job="rtagent"}')[0]["value"][1] == "1"

        # The shipped rules load and evaluate in the real server.
        rules = json.loads(http_get(f"{prom}/api/v1/rules"))["data"]["groups"]
        assert {gr["name"] for gr in rules} == {"rtagent.rules", "rtagent.alerts"}
        wait_for(lambda: prom_query(prom, "instance:rtagent_domains_realtime:sum"), 30,
                 "a recording rule's result", procs=procs)
        bad = [r for gr in rules for r in gr["rules"] if r.get("health") not in ("ok", "unknown")]
        assert bad == []

        # The guest stops: its series leave /metrics at once, and Prometheus
        # marks them stale on its next scrape.
        g.dom.destroy()
        wait_for(lambda: f'domain="{g.name}"' not in http_get(metrics_url), 30,
                 "the guest's series to leave /metrics", procs=procs)
        wait_for(lambda: prom_query(prom, f"rtagent_domain_compliant{sel}") == [], 30,
                 "prometheus to see the series go stale", procs=procs)
        assert daemon.poll() is None
    finally:
        stop(promp)
        stop(daemon)
