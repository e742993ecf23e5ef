"""The steady state's cheap check against real threads: it says "unchanged"
exactly while each thread keeps the policy, priority and affinity it was
last observed with, and "changed" once another tool moves one (taskset,
chrt) or a thread exits.  Only SCHED_OTHER/BATCH and CPU 0/1 masks are used:
nothing here is realtime."""

from __future__ import annotations

import os

import pytest

from rtagent.daemon.steady import SteadyCheck, baseline_of
from rtagent.kernel.probe import DriftProbe, Expected
from rtagent.kernel.root import Kernel
from rtagent.model import RealtimeSpec
from rtagent.tuning.guest.observe import observe_process
from rtagent.tuning.guest.plan import ThreadPlan, Want
from rtagent.tuning.guest.report import DomainReport

pytestmark = pytest.mark.threads


def _report(pid: int) -> DomainReport:
    """A report as a reconcile leaves it: every thread planned as observed."""
    observed = observe_process(pid, Kernel())
    spec = RealtimeSpec(domain="steady", uuid="u-steady", realtime=True)
    threads = [ThreadPlan(t, Want(), "emulator") for t in observed.threads]
    return DomainReport(name="steady", uuid="u-steady", spec=spec, pid=pid, observed=observed, threads=threads)


def test_probe_sees_taskset_chrt_and_exit(qemu_like):
    h = qemu_like("--vcpus", "2")
    probe = DriftProbe(Kernel())
    base = baseline_of(_report(h.pid))
    assert base is not None and {e.tid for e in base.threads} == {h.pid} | {tid for _, tid in h.tasks}
    assert probe.unchanged(base.threads)

    tid = h.vcpu_tids[1]
    before = os.sched_getaffinity(tid)
    other = {0} if before != {0} else {1}
    os.sched_setaffinity(tid, other)  # taskset behind the daemon's back
    assert not probe.unchanged(base.threads)
    os.sched_setaffinity(tid, before)
    assert probe.unchanged(base.threads)

    os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))  # chrt -b
    assert not probe.unchanged(base.threads)
    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    assert probe.unchanged(base.threads)

    h.stop()
    assert not probe.unchanged(base.threads)


def test_expected_priority_is_compared_for_realtime_only():
    me = os.getpid()
    cpus = frozenset(os.sched_getaffinity(me))
    probe = DriftProbe(Kernel())
    # SCHED_OTHER: the priority syscall is skipped, 0 is what stat reports anyway.
    assert probe.unchanged([Expected.of(me, "other", 0, cpus)])
    assert not probe.unchanged([Expected.of(me, "fifo", 5, cpus)])
    assert not probe.unchanged([Expected.of(me, "other", 0, cpus - {min(cpus)} or {99})])
    assert not probe.unchanged([Expected.of(me, "unknown-9", 0, cpus)])  # never cheap


def test_steady_check_reconciles_only_guests_that_differ(qemu_like):
    a, b = qemu_like("--vcpus", "1"), qemu_like("--vcpus", "1")
    steady = SteadyCheck()
    steady.record("a", _report(a.pid))
    steady.record("b", _report(b.pid))
    done: list[str] = []
    assert steady.run(["a", "b", "never-recorded"], done.append) == 1
    assert done == ["never-recorded"]  # no baseline: the full path

    tid = b.vcpu_tids[0]
    before = os.sched_getaffinity(tid)
    os.sched_setaffinity(tid, {0} if before != {0} else {1})
    done.clear()
    steady.run(["a", "b"], done.append)
    assert done == ["b"]
    os.sched_setaffinity(tid, before)
    steady.forget("b")
    done.clear()
    steady.run(["a", "b"], done.append)
    assert done == ["b"]
