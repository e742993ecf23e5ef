#!/usr/bin/env bash
# The test command: every tier (unit, threads, system, reliability-short, fleet, node).
# Run as root on a host prepared by scripts/setup-host.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RTAGENT_VENV:-.venv}
"$VENV/bin/python" -m pytest -m "unit or threads or system or reliability or fleet or node" "$@"
