"""Interference accounting on the real kernel: known noise injected on CPU 1
(the realtime CPU of every test) is found with the right kind and source.

Each test uses its own tracefs instance and removes it; every process it
starts is stopped by PID, and an IRQ it moves is moved back.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtagent.kernel import tracefs
from rtagent.monitor.interference import Kind
from rtagent.monitor.interference_sampler import InterferenceSampler
from tests.conftest import unique_name

pytestmark = pytest.mark.threads

RT_CPU, HK_CPU = 1, 0
ROOT = Path(tracefs.find_tracefs()) if tracefs.find_tracefs() else None
needs_tracefs = pytest.mark.skipif(ROOT is None or os.geteuid() != 0,
                                   reason="needs root and tracefs (scripts/setup-host.sh mounts it)")
@pytest.fixture
def sampler_factory():
    made: list[InterferenceSampler] = []

    def make(**kw) -> InterferenceSampler:
        s = InterferenceSampler([RT_CPU], instance=unique_name("itf"), housekeeping=[HK_CPU],
                                poll_interval_s=0.2, **kw)
        s.start()   # its own reader thread, as in the daemon
        made.append(s)
        return s

    yield make
    for s in made:
        name = s.instance_name
        s.stop()
        assert not (ROOT / "instances" / name).exists()


def comm_name(prefix: str) -> str:
    """A unique comm without digits (digits are folded in sources)."""
    tag = "".join(chr(ord("a") + int(d)) for d in unique_name("")[1:] if d.isdigit())
    return f"{prefix}{tag}"[:15]


def busy(name: str, seconds: float) -> subprocess.Popen:
    """The helper starts on the housekeeping CPU (taskset) and only moves to
    CPU 1 once it has its name: the interpreter's start-up, which the
    helper's own yardstick leaves out, never runs on CPU 1."""
    return subprocess.Popen(["taskset", "-c", str(HK_CPU), sys.executable, "-m", "tests.helpers.busy_noise", name,
                             str(RT_CPU), str(seconds)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])


def finish(proc: subprocess.Popen) -> int:
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    return int(out.strip())


