"""B3's per-second rows: what a node pays per managed thread, and the
machine's wake-up floor beside it.

A resync's cost per managed thread was the issue's measure while the daemon
resynced every second; with the drift watch (events instead of a timed
steady resync) a resync is rarer, and the figure that says what a node pays
is CPU per managed thread per *second*.  At a 1 s resync without the watch
the two are the same number.

On this PVM test machine a bare Python thread that wakes from a timed wait
costs ≈ 120 µs of CPU per wake-up (schedstat), whatever it does once awake.
So :func:`run_sleeper` runs such a thread — nothing but
``threading.Event().wait(period)`` — in a process of its own beside the
daemon, in the same window, at the wake-up rate the daemon's main thread
had, and the table shows how much of the daemon's cost is that floor.

The baseline: an idle daemon measured before the guests start is minutes
away from the row's windows, and the machine's wake-up cost moves by a
third in that time; at one guest (6 managed threads) that drift alone is
more than the goal.  So B3 runs an idle *twin* (same tree, same config, a
guest selector that matches nothing) beside the daemon for the whole run,
reads both at the same instants, and judges each row above the twin
(:func:`per_second_above_twin`); in the idle windows, where the truth is
zero, the same difference is the method's error (:func:`twin_offset`).

Pure functions take the window dicts of :mod:`bench.b3_cost`; unit-tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["per_second_above_idle", "per_second_above_twin", "twin_offset", "judged", "per_second_total", "floor_row",
           "run_sleeper", "Sleeper", "SLEEPER"]

# A bare sleeper: no import beyond the interpreter's own, its CPU from its
# thread's schedstat (ns) and its wake-ups from its voluntary context
# switches, on the housekeeping CPU like the daemon.
SLEEPER = r"""
import json, os, sys, threading, time
os.sched_setaffinity(0, {int(c) for c in sys.argv[3].split(",")})
period, seconds = float(sys.argv[1]), float(sys.argv[2])
path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
def st():
    with open(path) as f:
        a = int(f.read().split()[0])
    with open(path[:-len("schedstat")] + "status") as f:
        c = next(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt_switches:"))
    return a, c
ev = threading.Event()
ev.wait(period)
(a0, c0), t0, n = st(), time.monotonic(), 0
while time.monotonic() - t0 < seconds:
    ev.wait(period)
    n += 1
(a1, c1), t1 = st(), time.monotonic()
print(json.dumps({"wakes": n, "cpu_ns": a1 - a0, "switches": c1 - c0, "wall_s": t1 - t0}))
"""


class Sleeper:
    """The bare sleeper, started before a window and read after it."""

    def __init__(self, wakes_per_s: float, seconds: float, cpus: str = "0"):
        self.period_s = 1.0 / max(wakes_per_s, 0.1)
        self.seconds = seconds
        # "-S -I": no site packages, no user paths: the interpreter only.
        self._proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", SLEEPER, f"{self.period_s:.6f}",
                                       f"{seconds:.3f}", cpus], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)

    def result(self) -> dict:
        """{"wakes", "cpu_ns", "switches", "wall_s", "period_s", "us_per_wake"} or {"error"}."""
        try:
            out, err = self._proc.communicate(timeout=self.seconds + 2 * self.period_s + 30)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # our own child, by its handle
            self._proc.communicate()
            return {"error": "sleeper did not finish"}
        if self._proc.returncode != 0:
            return {"error": err.strip()[-300:]}
        r = json.loads(out)
        r["period_s"] = self.period_s
        r["us_per_wake"] = r["cpu_ns"] / 1e3 / r["wakes"] if r["wakes"] else float("nan")
        return r


def run_sleeper(wakes_per_s: float, seconds: float) -> dict:
    """A bare sleeper for ``seconds`` at ``wakes_per_s`` (blocking)."""
    return Sleeper(wakes_per_s, seconds).result()


def _pooled(samples: Sequence[dict], key: str) -> float:
    """CPU seconds of ``key`` per wall second over all windows together: a
    full check (every 30 s) lands in one window of several, so a median of
    windows would drop it; the pooled rate keeps it at its share."""
    wall = sum(s["wall_s"] for s in samples)
    return sum(s[key] for s in samples) / wall if wall > 0 else float("nan")


def per_second_total(samples: Sequence[dict], threads: int) -> float:
    """µs of the daemon's CPU (every thread) per managed thread per second."""
    if not samples or not threads:
        return float("nan")
    return 1e6 * _pooled(samples, "proc_cpu_s") / threads


def per_second_above_idle(samples: Sequence[dict], idle_samples: Sequence[dict], threads: int) -> float:
    """µs per managed thread per second of the daemon's CPU (every thread)
    above the idle daemon's in the same run: what managing the guests costs
    a node.  The goal row of issue 14 is judged on this one."""
    if not samples or not idle_samples or not threads:
        return float("nan")
    return 1e6 * (_pooled(samples, "proc_cpu_s") - _pooled(idle_samples, "proc_cpu_s")) / threads


def per_second_above_twin(samples: Sequence[dict], threads: int) -> float:
    """µs per managed thread per second of the daemon's CPU above its idle
    twin's in the same windows: a second daemon of the same tree and config
    whose guest selector matches none of the guests, read at the same
    instants (bench/b3_cost.py: ``twin_proc_cpu_s``).  Both pay the same
    machine: the same wake-up cost (a bare sleeper's moved 155–249 µs a
    wake-up between windows a minute apart here), the same libvirt events,
    so their difference is what managing the guests costs, where a baseline
    taken minutes earlier carries the machine's drift in between — at one
    guest (6 threads) more than the goal itself.  NaN unless every window
    has the twin's reading."""
    if not samples or not threads or any("twin_proc_cpu_s" not in s for s in samples):
        return float("nan")
    return 1e6 * (_pooled(samples, "proc_cpu_s") - _pooled(samples, "twin_proc_cpu_s")) / threads


def twin_offset(idle_samples: Sequence[dict]) -> float:
    """µs per second the idle daemon cost above its idle twin in the same
    windows, both with nothing to manage: what the method reads where the
    truth is zero (its error, with the sign it has).  NaN without the twin."""
    if not idle_samples or any("twin_proc_cpu_s" not in s for s in idle_samples):
        return float("nan")
    return 1e6 * (_pooled(idle_samples, "proc_cpu_s") - _pooled(idle_samples, "twin_proc_cpu_s"))


def judged(row: dict) -> float:
    """The per-second figure a row's goal is judged on: above the idle twin
    when the row has it, else above the idle daemon measured before the
    guests (a tree or a run without the twin)."""
    twin = row.get("per_s_above_twin_us", float("nan"))
    return twin if twin == twin else row.get("per_s_above_idle_us", float("nan"))


def wakes_per_s(samples: Sequence[dict]) -> float:
    """The daemon's main thread's wake-ups (voluntary context switches) per second, pooled."""
    wall = sum(s["wall_s"] for s in samples)
    n = sum(s.get("main_switches", 0) for s in samples)
    return n / wall if wall > 0 else float("nan")


def floor_row(samples: Sequence[dict], idle_samples: Sequence[dict], threads: int) -> dict:
    """The wake-up floor of a row: the bare sleepers' CPU per wake-up
    (median over the windows they ran in), times the main thread's wake-ups
    per second, above idle and per managed thread — the part of
    :func:`per_second_above_idle` that the machine's wake-up cost alone
    would explain."""
    per_wake = sorted(s["sleeper"]["us_per_wake"] for s in samples
                      if "us_per_wake" in s.get("sleeper", {}) and s["sleeper"]["wakes"])
    if not per_wake or not threads:
        return {}
    us_per_wake = per_wake[len(per_wake) // 2]
    rate, idle_rate = wakes_per_s(samples), wakes_per_s(idle_samples) if idle_samples else 0.0
    floor_above = us_per_wake * (rate - idle_rate) / threads
    above = per_second_above_idle(samples, idle_samples, threads)
    return {"us_per_wake": us_per_wake, "wakes_per_s": rate, "idle_wakes_per_s": idle_rate,
            "floor_us_per_thread_s": floor_above,
            # Not above idle: what the main thread's wake-ups alone cost, beside per_second_total.
            "floor_total_us_per_thread_s": us_per_wake * rate / threads,
            "floor_share": floor_above / above if above and above > 0 else float("nan")}
