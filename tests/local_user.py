"""A real unprivileged local user for abuse tests, and its connection hog.

:func:`local_user` creates a system user with ``useradd`` (no home, no
shell) and removes it with ``userdel`` when the test ends, even when it
fails.  :class:`Hog` runs ``tests/helpers/conn_hog.py`` as that user (uid and
gid switched by ``setpriv``, no supplementary groups, no capabilities), with
its own descriptor limit raised so that it can hold over a thousand
connections; it is stopped by closing its stdin, then by its PID.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOG = Path(__file__).parent / "helpers" / "conn_hog.py"


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int


@contextmanager
def local_user(prefix: str = "rts") -> Iterator[LocalUser]:
    name = f"{prefix}{os.getpid()}"[:31]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                    name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield LocalUser(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def as_user(user: LocalUser, argv: list[str], nofile: int = 4096) -> list[str]:
    """``argv`` run as ``user`` (no groups, no capabilities) with RLIMIT_NOFILE ``nofile``."""
    return ["prlimit", f"--nofile={nofile}:{nofile}", "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
            "--clear-groups", "--inh-caps=-all", *argv]


class Hog:
    """``conn_hog.py`` as ``user`` against ``host:port``; :attr:`last` is its
    latest report, :attr:`peak` the most connections it held at once."""

    def __init__(self, user: LocalUser, mode: str, host: str, port: int, n: int):
        argv = as_user(user, ["/usr/bin/python3", "-c", HOG.read_text(), mode, host, str(port), str(n)])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd="/", text=True)
        self.last: dict = {}
        self.reports = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.last = json.loads(line)
                self.reports += 1
            except ValueError:
                pass

    @property
    def open(self) -> int:
        return int(self.last.get("open", 0))

    def stop(self) -> dict:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.last

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
