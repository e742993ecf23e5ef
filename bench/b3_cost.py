"""B3 — rtagent's own cost as the host grows.

* The real daemon (``rtagent run`` in its own process, resync every 1 s)
  with 1, 10, 50, 100 real diskless guests (64 MiB, the canonical test guest:
  2 vCPUs, vCPU 1 realtime), started paused by default (see
  :func:`run_daemon_cost`).  Guests are added cumulatively; after each step
  the guests' firmware boot is allowed to settle, then the daemon's CPU time
  (schedstat, ns) and resync count are sampled over a few windows:
  CPU per resync (main thread, the one that resyncs, plus its libvirt-call
  worker thread), per managed thread,
  the whole process's CPU % of a core, and RSS.
* Where the time goes: the same resync driven in-process under cProfile, and
  the real daemon sampled with py-spy (if installed).
* ``/metrics``: ``generate_latest`` over a :class:`RtagentCollector` on a
  *synthetic* state store (hand-built guests) with 10, 100 and 1,000 vCPU
  series.

Goals (issue 9): ≤ 5 µs CPU per managed thread per resync; 100 guests ≤ 0.5 %
of a core at a 1 s resync; RSS ≤ 40 MiB; scrape ≤ 20 ms at 1,000 series.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

from . import tuned_side
from .common import (
    REPO,
    Guests,
    format_table,
    median,
    on_housekeeping,
    process_cpu_ns,
    process_stat_cpu_s,
    qemu_pid,
    rss_bytes,
    schedstat,
    start_daemon,
    thread_names,
    summary,
    wait_for,
)

RESYNC_S = 1.0
FULL_CHECK_S = 30.0  # the default [daemon] full_check_interval_s
RUNNING_SIZES = [1, 10, 30]  # running guests that fit beside the daemon here (CPU 0 is shared)
B3_BUDGET_US = 1000  # per realtime vCPU; 100 guests take 10 % of the root RT budget, leaving the rest to others
GOAL_US_PER_THREAD = 5.0
GOAL_CPU_PCT_100 = 0.5
GOAL_RSS_MIB = 40.0
GOAL_SCRAPE_MS_1000 = 20.0


def _prefix() -> str:
    return f"rtbench-b3-{os.getpid()}-"


def _cpu0_busy() -> tuple[int, int]:
    """(busy, total) jiffies of CPU 0 from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu0 "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v) - idle, sum(v)
    return 0, 0


def _qemu_cpu_ns(names: list[str]) -> int:
    total = 0
    for n in names:
        pid = qemu_pid(n)
        if pid:
            total += process_cpu_ns(pid)
    return total


def _settle(names: list[str], timeout: float) -> float:
    """Wait until the guests' firmware boot is over (their QEMUs together use
    little CPU); returns the QEMUs' CPU use in cores at the end."""
    deadline = time.monotonic() + timeout
    rate = prev = float("inf")
    while time.monotonic() < deadline:
        a, t0 = _qemu_cpu_ns(names), time.monotonic()
        time.sleep(2.0)
        prev, rate = rate, (_qemu_cpu_ns(names) - a) / 1e9 / (time.monotonic() - t0)
        # Idle firmware costs ~1 % of a core per guest here; or it stopped falling.
        if rate < 0.015 * len(names) + 0.05 or rate > 0.9 * prev:
            break
    return rate


def _resync_cpu_ns(pid: int) -> int:
    """CPU of the threads a resync runs on: the main thread, and the worker
    that makes the daemon's libvirt calls (named by the daemon)."""
    from rtagent.libvirt_host import WORKER_THREAD_NAME

    tids = [pid] + [t for t, n in thread_names(pid).items() if n == WORKER_THREAD_NAME]
    return sum((schedstat(pid, t) or (0, 0, 0))[0] for t in tids)


def _window(daemon, seconds: float) -> dict:
    """One measurement window.  The status socket is asked just outside the
    CPU window (its JSON costs the daemon CPU on another thread)."""
    failed0 = daemon.log_text().count(": failed: ")
    st0, ts0 = daemon.status()["daemon"]["resyncs"], time.monotonic()
    time.sleep(0.1)
    main0, proc0, stat0, cpu0 = _resync_cpu_ns(daemon.pid), process_cpu_ns(daemon.pid), \
        process_stat_cpu_s(daemon.pid), _cpu0_busy()
    t0 = time.monotonic()
    time.sleep(seconds)
    main1, proc1, stat1, cpu1 = _resync_cpu_ns(daemon.pid), process_cpu_ns(daemon.pid), \
        process_stat_cpu_s(daemon.pid), _cpu0_busy()
    t1 = time.monotonic()
    time.sleep(0.1)
    st1, ts1 = daemon.status()["daemon"]["resyncs"], time.monotonic()
    wall = t1 - t0
    resyncs = (st1 - st0) * wall / (ts1 - ts0)
    return {"wall_s": wall, "resyncs": resyncs,
            # Changes the kernel refused (e.g. FIFO without RT budget): each
            # costs an apply and a re-observe on every resync, not steady state.
            "failed_changes": daemon.log_text().count(": failed: ") - failed0,
            "main_cpu_s": (main1 - main0) / 1e9, "proc_cpu_s": (proc1 - proc0) / 1e9,
            "stat_cpu_s": stat1 - stat0,
            "cpu0_busy_pct": 100.0 * (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])}


