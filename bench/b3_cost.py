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
* ``/metrics``: :mod:`bench.b3_scrape` — the daemon's encoder and endpoint
  over a state store of synthetic guests whose realtime vCPUs are real
  threads, 10 to 1,000 vCPU series (the goal's: 100 guests × 10).
* The drift watch's price on every other process: :mod:`bench.b3_syscalls`
  (the extra ns a syscall, and each row's host syscall rate after its
  windows), set against the CPU the watch saves the daemon.

Goals (issue 14): ≤ 5 µs CPU per managed thread (judged per second above the
idle daemon, bench/b3_floor.py, with the per-resync figure and the machine's
wake-up floor beside it); 100 guests ≤ 0.5 %
of a core at a 1 s resync; RSS ≤ 40 MiB; scrape ≤ 20 ms at 1,000 series.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import time
from pathlib import Path

from . import b2_watchcost, b3_floor, b3_scrape, b3_syscalls, tuned_side
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
    wait_for,
)

RESYNC_S = 1.0
FULL_CHECK_S = 30.0  # the default [daemon] full_check_interval_s
RUNNING_SIZES = [1, 10, 30]  # running guests that fit beside the daemon here (CPU 0 is shared)
B3_BUDGET_US = 1000  # per realtime vCPU; 100 guests take 10 % of the root RT budget, leaving the rest to others
GOAL_US_PER_THREAD = 5.0
GOAL_CPU_PCT_100 = 0.5
GOAL_RSS_MIB = 40.0


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


SETTLE_STEP_S = 5.0
SETTLE_TIMEOUT_S = 90.0


def daemon_quiet(rates: list[float], floor: float) -> bool:
    """The stop rule of :func:`_daemon_settle`: the daemon's CPU rate
    (cores, one per step) is at the idle daemon's ``floor``, or stopped
    falling (the last step cost more than 0.9 of the one before: what is
    left is its steady state, or noise on it)."""
    if not rates:
        return False
    if rates[-1] <= floor:
        return True
    return len(rates) >= 2 and rates[-1] > 0.9 * rates[-2]


def _daemon_settle(daemon, floor: float, timeout: float = SETTLE_TIMEOUT_S, step: float = SETTLE_STEP_S) -> dict:
    """Wait (bounded) until the daemon's own reaction to the new guests is
    over, not only the guests' QEMUs (:func:`_settle`): a running guest's
    per-VM kthreads and late threads arrive after its firmware has
    started, and the daemon's work on them is a start-up cost, not the
    steady state a row measures.  Samples the whole process's CPU in
    ``step`` windows; the status socket is asked only before and after (its
    answer costs the daemon CPU).  Returns what it saw: the rates, how long,
    and what the daemon counted meanwhile (events by source, resyncs, full
    checks), which says what it was doing."""
    def counts() -> dict:
        d = daemon.status()["daemon"]
        return {"resyncs": d["resyncs"], "full_checks": d.get("full_checks", 0), **d.get("events", {})}

    c0, t0 = counts(), time.monotonic()
    rates: list[float] = []
    while time.monotonic() - t0 < timeout:
        a, ta = process_cpu_ns(daemon.pid), time.monotonic()
        time.sleep(step)
        rates.append((process_cpu_ns(daemon.pid) - a) / 1e9 / (time.monotonic() - ta))
        if daemon_quiet(rates, floor):
            break
    settle_s, c1 = time.monotonic() - t0, counts()
    return {"settle_s": settle_s, "quiet": daemon_quiet(rates, floor), "cpu_pct": [100 * r for r in rates],
            "floor_pct": 100 * floor, "counted": {k: v - c0.get(k, 0) for k, v in c1.items() if v != c0.get(k, 0)}}


def _idle_floor(idle: dict) -> float:
    """The idle daemon's CPU (cores) with a margin: 1.5 times its median
    window and 0.01 % of a core (a 5 s step holds 0.5 ms of noise)."""
    rates = [w["proc_cpu_s"] / w["wall_s"] for w in idle.get("windows") or [] if w.get("wall_s")]
    return 1.5 * (median(rates) if rates else 0.0) + 1e-4


def _resync_cpu_ns(pid: int) -> int:
    """CPU of the threads a resync runs on: the main thread, and the worker
    that makes the daemon's libvirt calls (named by the daemon)."""
    from rtagent.libvirt_host import WORKER_THREAD_NAME

    tids = [pid] + [t for t, n in thread_names(pid).items() if n == WORKER_THREAD_NAME]
    return sum((schedstat(pid, t) or (0, 0, 0))[0] for t in tids)


def _memory(pid: int) -> dict[str, float]:
    """MiB from smaps_rollup: what is the daemon's own (anonymous) and what
    is file-backed (shared libraries, mostly shared with other processes),
    and PSS (each shared page divided by its sharers)."""
    kb: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    kb[key] = int(rest.split()[0])
    except OSError:
        return {}
    return {"rss": kb.get("Rss", 0) / 1024, "anon": kb.get("Anonymous", 0) / 1024,
            "file": (kb.get("Rss", 0) - kb.get("Anonymous", 0)) / 1024, "pss": kb.get("Pss", 0) / 1024}


