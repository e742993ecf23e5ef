"""Fixtures for the threads tier: real processes with QEMU-like threads."""

from __future__ import annotations

import pytest

from tests.helpers import QemuLike, start_qemu_like


@pytest.fixture
def qemu_like():
    """``qemu_like(*args)`` starts ``tests/helpers/qemu_like.py`` with those
    arguments and returns a :class:`tests.helpers.QemuLike`; every helper
    started is stopped at teardown (by its PID), even when the test fails."""
    started: list[QemuLike] = []

    def start(*args: str, timeout: float = 30.0) -> QemuLike:
        helper = start_qemu_like(*args, timeout=timeout)
        started.append(helper)
        return helper

    yield start
    for helper in started:
        helper.stop()
