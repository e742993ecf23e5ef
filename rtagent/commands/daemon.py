"""``rtagent run``: the daemon."""

from __future__ import annotations


def run(args) -> int:
    from ..daemon import run as run_daemon

    return run_daemon(args.config)