def _threads_cpu(pid: int) -> dict[str, tuple[int, int]]:
    """``"<comm> (<tid>)"`` -> (CPU ns, context switches) of each thread
    (the daemon names its threads; the main thread is "main")."""
    out = {}
    for tid, name in thread_names(pid).items():
        s = schedstat(pid, tid)
        if s is not None:
            out[f"{'main' if tid == pid else name} ({tid})"] = (s[0], s[2])
    return out


def _main_switches(pid: int) -> int:
    """The main thread's wake-ups: its voluntary context switches (each a
    sleep it woke from).  Not schedstat's timeslices, which also count every
    preemption of a long full check on a loaded machine."""
    try:
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _window(daemon, seconds: float, wakes_hint: float = 1 / RESYNC_S, twin=None) -> dict:
    """One measurement window.  The status socket is asked just outside the
    CPU window (its JSON costs the daemon CPU on another thread).  A bare
    sleeper (bench/b3_floor.py) runs beside it at ``wakes_hint`` wake-ups a
    second (the main thread's rate in the window before).  ``twin``: the
    idle twin daemon, its CPU read at the same instants as the daemon's
    (b3_floor.per_second_above_twin)."""
    failed0 = daemon.log_text().count(": failed: ")
    st0, ts0 = daemon.status()["daemon"]["resyncs"], time.monotonic()
    sleeper = b3_floor.Sleeper(wakes_hint, seconds)
    time.sleep(0.1)
    main0, proc0, stat0, cpu0 = _resync_cpu_ns(daemon.pid), process_cpu_ns(daemon.pid), \
        process_stat_cpu_s(daemon.pid), _cpu0_busy()
    th0, sw0 = _threads_cpu(daemon.pid), _main_switches(daemon.pid)
    tw0 = _twin_reading(twin)
    t0 = time.monotonic()
    time.sleep(seconds)
    main1, proc1, stat1, cpu1 = _resync_cpu_ns(daemon.pid), process_cpu_ns(daemon.pid), \
        process_stat_cpu_s(daemon.pid), _cpu0_busy()
    th1, sw1 = _threads_cpu(daemon.pid), _main_switches(daemon.pid)
    tw1 = _twin_reading(twin)
    t1 = time.monotonic()
    time.sleep(0.1)
    st1, ts1 = daemon.status()["daemon"]["resyncs"], time.monotonic()
    wall = t1 - t0
    resyncs = (st1 - st0) * wall / (ts1 - ts0)
    twin_part = {} if tw0 is None or tw1 is None else {"twin_proc_cpu_s": (tw1 - tw0) / 1e9}
    return {**twin_part, "wall_s": wall, "resyncs": resyncs, "main_switches": sw1 - sw0, "sleeper": sleeper.result(),
            # Changes the kernel refused (e.g. FIFO without RT budget): each
            # costs an apply and a re-observe on every resync, not steady state.
            "failed_changes": daemon.log_text().count(": failed: ") - failed0,
            "main_cpu_s": (main1 - main0) / 1e9, "proc_cpu_s": (proc1 - proc0) / 1e9,
            "stat_cpu_s": stat1 - stat0,
            # Per thread: CPU % of a core and wake-ups (context switches) per second.
            "threads": {k: {"cpu_pct": 100 * (v[0] - th0[k][0]) / 1e9 / (t1 - t0),
                            "switches_per_s": (v[1] - th0[k][1]) / (t1 - t0)}
                        for k, v in th1.items() if k in th0},
            "cpu0_busy_pct": 100.0 * (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])}


def _twin_reading(twin) -> int | None:
    """The idle twin's process CPU (ns), or None (no twin, or it is gone)."""
    if twin is None or twin.proc.poll() is not None:
        return None
    return process_cpu_ns(twin.pid)


def _windows(daemon, window_s: float, windows: int, wakes_hint: float, twin=None) -> list[dict]:
    """``windows`` windows; each one's sleeper at the main thread's wake-up
    rate of the window before (the first: ``wakes_hint``)."""
    out = []
    for _ in range(windows):
        out.append(_window(daemon, window_s, wakes_hint, twin))
        wakes_hint = out[-1]["main_switches"] / out[-1]["wall_s"]
    return out


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


def _warm_up(daemon, twin=None) -> dict:
    """Wait out a new daemon's start before its idle windows: its first full
    check (one interval after start) and host checks ran in the first idle
    window of the 2026-12-03 run (0.096 % against 0.023 % in the second),
    raising the idle floor that every row's settle and the idle goal use.
    Waits until both daemons are one full check interval old, then for the
    daemon's CPU to stop falling (:func:`_daemon_settle`, floor 0)."""
    t0 = time.monotonic()
    interval = _daemon_setting("full_check_interval_s", FULL_CHECK_S)
    youngest = min(d.status()["daemon"].get("uptime_s", interval) for d in (daemon, twin) if d is not None)
    time.sleep(max(0.0, interval + SETTLE_STEP_S - youngest))
    settle = _daemon_settle(daemon, 0.0)
    print(f"  B3: idle daemons warmed up in {time.monotonic() - t0:.0f} s "
          f"(last step {settle['cpu_pct'][-1] if settle['cpu_pct'] else float('nan'):.3f} %)", flush=True)
    return {"waited_s": time.monotonic() - t0, "settle": settle}


