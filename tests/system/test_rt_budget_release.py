"""The RT budget of a realtime guest comes back when the guest goes: from its
own groups and from libvirt's ``/machine`` above them (which kept the whole
budget for nobody after the last guest, until the ledger trimmed it), also
when the guest was destroyed while no daemon ran (the next daemon with the
same realtime record trims it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rtagent.daemon.record import record_path
from rtagent.kernel import Kernel
from tests.system.conftest import wait_for

pytestmark = pytest.mark.system

HUGE = "<memoryBacking><hugepages/></memoryBacking>"
MACHINE = "/machine"


def _tree():
    tree = Kernel().cgroups.rt_tree()
    if tree is None or not tree.exists(MACHINE):
        pytest.skip("needs RT group scheduling and libvirt's /machine group")
    return tree


def _slack(tree) -> int:
    """What /machine holds beyond its children: budget held for nobody."""
    return tree.runtime(MACHINE) - tree.children_hold(MACHINE)


def _realtime(g) -> bool:
    return os.sched_getscheduler(g.vcpu_tids()[1]) == os.SCHED_FIFO


def test_a_destroyed_guest_leaves_no_budget_on_machine(daemon_factory, guest_factory):
    tree = _tree()
    d = daemon_factory()
    g = guest_factory(memory_backing=HUGE)
    wait_for(lambda: _realtime(g), 20, "realtime vCPU")
    held = tree.runtime(MACHINE)
    assert held > 0
    g.dom.destroy()
    wait_for(lambda: d.guest(g.name) is None, 10, "status entry gone")
    # Other runs' guests may hold budget below /machine; ours is not there any more.
    wait_for(lambda: _slack(tree) == 0, 15, "/machine trimmed")
    assert "Traceback" not in d.log_text()


def test_the_next_daemon_trims_what_a_stopped_one_left(daemon_factory, guest_factory):
    tree = _tree()
    d = daemon_factory()
    g = guest_factory(memory_backing=HUGE)
    wait_for(lambda: _realtime(g), 20, "realtime vCPU")
    # In the realtime record already: both the start window and the reconcile
    # note the guest before its first FIFO write (a daemon stopped right
    # after the start window's, before the STARTED reconcile, once left
    # nothing to inherit; tests/system/test_start_window_record.py).
    record = Path(record_path(str(d.config.parent / (Path(d.socket).name + ".lock"))))
    assert record.exists() and g.uuid in record.read_text()
    d.stop()  # a stopping daemon leaves its tuning (and the budget) in place
    g.dom.destroy()
    wait_for(lambda: _slack(tree) > 0, 5, "the destroyed guest's budget left on /machine")
    d2 = daemon_factory(reuse=d)  # same lock file: the same realtime record
    wait_for(lambda: _slack(tree) == 0, 15, "/machine trimmed by the next daemon")
    assert "trimmed" in d2.log_text()