def _tuned_row(prefix: str, window_s: float, windows: int, workdir: Path) -> dict:
    """tuned's daemon on the same guests, right after rtagent's windows:
    started, settled, sampled like rtagent, stopped by PID, rollback checked."""
    why = tuned_side.available()
    if why:
        return {"error": why}
    td = tuned_side.TunedDaemon(prefix, "1", workdir)
    try:
        pid = td.start()
        cpu = [tuned_side.cpu_window(pid, window_s) for _ in range(windows)]
        row = {"cpu_pct": median(cpu), "cpu_pct_all": cpu, "rss_mib": tuned_side.rss_mib(pid)}
    except Exception as err:  # noqa: BLE001 - keep rtagent's rows; say what broke
        row = {"error": f"{type(err).__name__}: {err}", "log_tail": td.log_tail()}
    row["not_rolled_back"] = td.stop()
    row["put_back_failed"] = td.put_back_failed
    return row


def _idle_rows(daemon, window_s: float, windows: int, workdir: Path, with_tuned: bool) -> dict:
    """Both daemons with no guest of ours (the idle goal)."""
    cpu = [100 * _window(daemon, window_s)["proc_cpu_s"] / window_s for _ in range(windows)]
    out = {"rtagent_cpu_pct": median(cpu), "rtagent_rss_mib": rss_bytes(daemon.pid) / 2**20}
    if with_tuned:
        out["tuned"] = _tuned_row(_prefix(), window_s, windows, workdir)
    return out


def run_daemon_cost(sizes: list[int], window_s: float, windows: int, profile: bool = True,
                    paused: bool = True, budget_wait_s: float = 60.0, with_tuned: bool = True) -> dict:
    """``paused``: start the guests paused (``VIR_DOMAIN_START_PAUSED``; QEMU,
    its vCPU threads and kvm-pit exist, the vCPUs never run).  Under PVM an
    idle guest in its firmware costs ≈ 1 % of CPU 0, where every guest's
    vCPU 0 and emulator threads live, so 100 running guests saturate CPU 0
    and starve the daemon itself (measured: guest starts slowed to ~30 s each
    and libvirtd dropped our connection near 100).  The daemon's work per
    guest is the same for a paused guest: same threads, same /proc files,
    same libvirt calls."""
    import libvirt

    prefix = _prefix()
    flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
    guests = Guests()
    daemon = None
    rows: list[dict] = []
    prof: dict = {}
    stalls: list[dict] = []
    errors: list[dict] = []
    try:
        # Each realtime vCPU needs B3_BUDGET_US of the host's RT budget, which
        # concurrent runs (B1's daemon uses "auto": all of it) may hold.  A
        # refused FIFO is retried every resync — the failure path, not the
        # steady state — so wait (bounded) for room.
        need = max(sizes) * B3_BUDGET_US + 10_000
        free = wait_for(lambda: (f := _rt_budget_free()) is not None and f >= need and f, budget_wait_s, 5.0)
        if not free:
            print(f"  B3: only {_rt_budget_free()} µs RT budget free (need {need}); measuring anyway", flush=True)
        daemon = start_daemon(prefix, resync=RESYNC_S, rt_budget_us=B3_BUDGET_US)
        rss_idle = rss_bytes(daemon.pid)
        idle = _idle_rows(daemon, window_s, windows, daemon.dir, with_tuned)
        for size in sizes:
          try:
            t_start = time.monotonic()
            while len(guests.started) < size:
                guests.start(f"{prefix}{len(guests.started)}", flags=flags)
            names = list(guests.started)

            def tuned() -> bool:
                # Every guest wants CPU 1, which one realtime vCPU owns
                # host-wide: the others are settled once they report the
                # cpu_conflict (not made realtime).
                doms = [d for d in daemon.status()["domains"] if d.get("tuned_at")  # noqa: B023
                        or any(v["check"] == "cpu_conflict" for v in d.get("violations", []))]
                return len(doms) >= size  # noqa: B023

            ok = wait_for(tuned, 60 + 3 * size, 1.0)
            started_s = time.monotonic() - t_start
            qemu_cores = _settle(names, 60 + 2 * size)
            for _attempt in range(3):
                # A daemon that stopped resyncing (seen here after a concurrent
                # test restarted libvirtd) is recorded with its stack, then replaced.
                stall = _stalled(daemon)
                if stall is None:
                    break
                stall.update(guests=size, log_tail=daemon.log_text()[-1500:])
                stalls.append(stall)
                print(f"  B3: daemon {daemon.pid} stopped resyncing at {size} guests; restarting it", flush=True)
                daemon.stop()
                daemon = start_daemon(prefix, resync=RESYNC_S, rt_budget_us=B3_BUDGET_US)
                ok = wait_for(tuned, 60 + 3 * size, 1.0)
            samples = [_window(daemon, window_s) for _ in range(windows)]
            st = daemon.status()
            doms = st["domains"]
            threads = sum(len(d.get("threads", [])) for d in doms)
            per_resync = [s["main_cpu_s"] / s["resyncs"] for s in samples if s["resyncs"] > 0]
            row = {
                "guests": size, "tuned": bool(ok), "managed_threads": threads,
                "compliant": sum(1 for d in doms if d.get("compliant")),
                "violations": sorted({v["check"] for d in doms for v in d.get("violations", [])}),
                "start_and_tune_s": started_s, "qemu_cores_settled": qemu_cores,
                "windows": samples,
                "resync_cpu_ms": 1000 * median(per_resync) if per_resync else float("nan"),
                "resync_cpu_ms_all": [1000 * x for x in per_resync],
                "us_per_thread": 1e6 * median(per_resync) / threads if per_resync and threads else float("nan"),
                "cpu_pct": 100 * median([s["proc_cpu_s"] / s["wall_s"] for s in samples]),
                "cpu_pct_stat": 100 * median([s["stat_cpu_s"] / s["wall_s"] for s in samples]),
                "main_cpu_pct": 100 * median([s["main_cpu_s"] / s["wall_s"] for s in samples]),
                "resyncs_per_s": median([s["resyncs"] / s["wall_s"] for s in samples]),
                "cpu0_busy_pct": median([s["cpu0_busy_pct"] for s in samples]),
                "rss_mib": rss_bytes(daemon.pid) / 2**20,
                "libvirt_reconnects": st["daemon"]["libvirt"]["reconnects"],
                "failed_changes": sum(s["failed_changes"] for s in samples),
                "rt_budget_free_us": _rt_budget_free(),
            }
            if with_tuned:
                row["tuned"] = _tuned_row(prefix, window_s, windows, daemon.dir)
            rows.append(row)
            print(f"  B3: {size} guests: {row['resync_cpu_ms']:.2f} ms CPU/resync, "
                  f"{row['us_per_thread']:.1f} µs/thread, {row['cpu_pct']:.2f} % CPU, "
                  f"{row['rss_mib']:.1f} MiB RSS", flush=True)
          except Exception as err:  # noqa: BLE001 - keep what was measured; say what broke
            errors.append({"guests": size, "error": f"{type(err).__name__}: {err}"})
            print(f"  B3: {size} guests failed: {type(err).__name__}: {err}", flush=True)
            break
        if profile and rows:
            try:
                prof["py_spy"] = _py_spy(daemon.pid, 20.0)
                daemon.stop()
                prof["cprofile"] = _cprofile(prefix, daemon.dir / "rtagent.toml", resyncs=20)
            except Exception as err:  # noqa: BLE001
                prof["error"] = f"{type(err).__name__}: {err}"
        return {"rows": rows, "rss_idle_mib": rss_idle / 2**20, "idle": idle, "resync_s": RESYNC_S, "window_s": window_s,
                "windows": windows, "profile": prof, "stalls": stalls, "errors": errors,
                "guests_paused": paused}
    finally:
        if daemon is not None:
            daemon.stop()
        guests.close()