def _idle_rows(daemon, window_s: float, windows: int, workdir: Path, with_tuned: bool, twin=None) -> dict:
    """Both daemons with no guest of ours (the idle goal); beside the idle
    twin, whose difference to the daemon here is the twin method's error.
    Measured once both are past their start (:func:`_warm_up`)."""
    warm = _warm_up(daemon, twin)
    samples = _windows(daemon, window_s, windows, 1 / 5.0, twin)
    cpu = [100 * s["proc_cpu_s"] / s["wall_s"] for s in samples]
    per_resync = [s["main_cpu_s"] / s["resyncs"] for s in samples if s["resyncs"] > 0]
    out = {"rtagent_cpu_pct": median(cpu), "rtagent_cpu_pct_all": cpu, "rtagent_rss_mib": rss_bytes(daemon.pid) / 2**20,
           # What a resync costs with nothing to manage (loop, host checks at
           # their share, liveness probe): the baseline the per-thread
           # figures are given above (marginal) as well as in total.
           "resync_cpu_ms": 1000 * median(per_resync) if per_resync else float("nan"),
           # Per second, not per resync: an idle daemon resyncs less often (daemon/cadence.py).
           "main_cpu_per_s": median([s["main_cpu_s"] / s["wall_s"] for s in samples]) if samples else float("nan"),
           "threads": samples[-1]["threads"] if samples else {},
           "twin_offset_us_per_s": b3_floor.twin_offset(samples),
           # The baseline of the per-second rows (bench/b3_floor.py: pooled, every thread).
           "windows": samples, "warm_up": warm}
    share = host_checks_share(daemon.dir / "rtagent.toml")
    if share:  # the windows held no host-check run (host_checks_config): add one at its share
        out.update(share, rtagent_cpu_pct_windows=out["rtagent_cpu_pct"])
        out["rtagent_cpu_pct"] += share["host_checks_us_per_s"] / 1e4
    if with_tuned:
        out["tuned"] = _tuned_row(_prefix(), window_s, windows, workdir)
    return out


def host_checks_config(fields: dict[str, object]) -> str:
    """The ``[daemon]`` line that keeps the periodic host checks out of the
    windows: they run every ``host_check_interval_s`` (300 s), so a 30 s
    window holds a run or not by chance, and one run in a 1-guest window
    would be most of it.  Their cost is timed apart and added at its share
    (:func:`host_checks_share`).  An rtagent without the key ran them every
    30 s, inside every window: nothing to set."""
    return "host_check_interval_s = 86400.0\n" if "host_check_interval_s" in fields else ""


def host_checks_share(config_path: Path, exclude_pids: set[int] = frozenset()) -> dict:
    """One run of the daemon's host checks timed here, in this process, on
    the same host and config, with the names of an earlier run kept (as the
    daemon keeps them), and its share of a second at the daemon's default
    interval.  {} for an rtagent whose daemon ran them inside the windows."""
    interval = _daemon_setting("host_check_interval_s", float("nan"))
    if interval != interval:
        return {}
    from rtagent.config import load_config
    from rtagent.kernel.procscan import ThreadNames
    from rtagent.monitor.hostchecks import run_host_checks

    cfg = load_config(str(config_path))
    names = ThreadNames()
    run_host_checks(cfg.partition, exclude_pids=set(exclude_pids), thread_names=names)
    t = time.process_time()
    run_host_checks(cfg.partition, exclude_pids=set(exclude_pids), thread_names=names)
    ms = 1000 * (time.process_time() - t)
    return {"host_checks_ms": ms, "host_checks_every_s": interval, "host_threads": _host_threads(),
            "host_checks_us_per_s": 1000 * ms / interval}


def _add_host_checks(row: dict, idle: dict, share: dict, threads: int) -> None:
    """The host checks at their share, into a row whose windows held none:
    the per-thread figures above idle get the difference to the idle
    daemon's share (the same scan, less the managed QEMUs' threads), the
    totals and the CPU share the whole of it."""
    if not share or not threads:
        return
    row.update(share)
    us, idle_us = share["host_checks_us_per_s"], idle.get("host_checks_us_per_s", 0.0)
    row["host_checks_us_per_thread_s"] = us / threads
    row["per_s_above_idle_us"] += (us - idle_us) / threads
    if "per_s_above_twin_us" in row:  # the twin's windows held no host-check run either: the same difference
        row["per_s_above_twin_us"] += (us - idle_us) / threads
    row["per_s_total_us"] += us / threads
    row["cpu_pct"] += us / 1e4


