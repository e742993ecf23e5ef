"""The default drift watch (``drift_watch = "auto"``) where the kernel's
trace events cannot be had: the daemon starts, says why in its log and in
``rtagent status``, and finds drift by its resync every second.

The realistic case is a unit hardened further by the operator
(``ProtectKernelTunables=yes`` makes ``/sys`` read-only, tracefs with it):
here a private mount namespace remounts tracefs read-only for the daemon
alone (``unshare -m``), invisible to the host and to other tests.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from rtagent.kernel import tracefs
from tests.reliability.conftest import is_fifo, wait_tuned
from tests.system.conftest import wait_for

pytestmark = pytest.mark.reliability


@pytest.mark.system
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
@pytest.mark.skipif(tracefs.find_tracefs() is None, reason="no tracefs mounted here")
def test_the_default_watch_on_a_read_only_tracefs_says_why_and_the_resync_corrects(rel_daemon, guest_factory):
    root = tracefs.find_tracefs()
    script = f'mount -o remount,bind,ro {root} && exec "$0" "$@"'
    d = rel_daemon(resync=1.0, daemon='drift_watch = "default"\n',  # the key left out: its default
                   extra="[interference]\nenabled = false\n",  # it needs tracefs too; not what is tested here
                   argv_prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    watch = d.status()["daemon"]["drift_watch"]
    assert watch["state"] == "unavailable", watch
    assert "Read-only file system" in watch["reason"] and watch["interval_s"] == 1.0, watch
    assert "drift watch unavailable" in d.log_text() and "Traceback" not in d.log_text()
    g = guest_factory()
    wait_tuned(d, g)
    tid = g.vcpu_tids()[1]
    resyncs = d.status()["daemon"]["resyncs"]
    subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True)
    wait_for(lambda: is_fifo(tid), 20, "chrt undone by the resync", interval=0.02)
    wait_for(lambda: d.status()["daemon"]["resyncs"] > resyncs, 10, "the resync that corrected it counted")
    assert d.proc.poll() is None
