"""Network namespaces for the fleet tier: one per node, one for monitoring.

Each node namespace is joined to the monitoring namespace by a veth pair
with a /30 of its own; every address lives inside namespaces this module
created (the host's own namespace gets no interface and no address).

Processes enter a namespace with ``nsenter --net`` only — not
``ip netns exec``, which also unshares the mount namespace and remounts
``/sys``, hiding the cgroup v1 hierarchies and tracefs the daemon needs.
The test process itself talks to servers inside the monitoring namespace
from a worker thread that has ``setns()``-ed into it: the network namespace
is per thread, so the rest of pytest stays where it is.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Netns:
    name: str
    _executor: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def create(self) -> Netns:
        ip("netns", "add", self.name)
        ip("-n", self.name, "link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.path.exists():
            ip("netns", "delete", self.name)

    def argv(self, *cmd: str) -> list[str]:
        """``cmd`` run inside this namespace (the PID is the command's own)."""
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def call(self, fn, *args, **kw):
        """Run ``fn`` in a thread that lives in this namespace; sockets it
        creates belong to the namespace (and stay there when handed out)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix=f"netns-{self.name}", initializer=_setns, initargs=(self.path,))
        return self._executor.submit(fn, *args, **kw).result()


def veth(a: Netns, a_if: str, a_addr: str, b: Netns, b_if: str, b_addr: str) -> None:
    """A veth pair created directly inside ``a`` and ``b`` (CIDR addresses)."""
    ip("link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name)
    ip("-n", a.name, "addr", "add", a_addr, "dev", a_if)
    ip("-n", b.name, "addr", "add", b_addr, "dev", b_if)
    ip("-n", a.name, "link", "set", a_if, "up")
    ip("-n", b.name, "link", "set", b_if, "up")


def remove_stale(prefix: str, cgroup_root: Path = Path("/sys/fs/cgroup/cpu")) -> list[str]:
    """Namespaces and (empty) cpu cgroups ``<prefix><pid>-…`` left by a fleet
    run whose pytest (pid) is gone (killed before its teardown ran); returns
    the names removed."""
    removed = []
    for p in NETNS_DIR.glob(f"{prefix}*") if NETNS_DIR.is_dir() else ():
        m = re.fullmatch(rf"{re.escape(prefix)}(\d+)-\w+", p.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            ip("netns", "delete", p.name)
            removed.append(p.name)
    for p in cgroup_root.glob(f"{prefix}*-jail") if cgroup_root.is_dir() else ():
        m = re.fullmatch(rf"{re.escape(prefix)}(\d+)-jail", p.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            try:
                p.rmdir()  # fails while a thread is still inside: then it is not ours to move
                removed.append(p.name)
            except OSError:
                pass
    return removed