def _qemu_pids(doms: list[dict]) -> set[int]:
    return {d["pid"] for d in doms if isinstance(d.get("pid"), int)}


def _host_threads() -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                n += len(os.listdir(f"/proc/{pid}/task"))
    return n


WATCH_MODES = ("default", "on", "off", "both")


def effective_watch(mode: str, fields: dict[str, object]) -> str:
    """What ``mode`` means for a daemon whose config has ``fields`` (name →
    default): "default" is "on" when the daemon has a drift watch, else
    "absent"; "on"/"off" need one (ValueError otherwise)."""
    if mode not in WATCH_MODES or mode == "both":
        raise ValueError(f"drift watch mode {mode!r}: one of default, on, off (both: one series each)")
    if "drift_watch" not in fields:
        if mode == "default":
            return "absent"
        raise ValueError(f"--drift-watch {mode}: this rtagent has no [daemon] drift_watch key")
    return "on" if mode == "default" else mode


def watch_config(mode: str, fields: dict[str, object]) -> str:
    """The ``[daemon]`` line that sets drift-watch ``mode`` (see
    :func:`effective_watch`), in the key's own type."""
    eff = effective_watch(mode, fields)
    if eff == "absent":
        return ""
    on = eff == "on"
    value = ("true" if on else "false") if isinstance(fields["drift_watch"], bool) else f'"{eff}"'
    return f"drift_watch = {value}\n"


def _daemon_fields() -> dict[str, object]:
    import dataclasses

    from rtagent.config import DaemonConfig

    return {f.name: f.default for f in dataclasses.fields(DaemonConfig)}