def _rt_budget_free() -> int | None:
    """µs of the cpu controller's ``machine`` group's RT budget not given to a child."""
    base = Path("/sys/fs/cgroup/cpu/machine")
    try:
        total = int((base / "cpu.rt_runtime_us").read_text())
        used = sum(int((d / "cpu.rt_runtime_us").read_text()) for d in base.iterdir()
                   if d.is_dir() and (d / "cpu.rt_runtime_us").exists())
    except (OSError, ValueError):
        return None
    return total - used


def _stalled(daemon, wait_s: float = 5.0) -> dict | None:
    """None if the daemon resyncs; else what its threads were doing."""
    try:
        a = daemon.status()["daemon"]["resyncs"]
        time.sleep(wait_s)
        b = daemon.status()["daemon"]["resyncs"]
    except Exception as err:  # noqa: BLE001 - status socket unanswered: also a stall
        a = b = None
        why = f"status socket: {err}"
    else:
        why = f"resyncs {a} -> {b} in {wait_s:g} s"
    if a is not None and b > a:
        return None
    out = {"why": why, "pid": daemon.pid}
    exe = Path(os.sys.executable).parent / "py-spy"
    if exe.exists():
        r = subprocess.run([str(exe), "dump", "--pid", str(daemon.pid)], capture_output=True, text=True, timeout=60,
                           check=False)
        out["stack"] = (r.stdout or r.stderr)[-4000:]
    return out


# ---------------------------------------------------------------------------
# where the time goes


def _short(func: tuple) -> str:
    file, line, name = func
    p = file.replace(str(REPO) + "/", "")
    if "site-packages/" in p:
        p = p.split("site-packages/", 1)[1]
    return f"{name} ({p}:{line})" if line else name


