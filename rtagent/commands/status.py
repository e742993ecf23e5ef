"""``rtagent status``: ask the running daemon over its Unix socket.

Exit 0 all compliant, 1 some violation, 3 daemon not reachable.
"""

from __future__ import annotations

import json
import time

from ..config import StatusConfig, load_config
from ..errors import ConfigError
from ..status import fetch
from ..monitor.interference_service import render_status as render_interference
from .common import thread_table


def _socket_path(args) -> str:
    if args.socket:
        return args.socket
    try:
        return load_config(args.config, resolve=False).status.socket
    except ConfigError:
        if args.config is None:
            return StatusConfig().socket
        raise


def run(args) -> int:
    path = _socket_path(args)
    data = fetch(path)
    domains = data.get("domains", [])
    if args.domain:
        domains = [d for d in domains if args.domain in (d.get("name"), d.get("uuid"))]
        if not domains:
            print(f"rtagent: no realtime guest {args.domain!r} is tracked by the daemon")
            return 1
    compliant = all(d.get("compliant") is not False for d in domains) and (
        args.domain is not None or data.get("compliant", True))
    if args.json:
        out = dict(data)
        out["domains"] = domains
        print(json.dumps(out, indent=2))
        return 0 if compliant else 1
    print("\n".join(render(data, domains, detail=args.domain is not None)))
    return 0 if compliant else 1


def _ago(ts) -> str:
    if not ts:
        return "never"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def _libvirt_state(lv: dict) -> str:
    if not lv.get("connected"):
        return "DISCONNECTED"
    if lv.get("unresponsive_for_s") is not None:
        # Known guests are still enforced from the kernel side meanwhile.
        return f"UNRESPONSIVE for {lv['unresponsive_for_s']:.0f}s"
    return "connected"


def _start_window(entries: dict) -> str:
    """START: the most any realtime vCPU ran as non-realtime in this guest's
    start (rtagent_vcpu_unprotected_start_seconds); "-" if not measured."""
    values = [e["unprotected_seconds"] for e in entries.values() if e.get("unprotected_seconds") is not None]
    return f"{max(values) * 1e6:.0f}µs" if values else "-"


def _start_window_lines(entries: dict) -> list[str]:
    out = []
    for v, e in sorted(entries.items(), key=lambda kv: int(kv[0])):
        if e.get("unprotected_seconds") is None:
            out.append(f"start window: vCPU {v} not realtime yet (placed by libvirt, tid {e.get('tid')})")
            continue
        since = "since libvirt placed it" if e.get("baseline") == "placement" else "since its thread started"
        when = "while libvirt was starting the guest" if e.get("path") == "early" else "after the STARTED event"
        out.append(f"start window: vCPU {v} ran {e['unprotected_seconds'] * 1e6:.0f} µs as non-realtime "
                   f"{since}; made realtime {when}")
    return out


def _drift_watch(w: dict | None) -> str:
    """``running (12 events, 0 lost; resync every 10s)``, or why not."""
    if not w:
        return "off"
    state = w.get("state", "off")
    if state == "running":
        return f"running ({w.get('events', 0)} events, {w.get('lost', 0)} lost; resync every {w.get('interval_s')}s)"
    return state if state == "off" else f"{state} ({w.get('reason') or '?'})"


def _checks_age(host: dict) -> str:
    """``, checks 12s ago (every 300s)``: the host checks' lines below are that old."""
    at = host.get("checks_at")
    return "" if at is None else f", checks {_ago(at)} (every {host.get('checks_every_s', 0):g}s)"


def render(data: dict, domains: list[dict], *, detail: bool) -> list[str]:
    d, host = data.get("daemon", {}), data.get("host", {})
    lv = d.get("libvirt", {})
    lines = [
        f"rtagent: up {d.get('uptime_s', 0):.0f}s, libvirt {_libvirt_state(lv)}"
        f" ({lv.get('uri', '?')}, {lv.get('reconnects', 0)} reconnects), proc connector "
        f"{'on' if d.get('proc_connector') else 'off'}, drift watch {_drift_watch(d.get('drift_watch'))}, "
        f"last resync {_ago(d.get('last_resync_at'))}",
        f"host: realtime CPUs {host.get('realtime_cpus') or '(none)'}, housekeeping CPUs "
        f"{host.get('housekeeping_cpus', '?')}{_checks_age(host)}",
    ]
    failing = [c for c in host.get("checks", []) if not c.get("ok")]
    for c in failing:
        lines.append(f"  {'✗' if c.get('severity') == 'error' else '!'} {c['name']}: {c['detail']}")
    lines += render_interference(data.get("interference"))
    lines.append("")
    lines.append(f"{'DOMAIN':<24} {'RT VCPUS':<9} {'OK':<3} {'DRIFT':>5}  {'RUNQ DELAY':>12} {'AS OF':>8}  "
                 f"{'START':>9}  VIOLATIONS")
    if not domains:
        lines.append("(no realtime guests)")
    for g in domains:
        ok = "✓" if g.get("compliant") else "✗"
        rt = {int(k) for k in (g.get("realtime_vcpus") or "").replace("-", ",").split(",") if k.isdigit()}
        stats = g.get("vcpu_stats", {})
        shown = [v for k, v in stats.items() if int(k) in rt or not rt]
        rate = sum(v.get("run_delay_rate_ns_per_s", 0) for v in shown)
        # The rate is from the last full observation (a full check, an event): say how old.
        seen = min((v["observed_at"] for v in shown if v.get("observed_at")), default=None)
        viol = ", ".join(sorted({v["check"] for v in g.get("violations", [])})) or "-"
        lines.append(f"{g.get('name', '?'):<24} {g.get('realtime_vcpus') or '-':<9} {ok:<3} "
                     f"{g.get('drift_corrections_total', 0):>5}  {rate / 1000:>9.1f}µs/s {_ago(seen) if seen else '-':>8}  "
                     f"{_start_window(g.get('start_window') or {}):>9}  {viol}")
        if detail:
            lines.append("")
            lines += ["  " + line for line in thread_table(g.get("threads", []))]
            lines += ["  " + line for line in _start_window_lines(g.get("start_window") or {})]
            for v in g.get("violations", []):
                lines.append(f"  ✗ {v['check']}: {v['detail']}")
            if g.get("drift_corrections"):
                lines.append("  drift corrections: " + ", ".join(f"{k} {n}" for k, n in
                                                                   sorted(g["drift_corrections"].items())))
    return lines
