"""B2 — what the drift watch costs every other process: while any syscall
tracepoint is enabled, *every* syscall on the host takes the tracing slow
path.  A C loop of ``getppid`` (the cheapest syscall) on a housekeeping CPU,
timed with the drift watch's events enabled in a tracefs instance of its
own (``rtbench-watch-<pid>``, removed after) and without, alternating, a few
rounds each.  No assertions: numbers go to a table."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from .common import format_table

C_SOURCE = r"""
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    struct timespec a, b;
    long n = 2000000;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
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


def run(rounds: int = ROUNDS) -> dict:
    from rtagent.kernel.schedwatch import SchedWatch

    with tempfile.TemporaryDirectory(prefix="rtbench-watchcost-") as tmp:
        exe = _build(Path(tmp))
        off: list[float] = []
        on: list[float] = []
        for _ in range(rounds):
            off.append(_ns_per_syscall(exe))
            watch = SchedWatch(lambda _n: None, prefix="rtbench-watch-")
            watch.start()
            try:
                on.append(_ns_per_syscall(exe))
            finally:
                watch.stop()
    m_off, m_on = statistics.median(off), statistics.median(on)
    return {"cpu": int(CPU), "rounds": rounds, "off_ns": off, "on_ns": on, "off_median_ns": m_off,
            "on_median_ns": m_on, "extra_ns": m_on - m_off, "ratio": m_on / m_off, "load": os.getloadavg()}


def format(res: dict) -> str:
    rows = [["drift watch off (no syscall tracepoint)", f"{res['off_median_ns']:.1f}",
             " ".join(f"{v:.0f}" for v in res["off_ns"])],
            ["drift watch's events enabled", f"{res['on_median_ns']:.1f}", " ".join(f"{v:.0f}" for v in res["on_ns"])]]
    table = format_table([f"B2e getppid() on CPU {res['cpu']}, every process on the host", "median ns/syscall",
                          f"rounds ({res['rounds']})"], rows)
    return (table + f"\n\nWith the watch on every syscall on the host costs {res['extra_ns']:+.1f} ns "
            f"(× {res['ratio']:.2f}); load {res['load'][0]:.2f}.")


if __name__ == "__main__":
    print(format(run()))
