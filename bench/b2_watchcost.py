"""B2 — what the drift watch costs every other process: while any syscall
tracepoint is enabled, *every* syscall on the host takes the tracing slow
path.  A C loop of ``getppid`` (the cheapest syscall) on a housekeeping CPU,
timed (its own CPU time, so a loaded host's preemption is not counted)
with the drift watch's events enabled in a tracefs instance of its
own (``rtbench-watch-<pid>``, removed after) and without, alternating, a few
rounds each.  And what the watch saves the daemon: its CPU (schedstat of
every thread) and wake-ups (voluntary context switches of every thread)
per second with one paused guest (``rtbench-b2w-<pid>-…``), resync 1 s,
watch off vs on (watched resync 10 s).  No assertions: numbers go to a table."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .common import Guests, format_table, process_cpu_ns, qemu_pid, start_daemon, vcpu_tid, wait_for, fifo_on

C_SOURCE = r"""
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    struct timespec a, b;
    long n = 2000000;
    /* The loop's own CPU time, not wall time: a shared, loaded host
       preempts it, and that is not the syscall's cost. */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""
CPU = "0"  # housekeeping: CPU 1 is realtime
ROUNDS = 5


def _build(workdir: Path) -> Path:
    src, exe = workdir / "getppid_loop.c", workdir / "getppid_loop"
    src.write_text(C_SOURCE)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def _ns_per_syscall(exe: Path) -> float:
    out = subprocess.run(["taskset", "-c", CPU, str(exe)], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def _switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid``: its wake-ups."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration):
            pass
    return total


def _per_thread(pid: int) -> dict[str, tuple[int, int]]:
    """comm -> (CPU ns, voluntary switches), summed over threads of that name."""
    out: dict[str, tuple[int, int]] = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{t}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            with open(f"{base}/schedstat") as f:
                cpu = int(f.read().split()[0])
            with open(f"{base}/status") as f:
                sw = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration):
            continue
        c0, s0 = out.get(comm, (0, 0))
        out[comm] = (c0 + cpu, s0 + sw)
    return out


def daemon_cost(window_s: float = 30.0, watched_s: float = 10.0) -> dict:
    """The daemon's CPU and wake-ups per second, one paused guest, watch off / on."""
    import libvirt

    out = {}
    for mode in ("off", "on"):
        prefix = f"rtbench-b2w-{os.getpid()}-{mode}-"
        guests, daemon = Guests(), None
        extra = f'drift_watch = "{mode}"\nwatched_resync_interval_s = {watched_s}\n'
        try:
            daemon = start_daemon(prefix, resync=1.0, rt_budget_us=10_000, daemon_extra=extra)
            guests.start(prefix + "0", flags=libvirt.VIR_DOMAIN_START_PAUSED)
            pid = wait_for(lambda: qemu_pid(prefix + "0"), 30)  # noqa: B023
            tid = wait_for(lambda: vcpu_tid(pid, 1), 30)  # noqa: B023
            wait_for(lambda: fifo_on(tid, {1}), 30)  # noqa: B023
            time.sleep(5.0)  # the start's settle looks are over
            dpid = daemon.proc.pid
            p0 = _per_thread(dpid)
            c0, s0, r0, t0 = process_cpu_ns(dpid), _switches(dpid), daemon.status()["daemon"]["resyncs"], time.monotonic()
            time.sleep(window_s)
            c1, s1, t1 = process_cpu_ns(dpid), _switches(dpid), time.monotonic()
            p1 = _per_thread(dpid)
            r1 = daemon.status()["daemon"]["resyncs"]
            out[mode] = {"cpu_us_per_s": (c1 - c0) / 1e3 / (t1 - t0), "wakeups_per_s": (s1 - s0) / (t1 - t0),
                         "resyncs_per_s": (r1 - r0) / (t1 - t0), "window_s": t1 - t0,
                         "threads": {name: ((cpu - p0.get(name, (0, 0))[0]) / 1e3 / (t1 - t0),
                                            (sw - p0.get(name, (0, 0))[1]) / (t1 - t0))
                                     for name, (cpu, sw) in p1.items()},
                         "drift_watch": daemon.status()["daemon"].get("drift_watch")}
        finally:
            guests.close()
            if daemon is not None:
                daemon.stop()
    out["load"] = os.getloadavg()
    return out


