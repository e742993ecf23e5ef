"""Host readiness checks as JSON rows, for ``check`` and ``status``."""

from __future__ import annotations

from typing import Any

from ..config import Config


def host_checks_json(config: Config, guest_pids: set[int] | None = None,
                     vcpusched_guests: list[str] | None = None) -> list[dict[str, Any]]:
    """``vcpusched_guests``: defined guests with a realtime ``<vcpusched>``
    (refused by libvirt on a host with RT group scheduling)."""
    from ..monitor.hostchecks import run_host_checks

    assert config.partition is not None
    return [c.to_json() for c in run_host_checks(config.partition, exclude_pids=guest_pids or set(),
                                                  vcpusched_guests=vcpusched_guests or ())]
