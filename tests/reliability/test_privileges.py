"""Least privilege: the start-up capability check, the drop, and the
daemon's own scheduling (threads and system tiers).

The daemon is started under ``capsh --drop=…`` (libcap2-bin), which removes
a capability from the bounding set before exec, so the root process starts
without it — what systemd's CapabilityBoundingSet= does.  libvirtd is never
started from inside such a shell (it would inherit the reduced set).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import daemon_config, task_ids, wait_tuned

pytestmark = pytest.mark.reliability

needs_capsh = pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh (libcap2-bin) not installed")


def _cap_mask(pid: int, field: str) -> int:
    m = re.search(rf"^{field}:\s+([0-9a-f]+)$", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert m
    return int(m.group(1), 16)


def _bits(*numbers: int) -> int:
    return sum(1 << n for n in numbers)


CAP_CHOWN, CAP_NET_ADMIN, CAP_SYS_NICE = 0, 12, 23


def _run_daemon(tmp_path: Path, prefix: list[str], **cfg) -> subprocess.CompletedProcess:
    conf = daemon_config(tmp_path / "rtagent.toml", sock=str(tmp_path / "s.sock"), resync=1.0, **cfg)
    # A libvirt URI nobody answers: the capability check comes first, and
    # if it passed the daemon would wait for libvirt (the timeout says so).
    conf.write_text(conf.read_text() + '\n[libvirt]\nuri = "test+unix:///nonexistent"\n')
    return subprocess.run([*prefix, sys.executable, "-m", "rtagent", "run", "--config", str(conf)],
                          capture_output=True, text=True, timeout=20)


@pytest.mark.threads
@needs_capsh
def test_missing_cap_sys_nice_stops_the_start_with_a_clear_message(tmp_path):
    r = _run_daemon(tmp_path, ["capsh", "--drop=cap_sys_nice", "--"] + ["-c", 'exec "$0" "$@"'])
    assert r.returncode == 2, r
    lines = [line for line in r.stderr.splitlines() if line.startswith("rtagent:")]
    assert len(lines) == 1, r.stderr
    assert "missing capability CAP_SYS_NICE" in lines[0]
    assert "sched_setscheduler" in lines[0] and "CapabilityBoundingSet" in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.threads
@needs_capsh
def test_missing_cap_chown_for_a_status_group_names_it(tmp_path):
    r = _run_daemon(tmp_path, ["capsh", "--drop=cap_chown", "--", "-c", 'exec "$0" "$@"'], status_group="kvm")
    assert r.returncode == 2, r
    assert "missing capability CAP_CHOWN" in r.stderr and "status.group = 'kvm'" in r.stderr, r.stderr


@pytest.mark.threads
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_read_only_cgroup_rt_files_name_the_file(tmp_path):
    from rtagent.kernel import Kernel

    tree = Kernel().cgroups.rt_tree()
    hierarchy = tree.mount if tree is not None else None
    if hierarchy is None:
        pytest.skip("no cgroup v1 RT group scheduling here")
    # A private mount namespace: the read-only remount is invisible to the host.
    script = f'mount -o remount,bind,ro {hierarchy} && exec "$0" "$@"'
    r = _run_daemon(tmp_path, ["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    assert r.returncode == 2, r
    assert f"cannot write {hierarchy}/cpu.rt_runtime_us" in r.stderr, r.stderr
    assert "Read-only file system" in r.stderr and "RT group budget" in r.stderr


@pytest.mark.system
@needs_capsh
def test_missing_cap_net_admin_only_disables_the_proc_connector(rel_daemon, guest_factory):
    d = rel_daemon(argv_prefix=["capsh", "--drop=cap_net_admin", "--", "-c", 'exec "$0" "$@"'])
    st = d.status()
    assert st["daemon"]["proc_connector"] is False
    assert "missing capability CAP_NET_ADMIN" in d.log_text() and "proc connector disabled" in d.log_text()
    g = guest_factory()
    wait_tuned(d, g)  # without the proc connector


@pytest.mark.system
def test_daemon_keeps_only_the_capabilities_it_needs_and_is_never_realtime(rel_daemon, guest_factory):
    d = rel_daemon()
    g = guest_factory()
    pid = d.proc.pid
    need = _bits(CAP_NET_ADMIN, CAP_SYS_NICE)
    for field in ("CapBnd", "CapPrm", "CapEff"):
        assert _cap_mask(pid, field) == need, (field, hex(_cap_mask(pid, field)))
    assert _cap_mask(pid, "CapInh") == 0 and _cap_mask(pid, "CapAmb") == 0
    # The agent itself: never realtime, only on housekeeping CPUs (CPU 0 here), every thread.
    tids = task_ids(pid)
    assert len(tids) >= 3  # main, libvirt events, status socket, proc connector
    for tid in tids:
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER, tid
        assert os.sched_getaffinity(tid) == {0}, (tid, os.sched_getaffinity(tid))
    assert "capabilities kept: CAP_SYS_NICE, CAP_NET_ADMIN" in d.log_text()
    # ...and with only those it still tunes a guest (and stays confined after).
    wait_tuned(d, g)
    assert all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in task_ids(pid))


@pytest.mark.system
def test_daemon_started_realtime_drops_to_sched_other(rel_daemon):
    """Started SCHED_FIFO (a mistake an operator can make with chrt): it drops
    to SCHED_OTHER before starting any thread.  The start is pinned to CPU 0
    so that the realtime start-up never runs on CPU 1; the narrowing of a
    wide affinity is checked by the test above."""
    d = rel_daemon(argv_prefix=["taskset", "-c", "0", "chrt", "-f", "1"])
    for tid in task_ids(d.proc.pid):
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER, tid
        assert os.sched_getaffinity(tid) == {0}
