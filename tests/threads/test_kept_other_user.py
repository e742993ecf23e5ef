"""The full check's memory facts of a process of another user, read with
the shipped unit's capabilities: on a distribution's libvirt QEMU runs as
``libvirt-qemu``, and ``prlimit`` on another user's process needs
CAP_SYS_RESOURCE, which the unit's bounding set does not have.

A real process (``sleep`` as ``nobody``, started here and ended by PID)
and a real reader in a child under ``capsh --drop=cap_sys_resource``
(what ``CapabilityBoundingSet=`` does), against the kernel's own
``/proc/<pid>/limits``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.threads

NOBODY = 65534
READER = """
import json, sys
from rtagent.kernel import Kernel
from rtagent.kernel.kept import KeptTasks
kept = KeptTasks(Kernel(), max_fds=8)
state, mem = kept.process("guest", int(sys.argv[1]), True)
again = kept.process("guest", int(sys.argv[1]), True)[1]
print(json.dumps([state, mem.memlock_soft, mem.memlock_hard, again.memlock_soft, again.memlock_hard]))
"""


def _limits(pid: int) -> tuple[int | None, int | None]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max locked memory"):
            soft, hard = line.split()[3:5]
            return (None if soft == "unlimited" else int(soft)), (None if hard == "unlimited" else int(hard))
    raise AssertionError("no Max locked memory line")


@pytest.mark.skipif(shutil.which("capsh") is None or shutil.which("setpriv") is None,
                    reason="capsh (libcap2-bin) and setpriv (util-linux) needed")
def test_memlock_of_another_users_process_without_cap_sys_resource():
    other = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sleep", "60"])
    try:
        # setpriv execs sleep in the same process: wait until it runs as nobody.
        for _ in range(200):
            if f"\t{NOBODY}\t" in Path(f"/proc/{other.pid}/status").read_text():
                break
            time.sleep(0.01)
        root = Path(__file__).resolve().parents[2]
        r = subprocess.run(["capsh", "--drop=cap_sys_resource", "--", "-c", 'exec "$0" "$@"',
                            sys.executable, "-c", READER, str(other.pid)],
                           capture_output=True, text=True, timeout=60, cwd=root,
                           env=dict(os.environ, PYTHONPATH=str(root)))
        assert r.returncode == 0, r.stderr
        state, soft, hard, soft2, hard2 = json.loads(r.stdout)
        assert state == "S"
        assert (soft, hard) == (soft2, hard2) == _limits(other.pid)
    finally:
        other.kill()
        other.wait()