def run_daemon_cost(sizes: list[int], window_s: float, windows: int, profile: bool = True,
                    paused: bool = True, budget_wait_s: float = 60.0, with_tuned: bool = True,
                    drift_watch: str = "default", twin: bool = True) -> dict:
    """``paused``: start the guests paused (``VIR_DOMAIN_START_PAUSED``; QEMU,
    its vCPU threads and kvm-pit exist, the vCPUs never run).  Under PVM an
    idle guest in its firmware costs ≈ 1 % of CPU 0, where every guest's
    vCPU 0 and emulator threads live, so 100 running guests saturate CPU 0
    and starve the daemon itself (measured: guest starts slowed to ~30 s each
    and libvirtd dropped our connection near 100).  The daemon's work per
    guest is the same for a paused guest: same threads, same /proc files,
    same libvirt calls.

    ``twin``: a second daemon of the same tree and config runs beside it
    the whole time, its guest selector matching none of the guests (an
    idle daemon in the same windows, b3_floor.per_second_above_twin); the
    per-second rows are judged above it."""
    import libvirt

    prefix = _prefix()
    extra = watch_config(drift_watch, _daemon_fields()) + host_checks_config(_daemon_fields())
    flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
    guests = Guests()
    daemon = idle_twin = None
    rows: list[dict] = []
    prof: dict = {}
    stalls: list[dict] = []
    errors: list[dict] = []
    try:
        # Each realtime vCPU needs B3_BUDGET_US of the host's RT budget, which
        # concurrent runs (B1's daemon uses "auto": all of it) may hold.  A
        # refused FIFO is retried every resync — the failure path, not the
        # steady state — so wait (bounded) for room.
        # Every guest wants CPU 1, which one realtime vCPU owns host-wide
        # (the others report cpu_conflict and are not made realtime): one
        # vCPU group's budget, and a margin.
        need = B3_BUDGET_US + 10_000
        free = wait_for(lambda: (f := _rt_budget_free()) is not None and f >= need and f, budget_wait_s, 5.0)
        if not free:
            print(f"  B3: only {_rt_budget_free()} µs RT budget free (need {need}); measuring anyway", flush=True)
        daemon = start_daemon(prefix, resync=RESYNC_S, rt_budget_us=B3_BUDGET_US, daemon_extra=extra)
        if twin:  # "<prefix>twin-*" matches none of the guests ("<prefix>N")
            idle_twin = start_daemon(f"{prefix}twin-", resync=RESYNC_S, rt_budget_us=B3_BUDGET_US, daemon_extra=extra)
        rss_idle = rss_bytes(daemon.pid)
        idle = _idle_rows(daemon, window_s, windows, daemon.dir, with_tuned, idle_twin)
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
                stall = _stalled(daemon, _stall_wait_s(drift_watch))
                if stall is None:
                    break
                stall.update(guests=size, log_tail=daemon.log_text()[-1500:])
                stalls.append(stall)
                print(f"  B3: daemon {daemon.pid} stopped resyncing at {size} guests; restarting it", flush=True)
                daemon.stop()
                daemon = start_daemon(prefix, resync=RESYNC_S, rt_budget_us=B3_BUDGET_US, daemon_extra=extra)
                ok = wait_for(tuned, 60 + 3 * size, 1.0)
            settle = _daemon_settle(daemon, _idle_floor(idle))
            samples = _windows(daemon, window_s, windows, 1 / 5.0, idle_twin)
            st = daemon.status()
            doms = st["domains"]
            threads = sum(len(d.get("threads", [])) for d in doms)
            per_resync = [s["main_cpu_s"] / s["resyncs"] for s in samples if s["resyncs"] > 0]
            row = {
                "guests": size, "tuned": bool(ok), "managed_threads": threads,
                "compliant": sum(1 for d in doms if d.get("compliant")),
                "violations": sorted({v["check"] for d in doms for v in d.get("violations", [])}),
                "start_and_tune_s": started_s, "qemu_cores_settled": qemu_cores, "daemon_settle": settle,
                "windows": samples,
                "resync_cpu_ms": 1000 * median(per_resync) if per_resync else float("nan"),
           # Per second, not per resync: an idle daemon resyncs less often (daemon/cadence.py).
           "main_cpu_per_s": median([s["main_cpu_s"] / s["wall_s"] for s in samples]) if samples else float("nan"),
                "resync_cpu_ms_all": [1000 * x for x in per_resync],
                "us_per_thread": 1e6 * median(per_resync) / threads if per_resync and threads else float("nan"),
                # Above the idle daemon's resync (the goal row judges this one:
                # the idle cost has its own goal).
                "marginal_us_per_thread": _marginal_us(samples, idle, threads),
                # What a node pays (issue 14's goal row): the whole process's
                # CPU per managed thread per second, above idle and in total,
                # and the machine's wake-up floor beside it (b3_floor.py).
                "per_s_above_idle_us": b3_floor.per_second_above_idle(samples, idle.get("windows") or [], threads),
                # The same, above the idle twin in the same windows (judged on when present).
                "per_s_above_twin_us": b3_floor.per_second_above_twin(samples, threads),
                "per_s_total_us": b3_floor.per_second_total(samples, threads),
                "wake_floor": b3_floor.floor_row(samples, idle.get("windows") or [], threads),
                "cpu_pct": 100 * median([s["proc_cpu_s"] / s["wall_s"] for s in samples]),
                "cpu_pct_stat": 100 * median([s["stat_cpu_s"] / s["wall_s"] for s in samples]),
                "main_cpu_pct": 100 * median([s["main_cpu_s"] / s["wall_s"] for s in samples]),
                "resyncs_per_s": median([s["resyncs"] / s["wall_s"] for s in samples]),
                "cpu0_busy_pct": median([s["cpu0_busy_pct"] for s in samples]),
                "rss_mib": rss_bytes(daemon.pid) / 2**20,
                "memory_mib": _memory(daemon.pid),
                "libvirt_reconnects": st["daemon"]["libvirt"]["reconnects"],
                "drift_watch_status": st["daemon"].get("drift_watch"),  # what the daemon says it ran
                "failed_changes": sum(s["failed_changes"] for s in samples),
                "rt_budget_free_us": _rt_budget_free(),
            }
            _add_host_checks(row, idle, host_checks_share(daemon.dir / "rtagent.toml", _qemu_pids(doms)), threads)
            # After the windows (counting enables a tracepoint): what the drift watch's price is paid on.
            row["host_syscalls"] = b3_syscalls.host_rate()
            if with_tuned:
                row["tuned"] = _tuned_row(prefix, window_s, windows, daemon.dir)
            rows.append(row)
            print(f"  B3: {size} guests: {row['resync_cpu_ms']:.2f} ms CPU/resync, "
                  f"{row['us_per_thread']:.1f} µs/thread ({row['marginal_us_per_thread']:.1f} above idle), "
                  f"{row['per_s_above_idle_us']:.1f} µs/thread/s above idle "
                  f"({row['per_s_above_twin_us']:.1f} above the twin) "
                  f"(wake-up floor {row['wake_floor'].get('floor_us_per_thread_s', float('nan')):.1f}), "
                  f"{row['cpu_pct']:.2f} % CPU, "
                  f"{row['rss_mib']:.1f} MiB RSS; daemon settled {_settle_cell(settle)}, "
                  f"counted meanwhile {settle['counted']}", flush=True)
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
                "guests_paused": paused, "drift_watch": effective_watch(drift_watch, _daemon_fields()),
                "full_check_s": _daemon_setting("full_check_interval_s", FULL_CHECK_S)}
    finally:
        # The guests go first, while their daemon still runs: it gives their
        # RT budget back and trims /machine (a daemon stopped before its
        # guests leaves the budget in place, by design).
        guests.close()
        if daemon is not None:
            with contextlib.suppress(Exception):
                wait_for(lambda: not daemon.status()["domains"], 30, 1.0)
            # The trim right after a guest's groups go can be refused for a
            # moment (EINVAL, ledger.py) and is retried at the next resync.
            wait_for(_machine_trimmed, 15, 0.5)
            daemon.stop()
        if idle_twin is not None:
            idle_twin.stop()


