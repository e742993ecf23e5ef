"""``rtagent config check``: validate and print the effective configuration."""

from __future__ import annotations

import json

import sys

from ..config import load_config, partition_warning


def run(args) -> int:
    cfg = load_config(args.config)
    if (warning := partition_warning(cfg)) is not None:
        print(f"rtagent: warning: {warning}", file=sys.stderr)
    data = cfg.to_json()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"config: {cfg.path or '(defaults, no file)'}: OK")
    for section, values in data.items():
        if section == "rule":
            for i, rule in enumerate(values):
                print(f"[[rule]] #{i}: " + ", ".join(f"{k}={v!r}" for k, v in rule.items()))
            continue
        for key, value in values.items():
            print(f"{section}.{key} = {value!r}")
    return 0
