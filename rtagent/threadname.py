"""The kernel's name (comm) of the calling thread: Python does not set it,
and an operator's ``top -H`` and the benchmarks read it."""

from __future__ import annotations


def name_thread(name: str) -> None:
    try:
        import prctl

        prctl.set_name(name[:15])
    except (ImportError, OSError):  # cosmetic: the daemon runs without it
        pass