def _marginal_us(samples: list[dict], idle: dict, threads: int) -> float:
    """µs per managed thread per resync above what the idle daemon's main
    thread spends in the same time (its CPU per second times the window)."""
    base = idle.get("main_cpu_per_s", float("nan"))
    per = [(s["main_cpu_s"] - base * s["wall_s"]) / s["resyncs"] for s in samples if s["resyncs"] > 0]
    return 1e6 * median(per) / threads if per and threads else float("nan")


CPU_ROOT = Path("/sys/fs/cgroup/cpu")


def _held(parent: Path, skip: Path | None = None) -> int:
    """The RT budget ``parent``'s child groups hold (but ``skip``).  Read by
    hand, not through rtagent's RtTree: the bench also measures older trees.
    A group not made yet (``machine`` before a host's first guest) holds none."""
    if not parent.is_dir():
        return 0
    return sum(max(int((d / "cpu.rt_runtime_us").read_text()), 0) for d in parent.iterdir()
               if d != skip and d.is_dir() and (d / "cpu.rt_runtime_us").exists())


def _machine_trimmed() -> bool:
    """``machine`` holds no more than its children (or has no budget file)."""
    machine = CPU_ROOT / "machine"
    try:
        return int((machine / "cpu.rt_runtime_us").read_text()) <= _held(machine)
    except (OSError, ValueError):
        return True


def _rt_budget_free() -> int | None:
    """µs of the host's RT budget a new guest could get: the root's budget
    less what every group holds that is not ``machine`` itself (its children,
    and the root's other children).  ``machine``'s own figure does not count:
    the daemon re-plans it, and a stopped daemon's leftover there frees
    itself at the next grant."""
    machine = CPU_ROOT / "machine"
    try:
        total = int((CPU_ROOT / "cpu.rt_runtime_us").read_text())
        return total - _held(CPU_ROOT, skip=machine) - _held(machine)
    except (OSError, ValueError):
        return None


def _stall_wait_s(drift_watch: str) -> float:
    """How long a resyncing daemon may go without a resync: its timed
    resync's interval, the watched one while the drift watch runs."""
    interval = RESYNC_S
    if effective_watch(drift_watch, _daemon_fields()) == "on":
        interval = max(interval, float(_daemon_setting("watched_resync_interval_s", RESYNC_S)))
    return interval + 5.0


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
        ("CPU per managed thread per second above idle, µs",
         [b3_floor.judged(r) for r in rows], GOAL_US_PER_THREAD, "goal"),
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


def _daemon_setting(name: str, default: float) -> float:
    from rtagent.config import DaemonConfig

    return getattr(DaemonConfig(), name, default)


def run(quick: bool = True, drift_watch: str = "default") -> dict:
    """``drift_watch``: "default" (the daemon's own), "on", "off", or "both":
    the paused series once with the watch on and once off (side by side;
    the second without tuned, whose figures do not depend on it)."""
    if drift_watch not in WATCH_MODES:
        raise ValueError(f"drift watch mode {drift_watch!r}: one of {', '.join(WATCH_MODES)}")
    modes = ["on", "off"] if drift_watch == "both" else [drift_watch]
    for m in modes:
        effective_watch(m, _daemon_fields())  # refuse before any guest starts
    with on_housekeeping():
        t0 = time.monotonic()
        out = {"scrape": b3_scrape.run_scrape(10 if quick else 50)}
        if any(effective_watch(m, _daemon_fields()) == "on" for m in modes):
            # The extra ns a syscall pays while the watch's events are enabled,
            # before any daemon of the run traces (b3_syscalls.balance_rows).
            out["syscall_cost"] = b2_watchcost.syscall_cost(3)
        sizes = [1, 10, 30] if quick else [1, 10, 50, 100]
        # Windows as long as the full-check interval, so that each holds one
        # full check and one host-check run (their share, not luck; shorter
        # windows pooled hold 0-2 of them, as their gaps fall).
        window_s, windows = (FULL_CHECK_S, 1) if quick else (FULL_CHECK_S, 2)
        out["daemon"] = run_daemon_cost(sizes, window_s=window_s, windows=windows, profile=True,
                                        budget_wait_s=60.0 if quick else 300.0, drift_watch=modes[0])
        for m in modes[1:]:
            out[f"daemon_watch_{m}"] = run_daemon_cost(sizes, window_s=window_s, windows=windows, profile=False,
                                                       budget_wait_s=60.0 if quick else 300.0,
                                                       with_tuned=False, drift_watch=m)
        # Running guests: as many as fit beside the daemon (100 running PVM
        # guests saturate CPU 0); no profile, same windows.
        out["daemon_running"] = run_daemon_cost([1, 10] if quick else RUNNING_SIZES,
                                                window_s=window_s, windows=windows, profile=False,
                                                paused=False, budget_wait_s=60.0 if quick else 180.0,
                                                drift_watch=modes[0])
        out["elapsed_s"] = time.monotonic() - t0
    return out


GOAL_IDLE_CPU_PCT = 0.05


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


DAEMON_RUNS = (("daemon", "paused guests"), ("daemon_watch_off", "paused guests"),
               ("daemon_running", "running guests"))