def _cprofile(prefix: str, config_path: Path, resyncs: int) -> dict:
    """The daemon's resync, in this process, with the same config and guests:
    CPU per resync without and with the profiler, and the top functions.
    Process CPU, not thread CPU: the daemon's libvirt RPCs run on its
    libvirt worker thread."""
    from rtagent.config import load_config
    from rtagent.daemon import Daemon

    cfg = load_config(str(config_path))
    d = Daemon(cfg, str(config_path))
    d.host.connect()
    out: dict = {}
    try:
        t = time.process_time()
        d.resync()  # first: derives every guest's intent, and runs the host checks
        out["first_resync_cpu_ms"] = 1000 * (time.process_time() - t)
        from rtagent.monitor.hostchecks import run_host_checks

        t = time.process_time()
        run_host_checks(cfg.partition, exclude_pids=set(d.guests.tracked.values()))
        out["host_checks_cpu_ms"] = 1000 * (time.process_time() - t)
        d.hostside.next_checks = float("inf")
        out["guests"] = len(d.guests.tracked)
        times, steady = [], []
        for _ in range(resyncs):
            t = time.process_time()
            d.resync()
            times.append(time.process_time() - t)
            t = time.process_time()
            d.resync(full=False)
            steady.append(time.process_time() - t)
        out["resync_cpu_ms"] = 1000 * median(times)  # the full check (every full_check_interval_s)
        out["steady_resync_cpu_ms"] = 1000 * median(steady)  # every other resync
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(resyncs):
            d.resync()
        pr.disable()
        st = pstats.Stats(pr)
        total = st.total_tt
        out["profiled_resyncs"] = resyncs
        out["profiled_total_s"] = total

        def top(key: str, n: int = 15) -> list[dict]:
            items = sorted(st.stats.items(), key=lambda kv: kv[1][2 if key == "tottime" else 3], reverse=True)
            rows = []
            for func, (cc, nc, tt, ct, _callers) in items[:n]:
                rows.append({"func": _short(func), "calls_per_resync": nc / resyncs,
                             "tottime_pct": 100 * tt / total, "cumtime_pct": 100 * ct / total})
            return rows

        out["top_tottime"] = top("tottime")
        out["top_cumtime"] = top("cumtime", 25)
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(30)
        out["text"] = buf.getvalue()
    finally:
        d.host.close()
    return out


def _py_spy(pid: int, seconds: float) -> dict | None:
    """Sample the real daemon with py-spy (if installed): inclusive share of
    samples per function in the main thread's stacks."""
    exe = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    if not os.path.exists(exe):
        return None
    out = Path(f"/tmp/rtbench-b3-{os.getpid()}-pyspy.txt")
    try:
        r = subprocess.run([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "-f", "raw",
                            "-o", str(out), "--nonblocking"], capture_output=True, text=True, timeout=seconds + 60,
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"error": str(err)}
    if r.returncode != 0 or not out.exists():
        return {"error": (r.stderr or r.stdout)[-500:]}
    incl: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        # Main thread only (the one that resyncs); idle waits are not work.
        if not any("run_forever" in f for f in frames):
            continue
        if any(w in frames[-1] for w in ("get (queue.py", "wait (threading.py")):
            continue
        total += n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    out.unlink(missing_ok=True)
    top = sorted(incl.items(), key=lambda kv: kv[1], reverse=True)
    return {"busy_samples": total, "top": [{"func": f, "pct": 100 * n / total} for f, n in top[:30]]}


# ---------------------------------------------------------------------------
# /metrics on a synthetic store


