"""Host readiness checks as JSON rows, for ``check`` and ``status``."""

from __future__ import annotations

from typing import Any

from ..config import Config


def host_checks_json(config: Config, guest_pids: set[int] | None = None) -> list[dict[str, Any]]:
    from ..monitor.hostchecks import run_host_checks

    assert config.partition is not None
    return [c.to_json() for c in run_host_checks(config.partition, exclude_pids=guest_pids or set())]
