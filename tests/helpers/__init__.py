"""Helpers for tests that need real processes.

:func:`start_qemu_like` runs ``tests/helpers/qemu_like.py`` (a process with
threads named like a QEMU guest's) and returns a :class:`QemuLike` handle;
``QemuLike.stop()`` ends it — by its own PID only, never by name.  The
``qemu_like`` pytest fixture (tests/threads/conftest.py) wraps both.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["QEMU_LIKE", "QemuLike", "start_qemu_like"]

QEMU_LIKE = str(Path(__file__).with_name("qemu_like.py"))


@dataclass
class QemuLike:
    """A running qemu_like helper."""

    proc: subprocess.Popen
    pid: int
    main: str  # the main thread's comm
    threads: dict[str, int]  # thread name → tid (excluding the main thread)
    tasks: list[tuple[str, int]] = field(default_factory=list)  # every (name, tid)
    mlocked: int = 0

    @property
    def vcpu_tids(self) -> dict[int, int]:
        out = {}
        for name, tid in self.threads.items():
            if name.startswith("CPU ") and "/" in name:
                out[int(name[4:].split("/", 1)[0])] = tid
        return out

    @property
    def all_tids(self) -> list[int]:
        return sorted([self.pid] + [tid for _, tid in self.tasks])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Close stdin (the helper exits on EOF); SIGTERM, then SIGKILL, to
        this PID only if it does not go."""
        if self.proc.poll() is not None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)


def start_qemu_like(*args: str, timeout: float = 30.0) -> QemuLike:
    """Start the helper with command line ``args`` and wait for its JSON line."""
    proc = subprocess.Popen(
        [sys.executable, QEMU_LIKE, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = b""
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError(f"qemu_like {args} not ready after {timeout}s")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
                raise RuntimeError(f"qemu_like {args} exited early (rc={proc.poll()}): {err.strip()}")
            line += chunk
        sel.close()
        info = json.loads(line)
    except BaseException:
        proc.kill()  # our own child, by PID
        proc.wait()
        raise
    return QemuLike(
        proc=proc,
        pid=info["pid"],
        main=info["main"],
        threads=info["threads"],
        tasks=[tuple(t) for t in info["tasks"]],
        mlocked=info["mlocked"],
    )
