"""B3, accounting rows: what the interference accounting costs, on vs off.

Two costs, measured with the same daemon configuration (CPU 1 realtime, no
guests of ours: a guest adds trace events only when something runs on CPU 1,
which the load below does at a known rate):

* the daemon's own CPU (% of a core, CPU 0) and RSS, accounting off vs on,
  while a context-switch load on CPU 1 (``stress-ng --switch`` with
  ``--switch-freq``) produces a known event rate for the reader to decode;
* the realtime CPU's cost: ``stress-ng --switch`` flat out on CPU 1, which
  reports ns per context switch, without vs with the accounting's tracefs
  instance (the same sampler the daemon runs, reading from CPU 0 in this
  process), alternating — the difference is what writing the trace events
  costs each switch there.

Off and on are interleaved (off, on, off, on, …) so drift on the shared
machine hits both.  ``python -m bench.b3_interference [--full]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from rtagent.monitor.interference_sampler import READER_THREAD_NAME as READER

from .common import format_table, median, process_cpu_ns, rss_bytes, schedstat, start_daemon, thread_names

RT_CPU = "1"
RESYNC_S = 1.0


def _prefix() -> str:
    return f"rtbench-b3i-{os.getpid()}-"


def _stress(seconds: float, freq: int | None = None) -> subprocess.Popen | None:
    """The context-switch load on CPU 1; ``freq`` 0: none (the idle row —
    what the shared machine alone produces there)."""
    if freq == 0:
        return None
    argv = ["stress-ng", "--switch", "1", "--taskset", RT_CPU, "-t", f"{seconds:g}s", "--metrics-brief"]
    if freq:
        argv += ["--switch-freq", str(freq)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ns_per_switch(out: str) -> float | None:
    """CPU ns per bogo op (a round trip: two context switches), from the
    "bogo ops/s (usr+sys time)" column: CPU time, not wall time, so other
    work sharing CPU 1 on this machine does not inflate it (the wall-clock
    "nanosecs per context switch" line does)."""
    m = re.search(r"metrc:.*\]\s+switch\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s*$", out, re.M)
    return 1e9 / float(m[1]) if m and float(m[1]) > 0 else None


def _accounted(daemon) -> tuple[int, int]:
    """(events accounted over the daemon's status window, events lost so far) on CPU 1."""
    for c in daemon.status().get("interference", {}).get("cpus", []):
        if c.get("cpu") == int(RT_CPU):
            return c.get("events", 0), c.get("lost_events", 0)
    return 0, 0


def _thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU ns per thread name (comm) of ``pid``: the reader thread names
    itself ``rtagent-itf``."""
    out: dict[str, int] = {}
    for tid, comm in thread_names(pid).items():
        st = schedstat(pid, tid)
        if st:
            out[comm] = out.get(comm, 0) + st[0]
    return out


def _daemon_window(daemon, seconds: float, freq: int) -> dict:
    load = _stress(seconds + 2, freq)
    try:
        time.sleep(1.0)
        ev0, lost0 = _accounted(daemon)
        c0, th0, t0 = process_cpu_ns(daemon.pid), _thread_cpu_ns(daemon.pid), time.monotonic()
        time.sleep(seconds)
        c1, th1, t1 = process_cpu_ns(daemon.pid), _thread_cpu_ns(daemon.pid), time.monotonic()
        events, lost1 = _accounted(daemon)
    finally:
        if load is not None:
            load.wait(timeout=seconds + 30)
    reader = th1.get(READER, 0) - th0.get(READER, 0)
    return {"cpu_pct": 100.0 * (c1 - c0) / 1e9 / (t1 - t0), "rss_mib": rss_bytes(daemon.pid) / 2**20,
            "reader_cpu_pct": 100.0 * reader / 1e9 / (t1 - t0),
            "lost_per_s": (lost1 - lost0) / (t1 - t0), "events_in_window": events,
            "events_per_s": (events - ev0) / (t1 - t0),
            "load": os.getloadavg()[0]}


def _switch_cost(seconds: float) -> float | None:
    proc = _stress(seconds)
    out, _ = proc.communicate(timeout=seconds + 60)
    return _ns_per_switch(out)


def _switch_costs(reps: int, seconds: float) -> dict[str, list[float]]:
    from rtagent.monitor.interference_sampler import InterferenceSampler

    os.sched_setaffinity(0, {0})
    out: dict[str, list[float]] = {"none": [], "on": []}
    for _ in range(reps):
        ns = _switch_cost(seconds)
        if ns:
            out["none"].append(ns)
        s = InterferenceSampler([int(RT_CPU)], instance=f"{_prefix()}sw", housekeeping=[0])
        s.start()
        try:
            ns = _switch_cost(seconds)
            if ns:
                out["on"].append(ns)
        finally:
            s.stop()
    return out


def run(quick: bool = True) -> dict:
    reps = 3 if quick else 6
    window = 5.0 if quick else 15.0
    freqs = (0, 1000, 10000)
    rows: dict[str, dict] = {"off": {}, "on": {}}
    events: list[dict] = []
    prefix = _prefix()
    for _ in range(reps):
        for mode in ("off", "on"):
            d = start_daemon(prefix, resync=RESYNC_S, interference=(mode == "on"))
            try:
                for f in freqs:
                    rows[mode].setdefault(f, []).append(_daemon_window(d, window, f))
                if mode == "on":
                    st = d.status().get("interference", {})
                    events.append({"running": st.get("running"), "lost": [c.get("lost_events") for c in st.get("cpus", [])]})
            finally:
                d.stop()
    switch = _switch_costs(reps * 2, window)
    out = {"reps": reps, "window_s": window, "freqs": list(freqs), "switch_ns": switch, "accounting": events}
    for mode in rows:
        out[mode] = {str(f): {"cpu_pct": median([w["cpu_pct"] for w in ws]), "cpu_pct_all": [w["cpu_pct"] for w in ws],
                              "rss_mib": median([w["rss_mib"] for w in ws]),
                              "reader_cpu_pct": median([w["reader_cpu_pct"] for w in ws]),
                              "events_per_s": median([w["events_per_s"] for w in ws]),
                              "load": median([w["load"] for w in ws]),
                              "lost_per_s": median([w["lost_per_s"] for w in ws]),
                              "events_in_window": median([w["events_in_window"] for w in ws])}
                     for f, ws in rows[mode].items()}
    if switch["none"] and switch["on"]:
        out["switch_cost_ns"] = median(switch["on"]) - median(switch["none"])
    return out


def format(res: dict) -> str:
    rows = []
    for f in res["freqs"]:
        off, on = res["off"][str(f)], res["on"][str(f)]
        load = "nothing (the shared machine alone)" if f == 0 else f"stress-ng --switch --switch-freq {f}"
        rows.append([f"{load} on CPU 1", f"{on.get('events_per_s', 0):.0f}", f"{off['cpu_pct']:.2f} %",
                     f"{on['cpu_pct']:.2f} %", f"{on['cpu_pct'] - off['cpu_pct']:+.2f} pp",
                     f"{on.get('reader_cpu_pct', 0):.2f} %", f"{on['lost_per_s']:.0f}",
                     f"{off['rss_mib']:.1f} / {on['rss_mib']:.1f}", f"{on.get('load', 0):.1f}",
                     "≤ 2 % of a core, 0 lost"])
    table = format_table(["load", "interference events/s (on)", "daemon CPU, accounting off", "on", "difference",
                          "of which the reader thread", "events lost/s (on)", "RSS MiB off / on", "loadavg", "goal"],
                         rows, title="B3 accounting: the daemon's cost")
    sw = res["switch_ns"]
    if sw["none"] and sw["on"]:
        table += "\n\n" + format_table(
            ["stress-ng --switch on CPU 1", "no accounting", "accounting on", "cost per switch", "goal"],
            [["CPU ns per round trip (2 switches), median", f"{median(sw['none']):.0f}", f"{median(sw['on']):.0f}",
              f"{res['switch_cost_ns'] / 2:+.0f} ns per switch", "< 10 % of a switch"]],
            title="B3 accounting: the realtime CPU's cost")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.b3_interference")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    res = run(quick=not args.full)
    print(format(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