def _runs(res: dict) -> list[tuple[dict, str]]:
    """(series, its label) of each daemon series measured; the label names
    the drift watch when it was set explicitly."""
    out = []
    for key, tag in DAEMON_RUNS:
        d = res.get(key)
        if d:
            mode = d.get("drift_watch", "absent")
            out.append((d, tag if mode in ("absent", "default") else f"{tag}, drift watch {mode}"))
    return out


def _per_second_mark(us: float) -> str:
    """pass/FAIL; "n/a (below idle)" when the idle daemon of the same run
    cost more than this row (a noisy machine: no pass is claimed on it)."""
    if us < 0:
        return "n/a (below idle)"
    return _mark(us <= GOAL_US_PER_THREAD)


def _per_thread_rows(r: dict, tag: str) -> list[list[str]]:
    """The per-managed-thread rows of one guest count.  The mark is on the
    per-second row: issue 14's goal was set for a resync every second, where
    a resync's cost is what a node pays each second; with the drift watch a
    resync is rarer, and per second is still what a node pays.  The
    per-resync figure is shown beside it (at a 1 s resync without the watch
    the two are the same number), and the wake-up floor says how much of the
    per-second figure the machine's wake-up cost alone explains."""
    g = f"{r['guests']} {tag}"
    ps, pt = b3_floor.judged(r), r.get("per_s_total_us", float("nan"))
    v, m = r["us_per_thread"], r.get("marginal_us_per_thread", float("nan"))
    tw = r.get("per_s_above_twin_us", float("nan"))
    twin = tw == tw  # measured (not NaN)
    base, before = ("the idle twin", f"{r['per_s_above_idle_us']:.1f}; ") if twin else ("idle", "")
    rows = [[f"CPU per managed thread per second, {g}: above {base} ({'above idle before; ' if twin else ''}total)",
             f"{ps:.1f} µs ({before}{pt:.1f})", f"≤ {GOAL_US_PER_THREAD:g} µs", _per_second_mark(ps)],
        [f"  same per resync ({r['resyncs_per_s']:.2f} resyncs/s): above idle (total)", f"{m:.1f} µs ({v:.1f})",
         "mark on the row above", ""]]
    f = r.get("wake_floor") or {}
    if f:
        rows.append([f"  wake-up floor: a bare sleeper's {f['us_per_wake']:.0f} µs/wake-up × main thread "
                     f"{f['wakes_per_s']:.2f}/s (idle {f['idle_wakes_per_s']:.2f}/s)",
                     f"{f['floor_us_per_thread_s']:.1f} µs ({f.get('floor_total_us_per_thread_s', float('nan')):.1f}); "
                     f"{100 * f['floor_share']:.0f} % of the row",
                     "reference", ""])
    return rows


def _daemon_goal_rows(d: dict, tag: str) -> list[list[str]]:
    rows = []
    for r in d.get("rows", []):
        rows += _per_thread_rows(r, tag)
    per_s = [b3_floor.judged(r) for r in d.get("rows", [])]
    if len(per_s) > 1:
        # "and flat as guests grow": every count within the goal.
        rows.append([f"  per second, judged, {' / '.join(str(r['guests']) for r in d['rows'])} {tag}: flat?",
                     " / ".join(f"{x:.1f}" for x in per_s) + " µs", f"each ≤ {GOAL_US_PER_THREAD:g} µs",
                     "n/a (below idle)" if any(x < 0 for x in per_s) else
                     _mark(all(x <= GOAL_US_PER_THREAD for x in per_s))])
    if d.get("rows"):
        last = d["rows"][-1]
        at = f"{last['guests']} {tag}" + ("" if last["guests"] == 100 else " (goal is for 100)")
        rows.append([f"daemon CPU, resync {d['resync_s']:g} s, {at}", f"{last['cpu_pct']:.2f} %",
                     f"≤ {GOAL_CPU_PCT_100:g} %", _mark(last["cpu_pct"] <= GOAL_CPU_PCT_100)])
        mem = last.get("memory_mib") or {}
        split = (f" (anon {mem['anon']:.1f}, file-backed {mem['file']:.1f}; PSS {mem['pss']:.1f})"
                 if mem else "")
        rows.append([f"daemon RSS, {at}", f"{last['rss_mib']:.1f} MiB{split}", f"≤ {GOAL_RSS_MIB:g} MiB",
                     _mark(last["rss_mib"] <= GOAL_RSS_MIB)])
    idle = d.get("idle") or {}
    if "rtagent_cpu_pct" in idle:
        parts = ""
        if "host_checks_us_per_s" in idle:
            parts = (f" (windows {idle['rtagent_cpu_pct_windows']:.3f} + host checks {idle['host_checks_ms']:.1f} ms "
                     f"a run at {idle['host_threads']} host threads every {idle['host_checks_every_s']:g} s: "
                     f"{idle['host_checks_us_per_s'] / 1e4:.3f})")
        rows.append([f"idle daemon (no realtime guest; before the {tag})", f"{idle['rtagent_cpu_pct']:.3f} %{parts}",
                     f"≤ {GOAL_IDLE_CPU_PCT:g} %", _mark(idle["rtagent_cpu_pct"] <= GOAL_IDLE_CPU_PCT)])
        off = idle.get("twin_offset_us_per_s", float("nan"))
        if off == off:
            n = (d.get("rows") or [{}])[0].get("managed_threads") or 6  # the first row's threads (one guest: 6)
            rows.append([f"  idle daemon − its idle twin, same windows ({tag}): the twin method's error",
                         f"{off:+.1f} µs/s (over {n} threads {off / n:+.1f} µs a thread)", "reference", ""])
        top = sorted((idle.get("threads") or {}).items(), key=lambda kv: -kv[1]["cpu_pct"])[:6]
        if top:
            rows.append([f"idle daemon by thread ({tag}): % / wake-ups per s",
                         ", ".join(f"{k.split(' (')[0]} {v['cpu_pct']:.3f} / {v['switches_per_s']:.1f}"
                                   for k, v in top), "", "n/a"])
    return rows


