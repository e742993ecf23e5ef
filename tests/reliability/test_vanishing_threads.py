"""Threads that vanish while they are being tuned (threads tier).

``tests/helpers/thread_churn.py`` keeps spawning threads named like a
guest's (``CPU 1/KVM``, ``worker``) that live a few milliseconds.  The real
engine (:class:`Tuner`: observe → plan → execute) is driven against it in a
loop: a thread that exits between being listed and being changed must be
reported as ``vanished`` (ESRCH/ENOENT is normal, docs/design.md), never as a
failure, and nothing may raise or log an error.  The churn threads only
sleep, so the ones made SCHED_FIFO on CPU 1 cost nothing.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rtagent.config import parse_config
from rtagent.intent import derive_spec
from rtagent.tuning.guest.apply import execute
from rtagent.tuning.guest.engine import DomainReport, Tuner
from rtagent.tuning.guest.observe import ProcessGone
from rtagent.tuning.guest.plan import SetAffinity, SetScheduler
from tests.guests import rt_guest_xml
from tests.reliability.conftest import report, scale, task_ids

pytestmark = [pytest.mark.threads, pytest.mark.reliability]

CHURN = str(Path(__file__).resolve().parent.parent / "helpers" / "thread_churn.py")


@pytest.fixture
def churn():
    procs = []

    def start(*args: str) -> tuple[subprocess.Popen, int]:
        p = subprocess.Popen([sys.executable, CHURN, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        return p, json.loads(p.stdout.readline())["pid"]

    yield start
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()  # our own helper, by PID
                p.wait()


def test_tuner_against_threads_that_exit_mid_apply(churn, caplog):
    caplog.set_level(logging.DEBUG, logger="rtagent")
    config = parse_config({"host": {"realtime_cpus": "1"}, "metrics": {"enabled": False}})
    spec = derive_spec(rt_guest_xml("rtrel-churn"), config)
    assert spec.valid, spec.errors
    tuner = Tuner(config)
    proc, pid = churn("--names", "CPU 1/KVM,worker,CPU 1/KVM", "--width", "16", "--life-ms", "2",
                      "--seconds", "120")
    seconds = scale(30, 6)
    outcomes: Counter = Counter()
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rep = DomainReport(name="rtrel-churn", uuid="00000000-0000-0000-0000-00000000c0de", spec=spec)
        try:
            rep = tuner.inspect_process(rep, pid)
        except ProcessGone:  # pragma: no cover - the helper outlives the loop
            pytest.fail("churn helper exited early")
        after = tuner.apply(None, report=rep)
        outcomes.update(r.outcome for r in after.changes)
        rounds += 1
    proc.stdin.close()
    spawned = json.loads(proc.stdout.readline())["spawned"]
    proc.wait(timeout=10)
    assert rounds > 10
    assert outcomes["failed"] == 0, [r for r in caplog.records if "failed" in r.getMessage()]
    assert outcomes["changed"] > 0
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
    report("threads vanishing mid-apply", seconds=seconds, rounds=rounds, threads_spawned=spawned,
           outcomes=dict(outcomes))


def test_execute_on_gone_threads_reports_vanished(churn):
    proc, pid = churn("--names", "worker", "--width", "4", "--life-ms", "1", "--seconds", "30")
    # Collect tids, wait until they are gone, then act on them.
    tids = set()
    t0 = time.monotonic()
    while len(tids) < 50 and time.monotonic() - t0 < 10:
        tids |= set(task_ids(pid)) - {pid}
    time.sleep(0.2)
    gone = [t for t in tids if not Path(f"/proc/{pid}/task/{t}").exists()]
    assert gone
    actions = []
    for tid in gone[:20]:
        actions += [SetAffinity(tid=tid, cpus=frozenset({1}), name="worker", join_cgroups_of=pid),
                    SetScheduler(tid=tid, policy="fifo", priority=1, name="worker", require_cpus=frozenset({1}))]
    results = execute(actions)
    assert {r.outcome for r in results} == {"vanished"}, [r.to_json() for r in results if r.outcome != "vanished"]