class RealThreads:
    """``n`` real, sleeping threads of this process: the synthetic store's
    vCPU threads, so that the scrape reads real kernel counters for them."""

    def __init__(self, n: int):
        import threading

        self._stop = threading.Event()
        self._ready: list[int] = []
        lock = threading.Lock()

        def body() -> None:
            with lock:
                self._ready.append(threading.get_native_id())
            self._stop.wait()

        self._threads = [threading.Thread(target=body, daemon=True) for _ in range(n)]
        for t in self._threads:
            t.start()
        while len(self._ready) < n:
            time.sleep(0.01)
        self.tids = list(self._ready)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def synthetic_store(n_guests: int, rt_vcpus: int, vcpu_tids: list[int] | None = None):
    """A state store of ``n_guests`` made-up guests, each with vCPU 0 on CPU 0
    and ``rt_vcpus`` realtime vCPUs — built with the real planner over
    made-up threads, so every series the collector can emit is there.
    ``vcpu_tids``: real threads of this process to stand for the realtime
    vCPUs (their counters are read at scrape time)."""
    from rtagent.config import Partition, RealtimeConfig
    from rtagent.model import MemorySpec, RealtimeSpec, VcpuSpec
    from rtagent.monitor.hostchecks import HostCheck
    from rtagent.state import StateStore, VcpuCounters
    from rtagent.tuning.guest.report import DomainReport
    from rtagent.tuning.guest.observe import Observed, ProcessMemory, ThreadInfo
    from rtagent.tuning.guest.plan import plan_domain

    part = Partition(online=frozenset(range(rt_vcpus + 1)), realtime=frozenset(range(1, rt_vcpus + 1)),
                     housekeeping=frozenset({0}))
    real = iter(vcpu_tids or ())

    def thread(tid, name, role="emulator", vcpu=None, kind="other", policy="other", prio=0, cpus=(0,)):
        return ThreadInfo(tid=tid, name=name, role=role, vcpu=vcpu, kind=kind, policy=policy, priority=prio,
                          cpus=frozenset(cpus), cgroup_cpu="/machine/synthetic", run_time_ns=10**9,
                          run_delay_ns=12345, timeslices=100, voluntary_ctxt_switches=10,
                          nonvoluntary_ctxt_switches=2, delayacct_blkio_ticks=0)

    store = StateStore()

    def fill(s) -> None:
        d = s.daemon
        d.libvirt_connected, d.proc_connector, d.resyncs = True, True, 1000
        d.last_resync_at = time.time()
        d.events.update({"libvirt": 10, "proc": 100})
        d.host_checks = tuple(HostCheck(f"check{i}", i % 3 != 0, "", ("info", "warning", "error")[i % 3], i)
                              for i in range(15))
        d.host_corrections.update({"irq_affinity": 3})
        for _ in range(100):
            d.reconcile_duration.observe(0.003)
            d.event_to_tuned.observe(0.015)
        for g in range(n_guests):
            name, uuid = f"synthetic-{g:04d}", str(uuidlib.UUID(int=g + 1))
            pid = os.getpid() if vcpu_tids else 10000 + 100 * g
            spec = RealtimeSpec(
                domain=name, uuid=uuid, realtime=True, source="metadata",
                vcpus=(VcpuSpec(0, False, "other", 0, frozenset({0})),
                       *(VcpuSpec(i, True, "fifo", 1, frozenset({i})) for i in range(1, rt_vcpus + 1))),
                emulator_cpus=frozenset({0}), emulator_source="emulatorpin",
                memory=MemorySpec(size_bytes=64 << 20))
            base = 10000 + 100 * g
            threads = (thread(base, "qemu-system-x86", kind="main"), thread(base + 1, "call_rcu", kind="call_rcu"),
                       thread(base + 2, "IO mon_iothread", kind="iothread"),
                       thread(base + 3, "CPU 0/KVM", "vcpu", 0, "vcpu"),
                       *(thread(next(real, base + 3 + i), f"CPU {i}/KVM", "vcpu", i, "vcpu", "fifo", 1, (i,))
                         for i in range(1, rt_vcpus + 1)))
            observed = Observed(pid=pid, threads=threads, kthreads=(), memory=ProcessMemory(), cmdline=[])
            plan = plan_domain(spec, observed, part, RealtimeConfig())
            report = DomainReport(name=name, uuid=uuid, spec=spec, pid=pid, observed=observed,
                                  threads=plan.threads, violations=[v for tp in plan.threads for v in tp.violations()]
                                  + plan.violations, observed_at=time.time())
            gs = s.guest(uuid, name)
            gs.report = report
            gs.tuned_at, gs.event_to_tuned_s = time.time(), 0.015
            gs.corrections.update({"vcpu_policy": 1, "vcpu_affinity": 2})
            gs.correction_latency.observe(0.4)
            for i in range(1, rt_vcpus + 1):
                gs.vcpus[i] = VcpuCounters(run_delay_ns=12345, run_time_ns=10**9, nonvoluntary_ctxt_switches=2,
                                           run_delay_rate=1.5, observed_at=time.time())

    store.update(fill)
    return store


def _time_scrapes(reg, encoder, reps: int, before=None) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(reps):
        if before is not None:
            before()
        t, c = time.perf_counter(), time.thread_time()
        encoder(reg)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return wall, cpu


def _scrape_lock_block(store, reg, encoder, reps: int) -> dict:
    """How long the enforcement side waits for the store's lock while scrapes
    run back to back on another thread (a scrape must never block it)."""
    import threading

    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            encoder(reg)

    t = threading.Thread(target=scraper, daemon=True)
    t.start()
    waits = []
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            store.update(lambda s: s.daemon.resyncs)
            waits.append(time.perf_counter() - t0)
            time.sleep(0.002)
    finally:
        stop.set()
        t.join()
    return summary(waits)


SCRAPE_INTERVAL_S = 15.0  # Prometheus' default


class _Scrapes:
    """A clock that advances one scrape interval per scrape (the benchmark
    scrapes back to back; the daemon's reader spaces status reads in time)."""

    def __init__(self) -> None:
        self.n = 0

    def tick(self) -> None:
        self.n += 1

    def now(self) -> float:
        return self.n * SCRAPE_INTERVAL_S


def _busy_reader(scrapes: _Scrapes):
    """The worst case for a scrape: every vCPU thread ran since the last one
    (so status is re-read whenever the daemon's reader would, with scrapes
    15 s apart) and every counter moved (no family is re-emitted from the
    last scrape's text).  Real reads of the benchmark's sleeping threads,
    their values then shifted."""
    from rtagent.kernel.counters import CounterReader, ThreadCounters
    from rtagent.kernel.root import Kernel

    reader = CounterReader(Kernel(), assume_ran=True, clock=scrapes.now)

    def read(pid: int, tid: int):
        c = reader.read(pid, tid)
        if c is None:
            return None
        bump = scrapes.n * 1_000_003
        return ThreadCounters((c.run_time_ns or 0) + bump, (c.run_delay_ns or 0) + bump // 7,
                              c.nonvoluntary_ctxt_switches + bump % 1000)

    return read


