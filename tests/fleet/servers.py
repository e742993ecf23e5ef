"""The monitoring side of the fleet tier: real Prometheus, real Alertmanager,
and the webhook receiver this test provides (an HTTP server recording every
notification Alertmanager posts).

Prometheus loads the shipped rules with each alert's ``for:`` divided by
``FOR_DIVISOR`` (expressions, labels and annotations unchanged), so alerts
that wait minutes in production fire within seconds here.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from tests.fleet.netns import Netns

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "rtagent-rules.yml"
FOR_DIVISOR = 20


def scaled_rules(dest: Path) -> Path:
    """The shipped rules with ``for: Nm`` → ``for: (N*60/FOR_DIVISOR)s``."""
    def scale(m: re.Match) -> str:
        n, unit = int(m.group(2)), m.group(3)
        seconds = n * {"s": 1, "m": 60, "h": 3600}[unit]
        return f"{m.group(1)}for: {max(1, seconds // FOR_DIVISOR) if seconds else 0}s"
    text, count = re.subn(r"^(\s+)for: (\d+)([smh])\s*$", scale, RULES.read_text(), flags=re.M)
    assert count >= 10, f"expected the shipped alerts' for: clauses, found {count}"
    dest.write_text(text)
    return dest


def http_json(url: str, body: dict | None = None, timeout: float = 5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode() or "null")


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM a process this test started (by its PID), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------
# webhook receiver


@dataclass
class Webhook:
    """Alertmanager's webhook payloads (version 4), in arrival order."""

    server: HTTPServer
    thread: threading.Thread
    payloads: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def notifications(self) -> list[tuple[str, dict]]:
        """(receiver, alert) for every alert in every payload."""
        with self.lock:
            return [(p.get("receiver", ""), a) for p in self.payloads for a in p.get("alerts", [])]

    def group_labels(self, alertname: str) -> list[dict]:
        """groupLabels of the payloads that carried ``alertname``."""
        with self.lock:
            return [p.get("groupLabels", {}) for p in self.payloads
                    if any(a["labels"].get("alertname") == alertname for a in p.get("alerts", []))]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_webhook(ns: Netns) -> Webhook:
    """Listens on 127.0.0.1 inside ``ns`` (the socket is made there)."""
    holder: dict[str, Webhook] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                payload = json.loads(body)
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            wh = holder["wh"]
            with wh.lock:
                wh.payloads.append(payload)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = ns.call(HTTPServer, ("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fleet-webhook", daemon=True)
    wh = holder["wh"] = Webhook(server, thread)
    thread.start()
    return wh


# ---------------------------------------------------------------------------
# Prometheus and Alertmanager


AM_EXAMPLE = ROOT / "config" / "alertmanager" / "alertmanager.yml"


def alertmanager_config(webhook_url: str) -> str:
    """The shipped example (routes, grouping, inhibitions) with its
    receivers pointed at the test's webhook and its timers shortened so a
    notification follows within seconds."""
    text = AM_EXAMPLE.read_text()
    text, n_urls = re.subn(r"url: http://127\.0\.0\.1:5001/(\w+).*$", rf"url: {webhook_url}/\1", text, flags=re.M)
    text, n_timers = re.subn(r"^(\s*)(group_wait|group_interval|repeat_interval|resolve_timeout): \S+",
                             lambda m: f"{m.group(1)}{m.group(2)}: "
                                       f"{'1h' if m.group(2) == 'repeat_interval' else '1s'}", text, flags=re.M)
    assert n_urls >= 2 and n_timers >= 4, (n_urls, n_timers)
    return text


def prometheus_config(rules: Path, sd_file: Path, alertmanager: str) -> str:
    return f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
  external_labels:
    cluster: fleet-test
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{alertmanager}"]
scrape_configs:
  - job_name: rtagent
    file_sd_configs:
      - files: ["{sd_file}"]
        refresh_interval: 1s
"""


@dataclass
class Monitoring:
    ns: Netns
    prometheus: subprocess.Popen
    alertmanager: subprocess.Popen
    webhook: Webhook
    prom_url: str
    am_url: str
    logs: dict[str, Path]

    def get(self, url: str):
        return self.ns.call(http_json, url)

    def query(self, expr: str) -> list[dict]:
        body = self.get(f"{self.prom_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert body["status"] == "success", body
        return body["data"]["result"]

    def values(self, expr: str, label: str = "instance") -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def prom_alerts(self, name: str, state: str = "firing") -> list[dict]:
        body = self.get(f"{self.prom_url}/api/v1/alerts")
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]

    def am_alerts(self, name: str) -> list[dict]:
        url = f"{self.am_url}/api/v2/alerts?{urllib.parse.urlencode({'filter': f'alertname={name}'})}"
        return self.get(url)

    def check_alive(self) -> None:
        for name, proc in (("prometheus", self.prometheus), ("alertmanager", self.alertmanager)):
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n"
                                     f"{self.logs[name].read_text(errors='replace')[-4000:]}")

    def close(self) -> None:
        stop(self.prometheus)
        stop(self.alertmanager)
        self.webhook.close()


def _wait_ready(mon: Monitoring, url: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        mon.check_alive()
        try:
            mon.ns.call(http_text, url)
            return
        except (OSError, urllib.error.URLError) as err:
            last = err
        time.sleep(0.25)
    raise AssertionError(f"{what} not ready after {timeout}s: {last}")


def start_monitoring(ns: Netns, workdir: Path, sd_file: Path) -> Monitoring:
    """Alertmanager, then Prometheus, both inside ``ns`` on loopback."""
    workdir.mkdir(parents=True, exist_ok=True)
    webhook = start_webhook(ns)
    am_cfg = workdir / "alertmanager.yml"
    am_cfg.write_text(alertmanager_config(webhook.url))
    prom_cfg = workdir / "prometheus.yml"
    prom_cfg.write_text(prometheus_config(scaled_rules(workdir / "rtagent-rules.yml"), sd_file, "127.0.0.1:9093"))
    logs = {"alertmanager": workdir / "alertmanager.log", "prometheus": workdir / "prometheus.log"}
    am = prom = None
    try:
        with open(logs["alertmanager"], "wb") as out:
            am = subprocess.Popen(ns.argv(
                "prometheus-alertmanager", f"--config.file={am_cfg}", f"--storage.path={workdir / 'am-data'}",
                "--web.listen-address=127.0.0.1:9093", "--cluster.listen-address=",
                "--log.level=debug"), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        with open(logs["prometheus"], "wb") as out:
            prom = subprocess.Popen(ns.argv(
                "prometheus", f"--config.file={prom_cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                "--web.listen-address=127.0.0.1:9090", "--storage.tsdb.retention.time=1h",
                "--rules.alert.resend-delay=1s"),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    except BaseException:
        stop(am)
        stop(prom)
        webhook.close()
        raise
    mon = Monitoring(ns, prom, am, webhook, "http://127.0.0.1:9090", "http://127.0.0.1:9093", logs)
    try:
        _wait_ready(mon, f"{mon.am_url}/-/ready", "alertmanager")
        _wait_ready(mon, f"{mon.prom_url}/-/ready", "prometheus")
    except BaseException:
        mon.close()
        raise
    return mon
