"""``rtagent apply``: enforce once, print each change, then the check result.

An invalid realtime intent changes nothing for that guest and makes the exit
code 1 with the rule broken; other guests are still tuned.
"""

from __future__ import annotations

import json
import sys

from ..selector import GuestSelector
from .common import guest_line, inspect_running, judge_host_wide, open_tuner, selected_domains


def run(args) -> int:
    config, host, tuner = open_tuner(args)
    try:
        selector = GuestSelector.from_config(config.daemon)
        doms = selected_domains(host, args.domains, selector)
        # Inspect every guest first: the RT budget is shared host-wide, so
        # the grant for one guest must know all realtime vCPU cgroups.
        reports = inspect_running(tuner, doms, selector)
        # pCPU ownership and the RT budget are host-wide: count the guests
        # that were not named (or are outside the selection) too.
        for r in judge_host_wide(tuner, host, reports, selector) + [r for _, r in reports]:
            tuner.record_claim(r)
        after = [tuner.apply(guest, dry_run=args.dry_run, report=r) for guest, r in reports]
    finally:
        host.close()
    invalid = [r for r in after if r.realtime and not r.spec.valid]
    failed = [r for r in after if r.failures]
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "domains": [r.to_json() for r in after]}, indent=2))
    else:
        for r in after:
            for res in r.changes:
                tag = {"changed": "changed", "dry-run": "would change"}.get(res.outcome, res.outcome)
                detail = f" ({res.detail})" if res.detail else ""
                print(f"{r.name}: {tag}: {res.action.describe()}{detail}")
            if r.realtime and not r.spec.valid:
                for e in r.spec.errors:
                    print(f"rtagent: invalid realtime intent, nothing changed: {e}", file=sys.stderr)
        for r in after:
            print(guest_line(r))
    if invalid or failed:
        return 1
    return 0 if all(r.compliant for r in after) else 1
