"""``host.realtime_cpus = "auto"`` on a host that isolates no CPU (this one):
the daemon starts with a clear warning and makes no vCPU realtime — the
guest is reported with a ``partition`` violation, its vCPUs stay
SCHED_OTHER in the kernel through several resyncs.  Before, it started
silently and made the vCPUs FIFO on CPUs nothing had cleared for them."""

from __future__ import annotations

import os

import pytest

from rtagent.kernel import Kernel
from tests.conftest import unique_name
from tests.reliability.conftest import create_guest, wait_for
from tests.system.conftest import write_config

pytestmark = pytest.mark.reliability


@pytest.mark.system
def test_auto_without_isolated_cpus_warns_and_makes_nothing_fifo(rel_daemon, guest_factory, tmp_path):
    if Kernel().cpus.kernel_isolated():
        pytest.skip("this host isolates CPUs: auto is not empty here")
    sock = str(tmp_path / "auto.sock")
    name = unique_name("rtsauto")
    cfg = write_config(tmp_path / "auto.toml", sock=sock, resync=0.5,
                       daemon=f'guest_names = ["{name}"]')  # only our guest on this shared host
    cfg.write_text(cfg.read_text().replace('realtime_cpus = "1"', 'realtime_cpus = "auto"'))
    d = rel_daemon._spawn(cfg, sock, 0, None, True)
    assert 'host.realtime_cpus = "auto" found no isolated CPU' in d.log_text()
    assert "no vCPU will be made realtime" in d.log_text()
    g = create_guest(guest_factory, name=name)
    entry = wait_for(lambda: d.guest(g.name), 30, "the guest in the status")
    assert any(v["check"] == "partition" for v in entry["violations"]), entry["violations"]
    r0 = d.status()["daemon"]["resyncs"]
    wait_for(lambda: d.status()["daemon"]["resyncs"] >= r0 + 3, 30, "three more resyncs")
    policies = {tid: os.sched_getscheduler(tid) for tid in g.vcpu_tids().values()}
    assert set(policies.values()) == {os.SCHED_OTHER}, policies
    assert os.sched_getaffinity(g.vcpu_tids()[1]) == {1}  # still pinned as the XML says
