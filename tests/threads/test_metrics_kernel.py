"""The vCPU metrics say what the kernel says.

A real process is observed, planned and put in the state store the way the
daemon does it; the scraped ``rtagent_vcpu_run_delay_seconds_total`` must
equal field 2 of ``/proc/<pid>/task/<tid>/schedstat`` (ns) / 1e9, read
directly.  Nothing here is made realtime: every thread stays SCHED_OTHER, and
the only CPU load is a short SCHED_OTHER contention on one housekeeping CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import threading
import time
import uuid as uuidlib

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rtagent.config import Partition, RealtimeConfig
from rtagent.kernel import Kernel
from rtagent.model import MemorySpec, RealtimeSpec, VcpuSpec
from rtagent.monitor.metrics import RtagentCollector
from rtagent.state import StateStore
from rtagent.tuning.guest.observe import observe_process
from rtagent.tuning.guest.plan import plan_domain
from rtagent.tuning.guest.report import DomainReport

pytestmark = pytest.mark.threads


def schedstat(pid: int, tid: int) -> tuple[int, int]:
    """(run_time_ns, run_delay_ns) straight from the kernel."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        fields = f.read().split()
    return int(fields[0]), int(fields[1])


def nonvoluntary(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no nonvoluntary_ctxt_switches line")


def partition() -> Partition:
    online = Kernel().cpus.online()
    if len(online) < 2:
        pytest.skip("needs two online CPUs")
    rt = frozenset({max(online)})
    return Partition(online=online, realtime=rt, housekeeping=online - rt)


def spec_for(name: str, uid: str, part: Partition) -> RealtimeSpec:
    """vCPU 0 housekeeping, vCPU 1 realtime (the canonical test guest)."""
    hk, rt = min(part.housekeeping), min(part.realtime)
    return RealtimeSpec(
        domain=name, uuid=uid, realtime=True, source="metadata",
        vcpus=(VcpuSpec(0, False, "other", 0, frozenset({hk})), VcpuSpec(1, True, "fifo", 1, frozenset({rt}))),
        emulator_cpus=frozenset({hk}), memory=MemorySpec(size_bytes=64 << 20),
    )


def put_report(store: StateStore, pid: int, spec: RealtimeSpec, part: Partition) -> DomainReport:
    observed = observe_process(pid, Kernel())
    plan = plan_domain(spec, observed, part, RealtimeConfig())
    report = DomainReport(name=spec.domain, uuid=spec.uuid, spec=spec, pid=pid, observed=observed,
                          threads=plan.threads, violations=[v for tp in plan.threads for v in tp.violations()],
                          observed_at=time.time())

    def write(s: StateStore) -> None:
        s.guest(spec.uuid, spec.domain).report = report
    store.update(write)
    return report


def scrape(store: StateStore) -> dict[tuple[str, tuple], float]:
    reg = CollectorRegistry()
    reg.register(RtagentCollector(store))
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def vcpu_sample(samples, name: str, domain: str, vcpu: int) -> float:
    return samples[(name, (("domain", domain), ("vcpu", str(vcpu))))]


def test_run_delay_of_a_qemu_like_process_matches_schedstat(qemu_like):
    h = qemu_like("--vcpus", "2")
    part = partition()
    spec = spec_for("qemu-like", str(uuidlib.uuid4()), part)
    tid = h.vcpu_tids[1]
    # The helper's threads sleep once started, but a thread just started can
    # still run (and wait on a loaded host) once more: compare only an
    # observation and a scrape between which its schedstat did not move.
    for _ in range(50):
        before = schedstat(h.pid, tid)
        store = StateStore()
        report = put_report(store, h.pid, spec, part)
        samples = scrape(store)
        run_ns, delay_ns = schedstat(h.pid, tid)
        if (run_ns, delay_ns) == before:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"thread {tid}'s schedstat never stood still for one observation")
    assert report.observed.vcpu_threads[1].tid == tid
    assert report.observed.vcpu_threads[1].run_delay_ns == delay_ns
    assert vcpu_sample(samples, "rtagent_vcpu_run_delay_seconds_total", "qemu-like", 1) == delay_ns / 1e9
    assert vcpu_sample(samples, "rtagent_vcpu_cpu_seconds_total", "qemu-like", 1) == run_ns / 1e9
    assert vcpu_sample(samples, "rtagent_vcpu_involuntary_context_switches_total", "qemu-like", 1) == \
        nonvoluntary(h.pid, tid)
    assert samples[("rtagent_vcpu_policy_info", (("domain", "qemu-like"), ("policy", "other"), ("vcpu", "1")))] == 1
    # not tuned (nothing applied): non-compliant, and vCPU 0 (housekeeping) has no series
    assert samples[("rtagent_domain_compliant", (("domain", "qemu-like"),))] == 0
    assert vcpu_sample(samples, "rtagent_vcpu_tuned", "qemu-like", 1) == 0
    assert not any(k[0].startswith("rtagent_vcpu_") and ("vcpu", "0") in k[1] for k in samples)
    # no thread id shows up in any label
    tids = {str(t) for t in h.all_tids}
    assert not any(v in tids for _, labels in samples for _, v in labels)

    # the guest goes away: so do its series
    store.drop(spec.uuid)
    assert not any(("domain", "qemu-like") in labels for _, labels in scrape(store))


PR_SET_NAME = 15


def _name_self(name: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def test_run_delay_counter_moves_with_cpu_contention():
    """A thread of this process named like vCPU 1 competes (SCHED_OTHER) with a
    short-lived busy child on one housekeeping CPU for ~0.4 s; the exported
    counter moves exactly as schedstat does."""
    part = partition()
    cpu = min(part.housekeeping)
    spec = spec_for("contended", str(uuidlib.uuid4()), part)
    go, done, stop = threading.Event(), threading.Event(), threading.Event()
    info: dict[str, int] = {}

    def vcpu_body() -> None:
        _name_self("CPU 1/KVM")
        info["tid"] = threading.get_native_id()
        os.sched_setaffinity(0, {cpu})
        go.wait(10)
        end = time.monotonic() + 0.4
        n = 0
        while time.monotonic() < end:  # ordinary SCHED_OTHER work, for 0.4 s
            n += 1
        done.set()
        stop.wait(30)

    t = threading.Thread(target=vcpu_body, daemon=True)
    t.start()
    load = None
    try:
        while "tid" not in info:
            time.sleep(0.01)
        pid, tid = os.getpid(), info["tid"]
        store = StateStore()
        put_report(store, pid, spec, part)
        before = vcpu_sample(scrape(store), "rtagent_vcpu_run_delay_seconds_total", "contended", 1)

        # A competitor on the same CPU, SCHED_OTHER, ends by itself after 0.6 s.
        load = subprocess.Popen([sys.executable, "-c",
                                 "import os, time\n"
                                 f"os.sched_setaffinity(0, {{{cpu}}})\n"
                                 "end = time.monotonic() + 0.6\n"
                                 "while time.monotonic() < end: pass\n"])
        time.sleep(0.05)
        go.set()
        assert done.wait(10)
        load.wait(10)

        put_report(store, pid, spec, part)
        samples = scrape(store)
        _, delay_ns = schedstat(pid, tid)  # the thread sleeps now: stable
        after = vcpu_sample(samples, "rtagent_vcpu_run_delay_seconds_total", "contended", 1)
        assert after == delay_ns / 1e9
        assert after > before, "run-queue delay did not move under contention"
    finally:
        stop.set()
        if load is not None and load.poll() is None:
            load.kill()  # our own child, by PID
            load.wait()
        t.join(5)