def run(rounds: int = ROUNDS) -> dict:
    return {"syscall": syscall_cost(rounds), "daemon": daemon_cost()}


def other_syscall_tracers() -> list[str]:
    """tracefs instances (not this process's) with a syscall event enabled:
    each one's probe runs on every syscall too, "off" included."""
    from rtagent.kernel.tracefs import find_tracefs

    found, mine = find_tracefs(), f"rtbench-watch-{os.getpid()}"
    if found is None:
        return []
    root = Path(found)
    out = []
    for inst in [root, *sorted((root / "instances").iterdir())]:
        try:
            text = (inst / "set_event").read_text()
        except OSError:
            continue
        if inst.name != mine and "syscalls:" in text:
            out.append("(top level)" if inst == root else inst.name)
    return out


def syscall_cost(rounds: int = ROUNDS) -> dict:
    from rtagent.kernel.schedwatch import SchedWatch

    with tempfile.TemporaryDirectory(prefix="rtbench-watchcost-") as tmp:
        exe = _build(Path(tmp))
        off: list[float] = []
        on: list[float] = []
        others = set(other_syscall_tracers())
        for _ in range(rounds):
            off.append(_ns_per_syscall(exe))
            watch = SchedWatch(lambda _n: None, prefix="rtbench-watch-")
            watch.start()
            try:
                on.append(_ns_per_syscall(exe))
            finally:
                watch.stop()
            others |= set(other_syscall_tracers())
    m_off, m_on = statistics.median(off), statistics.median(on)
    return {"cpu": int(CPU), "rounds": rounds, "off_ns": off, "on_ns": on, "off_median_ns": m_off,
            "on_median_ns": m_on, "extra_ns": m_on - m_off, "ratio": m_on / m_off, "load": os.getloadavg(),
            "other_tracers": sorted(others)}


def format(res: dict) -> str:
    return format_syscall(res["syscall"]) + "\n\n" + format_daemon(res["daemon"])


def format_daemon(res: dict) -> str:
    rows = [[f"drift watch {mode}" + (" (status/json interval " + str((r.get("drift_watch") or {}).get("interval_s"))
                                      + " s)"), f"{r['cpu_us_per_s']:.0f}", f"{r['wakeups_per_s']:.2f}",
             f"{r['resyncs_per_s']:.2f}", f"{r['window_s']:.0f}"]
            for mode, r in res.items() if mode in ("off", "on")]
    return format_table(["B2f daemon, 1 paused guest, resync 1 s", "CPU µs/s", "wake-ups/s", "resyncs/s",
                         "window s"], rows) + f"\n\nload {res['load'][0]:.2f}.  Per thread (CPU µs/s, wake-ups/s): " + \
        "; ".join(f"watch {mode}: " + ", ".join(f"{n} {c:.0f}/{w:.2f}" for n, (c, w) in sorted(
            r["threads"].items(), key=lambda kv: -kv[1][0]) if c >= 1) for mode, r in res.items() if mode in ("off", "on"))


def format_syscall(res: dict) -> str:
    rows = [["drift watch off (no syscall tracepoint)", f"{res['off_median_ns']:.1f}",
             " ".join(f"{v:.0f}" for v in res["off_ns"])],
            ["drift watch's events enabled", f"{res['on_median_ns']:.1f}", " ".join(f"{v:.0f}" for v in res["on_ns"])]]
    table = format_table([f"B2f getppid() on CPU {res['cpu']}, every process on the host", "median ns/syscall",
                          f"rounds ({res['rounds']})"], rows)
    return (table + f"\n\nWith the watch on every syscall on the host costs {res['extra_ns']:+.1f} ns "
            f"(× {res['ratio']:.2f}); load {res['load'][0]:.2f}; other instances tracing syscalls meanwhile "
            f"(their probes run in both columns): {', '.join(res.get('other_tracers') or []) or 'none'}.")


if __name__ == "__main__":
    print(format(run()))
