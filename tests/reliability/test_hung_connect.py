"""A libvirtd that hangs for minutes, connection lost and reconnects
attempted all along, must not make the daemon accumulate threads or
descriptors, nor leave behind the connection a timed-out ``open`` returns
once libvirtd answers again.

libvirtd "hangs" behind a relay the test freezes
(tests/helpers/libvirt_proxy.py): to the daemon that is a SIGSTOPped
libvirtd, but the libvirtd the other tests share keeps running.  The relay
counts the connections the daemon holds open to it.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers.libvirt_proxy import FreezableProxy
from tests.reliability.conftest import fd_count, report, scale
from tests.system.conftest import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.system]


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _libvirt(d) -> dict:
    return d.status()["daemon"]["libvirt"]


def test_minutes_of_hung_libvirtd_leak_no_thread_fd_or_connection(rel_daemon, tmp_path):
    hang_s = scale(180, 45)
    proxy = FreezableProxy(str(tmp_path / "libvirt-relay.sock")).start()
    try:
        d = rel_daemon(resync=0.5, extra=f'[libvirt]\nuri = "{proxy.uri}"\ncall_timeout_s = 1.0\n'
                                         "reconnect_max_backoff_s = 2.0\n")
        pid = d.proc.pid
        base_threads, base_fds = _threads(pid), fd_count(pid)
        assert proxy.open_connections() == 1
        proxy.freeze()
        end = time.monotonic() + hang_s
        peak_threads, peak_fds, lost_seen = base_threads, base_fds, False
        while time.monotonic() < end:
            peak_threads, peak_fds = max(peak_threads, _threads(pid)), max(peak_fds, fd_count(pid))
            lost_seen = lost_seen or not _libvirt(d)["connected"]
            time.sleep(1.0)
        attempts = d.log_text().count("cannot connect to libvirt")
        proxy.thaw()
        wait_for(lambda: (lv := _libvirt(d))["connected"] and lv["responsive"], 30, "reconnected after the thaw")
        # The connection the abandoned open returned, and the lost one, are closed.
        wait_for(lambda: proxy.open_connections() == 1, 15,
                 f"one connection to libvirtd (relay holds {proxy.open_connections()})")
        after_threads, after_fds = _threads(pid), fd_count(pid)
    finally:
        proxy.thaw()
        proxy.close()
    report("hung libvirtd during connect", hang_s=hang_s, connect_attempts_failed=attempts,
           relay_connections_accepted=proxy.accepted, threads_before=base_threads, threads_peak=peak_threads,
           threads_after=after_threads, fds_before=base_fds, fds_peak=peak_fds, fds_after=after_fds)
    assert lost_seen, "keepalive never declared the connection lost: the test tested nothing"
    assert attempts >= 2
    assert d.proc.poll() is None
    assert peak_threads <= base_threads + 1 and after_threads <= base_threads + 1
    assert peak_fds <= base_fds + 2 and after_fds <= base_fds + 1
    # The open that was given up returned at the thaw: its connection was
    # closed on the worker, not left to a destructor on whichever thread.
    assert "returned" in d.log_text() and "after it was given up; releasing its result" in d.log_text()