def steal_ns(cpu: int) -> int:
    """Time the hypervisor took from ``cpu`` (this test machine is a VM): the
    trace clock runs on through it, the task's own run time does not."""
    for line in Path("/proc/stat").read_text().splitlines():
        f = line.split()
        if f[0] == f"cpu{cpu}":
            return int(f[8]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return 0


def report(what: str, accounted: float, reference: float) -> None:
    """One line per measurement (pytest -s, or the CI log of a failure)."""
    print(f"interference {what}: accounted {accounted:.0f} of {reference:.0f}"
          f" ({accounted / reference if reference else 0:.3f}) load {os.getloadavg()[0]:.1f}")


def skip_if_lost(s: InterferenceSampler) -> None:
    """Events the kernel dropped (the buffer overran: another heavy load on
    CPU 1, or the reader starved on a loaded CPU 0) make the accounting
    incomplete by design — it says so (lost_events) — so no ±10 % can hold."""
    with s._lock:
        lost = s._acc[RT_CPU].lost
    if lost:
        pytest.skip(f"the trace buffer overran ({lost} events lost): another heavy load on CPU {RT_CPU}")


def settle(s: InterferenceSampler) -> None:
    """Long enough for the reader thread to read what is in the buffers."""
    time.sleep(4 * s._poll + 0.3)


def total(s: InterferenceSampler, kind: Kind, source: str) -> tuple[int, int]:
    with s._lock:
        t = s._acc[RT_CPU].totals.get((kind, source))
        return (t.ns, t.count) if t else (0, 0)


@needs_tracefs
def test_busy_task_is_attributed_within_ten_percent(sampler_factory):
    s = sampler_factory()
    name = comm_name("noise")
    steal0 = steal_ns(RT_CPU)
    injected_ns = finish(busy(name, 0.5))
    stolen = steal_ns(RT_CPU) - steal0
    settle(s)
    ns, count = total(s, Kind.TASK, name)
    report("busy task ns", ns, injected_ns)
    skip_if_lost(s)
    assert count >= 1
    assert abs(ns - injected_ns) <= 0.10 * injected_ns + stolen, (ns, injected_ns, stolen)
    view = s.snapshot().cpus[0].window
    assert any(c.source == name and c.kind is Kind.TASK for c in view.culprits) or view.culprits[0].seconds >= ns / 1e9


@needs_tracefs
def test_preempted_owner_is_charged_with_the_noise(sampler_factory):
    """The "owner" here is a SCHED_OTHER busy process (never FIFO on CPU 1):
    while the noise process runs, the owner is runnable and waiting."""
    owner = busy(comm_name("owner"), 1.5)
    time.sleep(0.3)
    labels = {RT_CPU: {owner.pid: ("itf-guest", 1)}}
    s = sampler_factory(owners=lambda: labels)
    noise_name = comm_name("noise")
    steal0 = steal_ns(RT_CPU)
    injected_ns = finish(busy(noise_name, 0.4))
    stolen = steal_ns(RT_CPU) - steal0
    finish(owner)
    settle(s)
    ns, _ = total(s, Kind.TASK, noise_name)
    report("noise beside an owner ns", ns, injected_ns)
    skip_if_lost(s)
    assert abs(ns - injected_ns) <= 0.10 * injected_ns + stolen, (ns, injected_ns, stolen)
    cpu = s.snapshot().cpus[0]
    preempted = cpu.preempted[("itf-guest", 1)]
    # Everything the noise ran while the owner waited, and nothing is charged
    # to the owner itself.
    assert preempted[Kind.TASK] >= 0.9 * ns
    assert all(src != "owner" for (_k, src) in s._acc[RT_CPU].totals)


def _kworker_runtime(cpu: int) -> dict[int, tuple[int, int]]:
    """``{pid: (run time ns, runs)}`` of the CPU's bound kworkers (schedstat
    fields 1 and 3: every switch-in is one run)."""
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            if Path(d, "comm").read_text().startswith(f"kworker/{cpu}:"):
                f = Path(d, "schedstat").read_text().split()
                out[int(d[6:])] = (int(f[0]), int(f[2]))
        except (OSError, ValueError, IndexError):
            continue
    return out


@needs_tracefs
def test_kernel_thread_made_to_run_there(sampler_factory):
    """``vm.stat_refresh`` queues one work item on every CPU's kworker.

    The kernel's schedstat is no exact yardstick for these µs-long runs (it
    charges from the run-queue clock's last update, often the remote wakeup,
    and, without ``IRQ_TIME_ACCOUNTING``, the IRQs the trace charges apart;
    its sum has been measured from 0.9× to 2× the trace's), so the count is
    held to ±10 % of schedstat's count of the kworkers' runs over the same
    window (which includes other kworker work on this shared CPU), and must
    show the injection (half the work items at least: a kworker can take
    several in one run); the time must be positive and within half again
    of schedstat's (plus what the hypervisor stole: the trace clock runs on
    through it).  The two bound each run at different points of the switch
    path — the kernel at its run-queue clock update, the trace at the
    tracepoint after the next task is picked — so on a slow machine, where
    a run is 30 µs, the trace's sum came out 1.11× schedstat's (0.80–0.93×
    on a faster one): a ratio, since the switch path slows with the run.  A
    switch-out the accountant missed would charge the CPU's idle time
    between the 1 000 reads, many times the runs themselves."""
    s = sampler_factory()
    settle(s)
    before_ns, before_n = total(s, Kind.KTHREAD, "kworker")
    kw_before = _kworker_runtime(RT_CPU)
    steal0 = steal_ns(RT_CPU)
    os.sched_setaffinity(0, {HK_CPU})
    try:
        injected = 1000   # dominant over background kworker runs at the window edges
        for _ in range(injected):
            Path("/proc/sys/vm/stat_refresh").read_text()
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    settle(s)
    # Both windows end now (the trace's lags the kernel's by one poll at most).
    kw_after = _kworker_runtime(RT_CPU)
    stolen = steal_ns(RT_CPU) - steal0
    ns, n = total(s, Kind.KTHREAD, "kworker")
    ns, n = ns - before_ns, n - before_n
    skip_if_lost(s)
    schedstat = sum(v[0] - kw_before.get(pid, (0, 0))[0] for pid, v in kw_after.items())
    runs = sum(v[1] - kw_before.get(pid, (0, 0))[1] for pid, v in kw_after.items())
    report("kworker runs", n, runs)
    report("kworker ns", ns, schedstat)
    # The kernel's own count of the kworkers' runs (which includes other
    # kworker work on this shared CPU) is the exact yardstick for the
    # count; a kworker may take several queued items in one run (seen: 862
    # runs for 1 000 items), so the injection only has to show.
    assert n >= injected * 0.5, (n, injected)
    # + one poll interval of background kworker runs at the window edges
    # (the trace's window ends up to one poll before the kernel's count).
    assert abs(n - runs) <= 0.10 * runs + 10, (n, runs)
    # The trace clock runs on while the hypervisor steals the CPU.
    assert 0 < ns <= schedstat * 1.5 + stolen, (ns, schedstat, stolen)


def _irq_on_cpu(irq: int, cpu: int) -> int:
    for line in Path("/proc/interrupts").read_text().splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == f"{irq}:":
            return int(parts[1 + cpu])
    raise LookupError(irq)


def _nic_rx_irq() -> tuple[int, str, str] | None:
    """The RX IRQ of the default route's virtio NIC: (irq, action, interface)."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            dev = f[0]
            break
    else:
        return None
    try:
        virtio = Path(f"/sys/class/net/{dev}/device").resolve().name
    except OSError:
        return None
    for line in Path("/proc/interrupts").read_text().splitlines()[1:]:
        parts = line.split()
        if parts and parts[0].rstrip(":").isdigit() and parts[-1] == f"{virtio}-input.0":
            return int(parts[0].rstrip(":")), parts[-1], dev
    return None


_QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"


def _resolver() -> str | None:
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            f = line.split()
            if len(f) >= 2 and f[0] == "nameserver" and ":" not in f[1]:
                return f[1]
    except OSError:
        pass
    return None


def _answered(server: str) -> bool:
    """One DNS query; its answer arrives as one RX interrupt."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sk:
        sk.settimeout(0.5)
        try:
            sk.sendto(_QUERY, (server, 53))
            sk.recv(512)
        except OSError:
            return False
    return True


def _provoke_rx(server: str, n: int) -> None:
    deadline = time.monotonic() + 30
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        _answered(server)


@needs_tracefs
def test_irq_moved_there_and_triggered(sampler_factory):
    found = _nic_rx_irq()
    if found is None:
        pytest.skip("no virtio NIC RX IRQ behind the default route on this machine")
    irq, action, _dev = found
    server = _resolver()
    if server is None or not _answered(server):
        pytest.skip("no DNS resolver answers here (its replies are the RX interrupts)")
    aff = Path(f"/proc/irq/{irq}/smp_affinity_list")
    saved = aff.read_text().strip()
    s = sampler_factory()
    try:
        aff.write_text(str(RT_CPU))
        settle(s)
        before_ns, before_n = total(s, Kind.IRQ, action)
        seen_before = _irq_on_cpu(irq, RT_CPU)
        os.sched_setaffinity(0, {HK_CPU})
        try:
            _provoke_rx(server, 300)
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        seen = _irq_on_cpu(irq, RT_CPU) - seen_before
    finally:
        aff.write_text(saved)
    settle(s)
    ns, n = total(s, Kind.IRQ, action)
    ns, n = ns - before_ns, n - before_n
    report("irq count", n, seen)
    skip_if_lost(s)
    if seen < 100:
        pytest.skip(f"IRQ {irq} fired only {seen} times on CPU {RT_CPU} (another test moved it?)")
    # The kernel's own per-CPU count of the IRQ is the yardstick; there is no
    # independent clock of a handler's duration, so time is held to "some,
    # and µs per handler".
    assert abs(n - seen) <= 0.10 * seen, (n, seen)
    assert 0 < ns < n * 1_000_000
    assert aff.read_text().strip() == saved


@needs_tracefs
def test_a_burst_wakes_the_reader_before_the_buffer_overruns():
    """A reader on a 5 s timer with a 256 KiB buffer: a context-switch storm
    on CPU 1 fills half the buffer in a fraction of a second, and the kernel
    wakes the reader out of poll() (buffer_percent) long before its timer."""
    if shutil.which("stress-ng") is None:
        pytest.skip("stress-ng is not installed (scripts/setup-host.sh installs it)")
    s = InterferenceSampler([RT_CPU], instance=unique_name("itf"), housekeeping=[HK_CPU],
                            poll_interval_s=5.0, buffer_kb=256)
    reads: list[float] = []
    poll = s.poll

    def counted() -> None:
        reads.append(time.monotonic())
        poll()

    s.poll = counted          # the reader thread calls self.poll()
    s.start()
    try:
        t0 = time.monotonic()
        subprocess.run(["stress-ng", "--switch", "1", "--taskset", str(RT_CPU), "-t", "3s", "--switch-freq", "5000",
                        "--quiet"], check=True, timeout=60)
        with s._lock:
            lost = s._acc[RT_CPU].lost
            switches = sum(t.count for (k, _src), t in s._acc[RT_CPU].totals.items() if k is Kind.TASK)
    finally:
        s.stop()
    early = [t for t in reads if t - t0 < 4.5]
    print(f"interference burst: {len(early)} reads before the 5 s timer, {switches} task switch-ins, {lost} lost")
    assert early, "the reader was not woken before its timer"
    assert switches > 2000 and lost == 0, (switches, lost)
    assert not (ROOT / "instances" / s.instance_name).exists()


@needs_tracefs
def test_leftover_instance_is_replaced_and_removed(sampler_factory):
    name = unique_name("itf")
    (ROOT / "instances" / name).mkdir()                   # what a SIGKILLed daemon leaves
    try:
        s = InterferenceSampler([RT_CPU], instance=name, housekeeping=[HK_CPU])
        s.open()
        assert (ROOT / "instances" / name / "events/sched/sched_switch/enable").read_text().strip() == "1"
        assert (ROOT / "instances" / name / "tracing_cpumask").read_text().strip().endswith("2")
        # only the traced CPU gets a buffer of size
        per_cpu = ROOT / "instances" / name / "per_cpu"
        assert int((per_cpu / f"cpu{RT_CPU}" / "buffer_size_kb").read_text()) >= 1024
        assert int((per_cpu / f"cpu{HK_CPU}" / "buffer_size_kb").read_text()) < 64
        s.stop()
        assert not (ROOT / "instances" / name).exists()
    finally:
        tracefs.remove_instance(ROOT, name)


@needs_tracefs
def test_a_scrape_while_stop_removes_the_instance_still_answers():
    """stop() removes the instance before it forgets it: a scrape in that
    moment (seen in CI: a Prometheus scrape during the daemon's shutdown)
    must answer from what was accounted, not read the removed instance."""
    name = unique_name("itf")
    s = InterferenceSampler([RT_CPU], instance=name, housekeeping=[HK_CPU])
    try:
        s.open()
        clock = s.snapshot().clock
        assert clock
        s._inst.remove()                                  # the instance is gone, the sampler not told yet
        assert not (ROOT / "instances" / name).exists()
        snap = s.snapshot()
        assert snap.clock == clock and [c.cpu for c in snap.cpus] == [RT_CPU]
        s.stop()
    finally:
        tracefs.remove_instance(ROOT, name)