def goals_table(res: dict) -> str:
    """One row per goal of the steady-state cost, measured against it, for
    paused and for running guests."""
    rows = []
    for d, tag in _runs(res):
        rows += _daemon_goal_rows(d, tag)
    rows += b3_syscalls.balance_rows(res)
    rows += b3_scrape.goal_rows(res.get("scrape") or {})
    for d, tag in _runs(res):
        rows += _tuned_goal_rows(d, tag)
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


def _settle_cell(st: dict | None) -> str:
    """How long the row waited for the daemon to go quiet, and the last
    step's CPU; "not quiet" when the bound ran out first."""
    if not st:
        return "n/a"
    last = st["cpu_pct"][-1] if st.get("cpu_pct") else float("nan")
    return f"{st['settle_s']:.0f} ({last:.3f} %)" + ("" if st.get("quiet") else " not quiet")


def _daemon_parts(d: dict, tag: str) -> list[str]:
    parts = []
    left = sorted({x for r in [d.get("idle") or {}, *d.get("rows", [])]
                   for x in (r["tuned"] if isinstance(r.get("tuned"), dict) else {}).get("not_rolled_back", [])})
    if left:
        parts.append(f"What tuned did not roll back when stopped by PID ({tag}; put back by the benchmark):\n"
                     + "\n".join(f"  {x}" for x in left[:20]))
    rows = []
    for r in d.get("rows", []):
        rows.append([r["guests"] if not r.get("failed_changes") else f"{r['guests']} (refused changes: "
                     f"{r['failed_changes']})", r["managed_threads"], f"{r['resync_cpu_ms']:.2f}",
                     f"{r['us_per_thread']:.1f}", f"{r.get('marginal_us_per_thread', float('nan')):.1f}",
                     f"{b3_floor.judged(r):.1f}",
                     f"{b3_floor.judged(r) / GOAL_US_PER_THREAD:.1f}×",
                     f"{r['cpu_pct']:.2f}",
                     f"{r['main_cpu_pct']:.2f}", f"{r['rss_mib']:.1f}", f"{r['resyncs_per_s']:.2f}",
                     f"{r['cpu0_busy_pct']:.0f}", _settle_cell(r.get("daemon_settle"))])
    if rows:
        parts.append(format_table(
            [f"B3 {tag} (real)", "managed threads", "CPU/resync ms", "µs/thread/resync", "above idle",
             "µs/thread/s above the idle twin (or idle)", "vs 5 µs goal",
             "daemon CPU %", "main thread %", "RSS MiB", "resyncs/s", "CPU 0 busy %",
             "daemon settled (s, last CPU %)"], rows))
        last = d["rows"][-1]
        parts.append(
            f"Resync every {d['resync_s']:g} s, full check every {d.get('full_check_s', FULL_CHECK_S):g} s "
            f"(CPU per resync averages both at their share); drift watch: {d.get('drift_watch', 'default')}; "
            f"per resync: medians of {d['windows']} windows of {d['window_s']:g} s (main thread and libvirt "
            f"worker); per second: every thread of the daemon, the windows pooled, less its idle twin's in "
            f"the same windows (or, without one, the idle daemon's before the guests): the goal's row. At {last['guests']} {tag}: CPU {last['cpu_pct']:.2f} % "
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
    for d, tag in _runs(res):
        parts += _daemon_parts(d, tag)
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
                     f"host checks {cp['host_checks_cpu_ms']:.1f} ms a run.")
    ps = prof.get("py_spy")
    if ps and ps.get("top"):
        rows = [[x["func"][:100], f"{x['pct']:.0f}"] for x in ps["top"][:20]]
        parts.append(format_table(["py-spy, real daemon main thread, busy samples (inclusive)", "%"], rows))
    elif ps:
        parts.append(f"py-spy: {ps.get('error')}")
    scrape = b3_scrape.detail(res.get("scrape") or {})
    if scrape:
        parts.append(scrape)
    return "\n\n".join(parts)