def run_scrape(reps: int) -> dict:
    """/metrics through the daemon's own encoder (rtagent/monitor/exposition.py)
    on synthetic stores whose realtime vCPUs are real threads of this process:
    ``busy`` reads every counter as if every thread ran (worst case, the
    goal row), ``cold`` reads them as the daemon does for these idle
    threads (schedstat only), ``cached`` reuses them (a second scraper
    within the interval)."""
    from prometheus_client import CollectorRegistry

    from rtagent.monitor.counters import CounterCache
    from rtagent.monitor.exposition import choose_encoder
    from rtagent.monitor.metrics import RtagentCollector

    text_encoder, _ = choose_encoder("text/plain; version=0.0.4")
    om_encoder, _ = choose_encoder("application/openmetrics-text; version=1.0.0")
    rows = []
    for n_guests, rt in ((10, 1), (100, 1), (1000, 1), (1, 10), (10, 10), (100, 10)):
        real = RealThreads(n_guests * rt)
        try:
            store = synthetic_store(n_guests, rt, real.tids)
            cold, warm = CounterCache(ttl_s=0.0), CounterCache(ttl_s=3600.0)
            scrapes = _Scrapes()
            busy = CounterCache(_busy_reader(scrapes), ttl_s=0.0)
            regs = {}
            for label, cache in (("busy", busy), ("cold", cold), ("cached", warm)):
                reg = regs[label] = CollectorRegistry()
                reg.register(RtagentCollector(store, counters=cache))
            body = text_encoder(regs["cold"])  # warm-up
            row = {"guests": n_guests, "rt_vcpus_per_guest": rt, "bytes": len(body)}
            text = body.decode()
            row["vcpu_series"] = len({(ln.split('domain="')[1].split('"')[0], ln.split('vcpu="')[1].split('"')[0])
                                      for ln in text.splitlines() if 'vcpu="' in ln and not ln.startswith("#")})
            row["samples"] = sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))
            row["counter_series"] = text.count("rtagent_vcpu_run_delay_seconds_total{")
            for label, reg in regs.items():
                for fmt, enc in (("text", text_encoder), ("openmetrics", om_encoder)):
                    wall, cpu = _time_scrapes(reg, enc, reps, scrapes.tick if label == "busy" else None)
                    row[f"{label}_{fmt}"] = {"wall": summary(wall), "cpu": summary(cpu)}
            row["lock_wait"] = _scrape_lock_block(store, regs["busy"], text_encoder, 200)
        finally:
            real.close()
        rows.append(row)
    return {"rows": rows, "reps": reps, "synthetic": True}


# ---------------------------------------------------------------------------


