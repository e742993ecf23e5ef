"""``rtagent check``: audit the host partition and running guests; changes nothing.

Exit 0 when everything is compliant, 1 when any guest (or a host check of
severity "error") is not, 2 on an error (config, libvirt unreachable).
"""

from __future__ import annotations

import json

from ..selector import GuestSelector
from .common import (guest_line, host_summary, inspect_running, judge_host_wide, open_tuner, selected_domains,
                     thread_table, vcpusched_guests)
from .hostinfo import host_checks_json


def run(args) -> int:
    config, host, tuner = open_tuner(args)
    try:
        selector = GuestSelector.from_config(config.daemon)
        pairs = inspect_running(tuner, selected_domains(host, args.domains, selector), selector)
        judge_host_wide(tuner, host, pairs, selector)
        reports = [r for _, r in pairs]
        refused = vcpusched_guests(tuner, host, selector)
    finally:
        host.close()
    checks = host_checks_json(config, guest_pids={r.pid for r in reports if r.pid}, vcpusched_guests=refused)
    bad_host = [c for c in checks if not c["ok"] and c.get("severity") == "error"]
    ok = all(r.compliant for r in reports) and not bad_host
    if args.json:
        out = {"host": {**host_summary(config), "checks": checks},
               "domains": [r.to_json() for r in reports], "compliant": ok}
        print(json.dumps(out, indent=2))
        return 0 if ok else 1
    hs = host_summary(config)
    print(f"host: realtime CPUs {hs['realtime_cpus'] or '(none)'}, housekeeping CPUs {hs['housekeeping_cpus']}")
    for c in checks:
        if not c["ok"]:
            print(f"  {'✗' if c.get('severity') == 'error' else '!'} {c['name']}: {c['detail']}")
    if not reports:
        print("no running guests")
    for r in reports:
        print(guest_line(r))
        if args.domains and r.realtime:
            for line in thread_table(r.to_json()["threads"]):
                print("  " + line)
            for v in r.violations:
                print(f"  ✗ {v.check}: {v.detail}")
            for w in r.spec.warnings:
                print(f"  ! {w}")
    return 0 if ok else 1
