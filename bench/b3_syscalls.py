"""B3's other side of the drift watch: what every *other* process pays for it.

While any syscall tracepoint is enabled, every syscall on the host takes the
kernel's tracing slow path (docs/design.md, "The drift watch").  B3 measures
the daemon's own CPU with the watch on and off; this module measures, in the
same run, the two numbers that turn the watch's price into a share of a
core on the host as it is during each row:

- the extra nanoseconds a syscall costs with the watch's events enabled
  (:func:`bench.b2_watchcost.syscall_cost`: a C ``getppid`` loop, alternating
  with and without, once per run);
- how many syscalls the host makes a second during a row (:func:`host_rate`:
  ``raw_syscalls:sys_enter`` counted for a few seconds in a tracefs instance
  of the bench's own, ``rtbench-sysrate-<pid>``, removed after).  Counting
  enables a tracepoint too, so it runs after a row's windows, never in them.

The count is what the kernel says it wrote: per CPU, ``entries`` (still in
the buffer) plus ``overrun`` (overwritten: the buffer is a page or so and
nobody reads it).  No assertions: numbers go to the B3 table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

__all__ = ["host_rate", "written_events", "balance_rows"]

PREFIX = "rtbench-sysrate-"
EVENT = ("raw_syscalls", "sys_enter")
COUNT_S = 5.0


def written_events(stats_text: str) -> int:
    """Events a CPU's buffer took (its ``per_cpu/cpuN/stats``): those still
    in it plus those overwritten."""
    fields = dict(line.split(":", 1) for line in stats_text.splitlines() if ":" in line)
    return int(fields["entries"]) + int(fields["overrun"])


def host_rate(seconds: float = COUNT_S, during: Callable[[], object] | None = None) -> dict:
    """Syscalls a second on the whole host over ``seconds`` (every CPU).
    ``during``: work run inside the window first (a known number of calls)."""
    from rtagent.kernel import tracefs

    root = tracefs.find_tracefs()
    if root is None:
        return {"error": "no tracefs"}
    cpus = sorted(int(n[3:]) for n in os.listdir(os.path.join(root, "per_cpu")) if n[3:].isdigit())
    inst = tracefs.Instance.create(root, f"{PREFIX}{os.getpid()}", cpus, [EVENT], buffer_kb=4)

    def written() -> int:
        total = 0
        for c in cpus:
            with open(os.path.join(inst.path, "per_cpu", f"cpu{c}", "stats")) as fh:
                total += written_events(fh.read())
        return total

    try:
        base, t0 = written(), time.monotonic()  # the instance traces from its creation
        if during is not None:
            during()
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        total, wall = written() - base, time.monotonic() - t0
    finally:
        inst.remove()
    return {"per_s": total / wall, "seconds": wall, "load": os.getloadavg()}


def balance_rows(res: dict) -> list[list[str]]:
    """One row per guest count: the CPU the watch saves the daemon (watch off
    − on, same run, same guests) against what the host's syscalls pay for it
    (their rate in the watch-on row × the extra ns a syscall).  A reference
    for the default (docs/design.md), no goal."""
    cost = res.get("syscall_cost") or {}
    extra = cost.get("extra_ns")
    on, off = res.get("daemon") or {}, res.get("daemon_watch_off") or {}
    if extra is None or on.get("drift_watch") != "on" or not off:  # the series store effective_watch()'s answer
        return []
    by_size = {r["guests"]: r for r in off.get("rows", [])}
    rows = []
    for r in on.get("rows", []):
        o, rate = by_size.get(r["guests"]), (r.get("host_syscalls") or {}).get("per_s")
        if o is None or rate is None:
            continue
        saved, tax = o["cpu_pct"] - r["cpu_pct"], 100 * rate * extra / 1e9
        rows.append([f"drift watch's balance, {r['guests']} paused guests: daemon CPU saved (off − on) / "
                     f"host syscalls' tax ({rate:,.0f}/s × {extra:.0f} ns)", f"{saved:.3f} % / {tax:.3f} %",
                     "reference", "saves more" if saved > tax else "costs more"])
    for r in (res.get("daemon_running") or {}).get("rows", []):
        rate = (r.get("host_syscalls") or {}).get("per_s")
        if rate is not None:
            rows.append([f"drift watch's host syscalls' tax, {r['guests']} running guests ({rate:,.0f}/s × "
                         f"{extra:.0f} ns)", f"{100 * rate * extra / 1e9:.3f} %", "reference", ""])
    return rows