def plot(res: dict, path: str) -> str | None:
    rows = res.get("daemon", {}).get("rows") or []
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = [r["guests"] for r in rows]
    paused = res["daemon"].get("guests_paused")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        ("CPU, % of one core (resync 1 s)", [r["cpu_pct"] for r in rows], GOAL_CPU_PCT_100, "goal at 100 guests"),
        ("CPU per managed thread per resync, µs", [r["us_per_thread"] for r in rows], GOAL_US_PER_THREAD, "goal"),
        ("RSS, MiB", [r["rss_mib"] for r in rows], GOAL_RSS_MIB, "goal"),
    )
    for ax, (title, ys, goal, label) in zip(axes, panels, strict=True):
        ax.plot(g, ys, "o-", label="measured")
        ax.axhline(goal, color="tab:red", ls="--", label=f"{label} ({goal:g})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("realtime guests (real QEMU, 64 MiB, 2 vCPUs" + (", paused)" if paused else ")"))
        ax.set_xscale("log")
        ax.set_xticks(g)
        ax.set_xticklabels([str(x) for x in g])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("rtagent daemon cost vs guests (B3)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(quick: bool = True) -> dict:
    with on_housekeeping():
        t0 = time.monotonic()
        out = {"scrape": run_scrape(10 if quick else 50)}
        sizes = [1, 10, 30] if quick else [1, 10, 50, 100]
        out["daemon"] = run_daemon_cost(sizes, window_s=6.0 if quick else 20.0, windows=3, profile=True,
                                        budget_wait_s=60.0 if quick else 1500.0)
        # Running guests: as many as fit beside the daemon (100 running PVM
        # guests saturate CPU 0); no profile, same windows.
        out["daemon_running"] = run_daemon_cost([1, 10] if quick else RUNNING_SIZES,
                                                window_s=6.0 if quick else 20.0, windows=3, profile=False,
                                                paused=False, budget_wait_s=60.0 if quick else 600.0)
        out["elapsed_s"] = time.monotonic() - t0
    return out


GOAL_IDLE_CPU_PCT = 0.05


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


DAEMON_RUNS = (("daemon", "paused guests"), ("daemon_running", "running guests"))


def _daemon_goal_rows(d: dict, tag: str) -> list[list[str]]:
    rows = []
    for r in d.get("rows", []):
        v = r["us_per_thread"]
        rows.append([f"resync CPU per managed thread, {r['guests']} {tag}", f"{v:.1f} µs",
                     f"≤ {GOAL_US_PER_THREAD:g} µs", _mark(v <= GOAL_US_PER_THREAD)])
    if d.get("rows"):
        last = d["rows"][-1]
        at = f"{last['guests']} {tag}" + ("" if last["guests"] == 100 else " (goal is for 100)")
        rows.append([f"daemon CPU, resync {d['resync_s']:g} s, {at}", f"{last['cpu_pct']:.2f} %",
                     f"≤ {GOAL_CPU_PCT_100:g} %", _mark(last["cpu_pct"] <= GOAL_CPU_PCT_100)])
        rows.append([f"daemon RSS, {at}", f"{last['rss_mib']:.1f} MiB", f"≤ {GOAL_RSS_MIB:g} MiB",
                     _mark(last["rss_mib"] <= GOAL_RSS_MIB)])
    idle = d.get("idle") or {}
    if "rtagent_cpu_pct" in idle:
        rows.append([f"idle daemon (no realtime guest; before the {tag})", f"{idle['rtagent_cpu_pct']:.3f} %",
                     f"≤ {GOAL_IDLE_CPU_PCT:g} %", _mark(idle["rtagent_cpu_pct"] <= GOAL_IDLE_CPU_PCT)])
    return rows


def goals_table(res: dict) -> str:
    """One row per goal of the steady-state cost, measured against it, for
    paused and for running guests."""
    rows = []
    for key, tag in DAEMON_RUNS:
        rows += _daemon_goal_rows(res.get(key) or {}, tag)
    for r in (res.get("scrape") or {}).get("rows", []):
        # The goal's shape: 1,000 vCPU series as 100 guests × 10 realtime vCPUs.
        if (r["guests"], r["rt_vcpus_per_guest"]) == (100, 10) and "cold_text" in r:
            for key, what in (("busy_text", "every thread ran"), ("busy_openmetrics", "every thread ran, OpenMetrics"),
                              ("cold_text", "idle threads"), ("cached_text", "counters cached")):
                p99 = r[key]["wall"]["p99"] * 1000
                rows.append([f"/metrics, {r['vcpu_series']} vCPU series, {what} (p99)", f"{p99:.1f} ms",
                             f"≤ {GOAL_SCRAPE_MS_1000:g} ms", _mark(p99 <= GOAL_SCRAPE_MS_1000)])
            lw = r["lock_wait"]["max"] * 1000
            rows.append(["state lock wait during back-to-back scrapes (max)", f"{lw:.2f} ms",
                         "never blocks enforcement", "n/a"])
    for key, tag in DAEMON_RUNS:
        rows += _tuned_goal_rows(res.get(key) or {}, tag)
    return format_table(["B3 goal", "measured", "goal", ""], rows)


def _tuned_goal_rows(d: dict, tag: str = "guests") -> list[list[str]]:
    """tuned next to rtagent: CPU and RSS, and the ratio (no goal: a reference)."""
    out = []
    pairs = [(f"idle (before the {tag})", (d.get("idle") or {}).get("rtagent_cpu_pct"),
              (d.get("idle") or {}).get("tuned"))]
    pairs += [(f"{r['guests']} {tag}", r["cpu_pct"], r.get("tuned")) for r in d.get("rows", [])]
    for label, ours, t in pairs:
        if not isinstance(t, dict):  # not measured (a row's own "tuned" is rtagent's tuned-at flag)
            continue
        if "cpu_pct" not in t:
            out.append([f"tuned, {label}", t.get("error", "?")[:60], "reference", "n/a"])
            continue
        ratio = f" (rtagent/tuned CPU {ours / t['cpu_pct']:.2f}×)" if ours is not None and t["cpu_pct"] else ""
        left = t.get("not_rolled_back") or []
        out.append([f"tuned 2.20 daemon CPU / RSS, {label}",
                    f"{t['cpu_pct']:.2f} % / {t['rss_mib']:.1f} MiB{ratio}",
                    "reference", "rolled back" if not left else f"{len(left)} left changed"])
    return out


def _daemon_parts(d: dict, tag: str) -> list[str]:
    parts = []
    left = sorted({x for r in [d.get("idle") or {}, *d.get("rows", [])]
                   for x in ((r.get("tuned") or {}) if "tuned" in r else {}).get("not_rolled_back", [])})
    if left:
        parts.append(f"What tuned did not roll back when stopped by PID ({tag}; put back by the benchmark):\n"
                     + "\n".join(f"  {x}" for x in left[:20]))
    rows = []
    for r in d.get("rows", []):
        rows.append([r["guests"] if not r.get("failed_changes") else f"{r['guests']} (refused changes: "
                     f"{r['failed_changes']})", r["managed_threads"], f"{r['resync_cpu_ms']:.2f}",
                     f"{r['us_per_thread']:.1f}",
                     f"{r['us_per_thread'] / GOAL_US_PER_THREAD:.1f}×", f"{r['cpu_pct']:.2f}",
                     f"{r['main_cpu_pct']:.2f}", f"{r['rss_mib']:.1f}", f"{r['resyncs_per_s']:.2f}",
                     f"{r['cpu0_busy_pct']:.0f}"])
    if rows:
        parts.append(format_table(
            [f"B3 {tag} (real)", "managed threads", "CPU/resync ms", "µs/thread/resync", "vs 5 µs goal",
             "daemon CPU %", "main thread %", "RSS MiB", "resyncs/s", "CPU 0 busy %"], rows))
        last = d["rows"][-1]
        parts.append(
            f"Resync every {d['resync_s']:g} s, full check every {d.get('full_check_s', FULL_CHECK_S):g} s "
            f"(CPU per resync averages both at their share); medians of {d['windows']} windows of "
            f"{d['window_s']:g} s. At {last['guests']} {tag}: CPU {last['cpu_pct']:.2f} % "
            f"({last['cpu_pct'] / GOAL_CPU_PCT_100:.1f}× the 100-guest goal), "
            f"{last['us_per_thread']:.1f} µs/thread ({last['us_per_thread'] / GOAL_US_PER_THREAD:.1f}× the goal), "
            f"RSS {last['rss_mib']:.1f} MiB ({last['rss_mib'] / GOAL_RSS_MIB:.2f}× the goal); "
            f"idle daemon RSS {d['rss_idle_mib']:.1f} MiB.")
    if d.get("guests_paused"):
        parts.append("Guests started paused (VIR_DOMAIN_START_PAUSED): real QEMU processes with their vCPU, "
                     "emulator and kvm-pit threads, managed like running ones, but their vCPUs never run — "
                     "100 running PVM guests saturate CPU 0 on this machine.")
    elif d.get("rows"):
        parts.append(f"Running guests (their firmware idles; each costs ~1 % of CPU 0 under PVM), up to "
                     f"{d['rows'][-1]['guests']}: what fits next to the daemon on this 2-CPU machine.")
    for e in d.get("errors") or []:
        parts.append(f"Stopped at {e['guests']} guests: {e['error']}")
    for st in d.get("stalls") or []:
        parts.append(f"Daemon stall at {st['guests']} guests ({st['why']}); replaced by a fresh daemon. "
                     f"Its stack (py-spy dump):\n\n" + "\n".join("    " + ln for ln in
                                                              (st.get("stack") or "(none)").splitlines()[:40]))
    return parts


def format(res: dict) -> str:
    parts = [goals_table(res)]
    for key, tag in DAEMON_RUNS:
        parts += _daemon_parts(res.get(key) or {}, tag)
    d = res.get("daemon") or {}
    prof = d.get("profile") or {}
    cp = prof.get("cprofile")
    if cp:
        rows = [[x["func"][:90], f"{x['calls_per_resync']:.0f}", f"{x['cumtime_pct']:.0f}", f"{x['tottime_pct']:.0f}"]
                for x in cp["top_cumtime"]]
        parts.append(format_table(["cProfile, in-process full check (cumulative)", "calls/resync", "cum %", "self %"],
                                  rows))
        parts.append(f"In-process at {cp['guests']} guests: a full check {cp['resync_cpu_ms']:.1f} ms CPU "
                     f"(profiled above), a steady resync {cp.get('steady_resync_cpu_ms', float('nan')):.2f} ms, "
                     f"without the profiler; first resync (derives intents) {cp['first_resync_cpu_ms']:.1f} ms; "
                     f"host checks (every 30 s) {cp['host_checks_cpu_ms']:.1f} ms each.")
    ps = prof.get("py_spy")
    if ps and ps.get("top"):
        rows = [[x["func"][:100], f"{x['pct']:.0f}"] for x in ps["top"][:20]]
        parts.append(format_table(["py-spy, real daemon main thread, busy samples (inclusive)", "%"], rows))
    elif ps:
        parts.append(f"py-spy: {ps.get('error')}")
    s = res.get("scrape") or {}
    rows = []
    for r in s.get("rows", []):
        if "cold_text" not in r:
            continue
        ms = (lambda k, q: f"{r[k]['wall'][q] * 1000:.2f}")  # noqa: E731
        rows.append([f"{r['guests']} × {r['rt_vcpus_per_guest']}", r["vcpu_series"], r["samples"],
                     f"{r['bytes'] / 1024:.0f}", ms("busy_text", "p50"), ms("busy_text", "p99"),
                     ms("busy_openmetrics", "p99"), ms("cold_text", "p50"), ms("cached_text", "p50"),
                     ms("cached_text", "p99"), f"{r['lock_wait']['max'] * 1000:.2f}"])
    if rows:
        parts.append(format_table(["/metrics, synthetic store, real vCPU threads: guests × realtime vCPUs",
                                   "vCPU series", "samples", "KiB", "all ran p50 ms", "all ran p99 ms",
                                   "all ran OM p99 ms", "idle p50 ms", "cached p50 ms", "cached p99 ms",
                                   "lock wait max ms"], rows))
        parts.append(f"The daemon's encoder (rtagent/monitor/exposition.py) on a registry holding only "
                     f"RtagentCollector, {s['reps']} repetitions each.  The realtime vCPUs are real sleeping threads "
                     f"of the benchmark: \"all ran\" treats every thread as having run since the last scrape (15 s "
                     f"apart: schedstat every time, status when the daemon's reader would re-read it) and "
                     f"shifts every value (every counter moved), \"idle\" "
                     f"reads them as the daemon does for threads that did not run (schedstat only), \"cached\" "
                     f"reuses the values (another scraper within the interval). "
                     f"Lock wait: the longest the enforcement side waited for the state lock while scrapes ran "
                     f"back to back.  Goal ≤ {GOAL_SCRAPE_MS_1000:g} ms at 1,000 series.")
    return "\n\n".join(parts)
