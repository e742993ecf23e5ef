"""Side by side: the ``/metrics`` server thread's CPU per GET of two checkouts.

``python /path/to/bench/b3_scrape_ab.py TREE REPS OUT.json`` runs the goal's
endpoint measurement of :mod:`bench.b3_scrape` (100 guests × 10 realtime
vCPUs, every thread ran before each GET, OpenMetrics + gzip as Prometheus
asks) with ``TREE``'s ``rtagent`` and ``bench`` — old main or new code — and
writes each GET's server-thread CPU with the load before and after.  Run it
alternately for the two trees (A B B A) in one session; the ratio of the two
is the change, the load beside it says how noisy the machine was.

What a daemon does at start is done here too: if the tree has
``rtagent.monitor.gcpause`` (the new code), its start-up objects are frozen
before the guests' state exists, as the daemon's services do.

The worker threads that stand for the vCPUs are this checkout's
(``WorkingThreads``), whichever tree is measured, so both sides of a
comparison get the same harness; everything else (the state, the endpoint)
is the tree's.  Each GET also records the server thread's wait for a CPU
(schedstat field 2) and the wall time.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path


def _own_harness():
    """This checkout's ``WorkingThreads`` and schedstat reader, imported
    before the tree's modules and then forgotten by name (they keep their
    own globals)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    own = importlib.import_module("bench.b3_scrape")
    for name in [n for n in sys.modules if n.split(".")[0] in ("bench", "rtagent")]:
        del sys.modules[name]
    sys.path.pop(0)
    return own.WorkingThreads, own._thread_sched_ns, own.wait_asleep


def _switches(tid: int) -> tuple[int, int]:
    """The thread's (involuntary, voluntary) context switches so far: its CPU
    time grows with the first (a switch and cold caches on this PVM machine);
    the second are its waits (epoll, the GIL, locks), each a wake-up."""
    out = {}
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.endswith("ctxt_switches:", 0, line.find(":") + 1):
                out[line.split(":")[0]] = int(line.split()[1])
    return out.get("nonvoluntary_ctxt_switches", 0), out.get("voluntary_ctxt_switches", 0)


def main() -> None:
    tree, reps, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # Experiments: extra settling time after the threads ran; the server thread's nice value.
    settle_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    nice = int(sys.argv[5]) if len(sys.argv) > 5 else None
    workers, _sched, wait_asleep = _own_harness()
    sys.path.insert(0, tree)
    b = importlib.import_module("bench.b3_scrape")
    import rtagent
    from rtagent.config import MetricsConfig

    if not rtagent.__file__.startswith(os.path.abspath(tree)):
        raise SystemExit(f"rtagent imported from {rtagent.__file__}, not from {tree}")
    from rtagent.monitor.fdlimit import COUNTER_FDS
    from rtagent.monitor.metrics import serve

    try:
        from rtagent.monitor import gcpause
    except ImportError:
        gcpause = None
    frozen = gcpause.freeze_startup() if gcpause is not None else 0
    os.sched_setaffinity(0, {0})  # the benchmark's housekeeping CPU, as bench.common.on_housekeeping
    threads = workers(1000)
    try:
        store = b.synthetic_store(100, 10, threads.tids)
        clock = b.ScrapeClock()
        cache, _ = b._cache(clock, COUNTER_FDS)
        srv = serve(store, MetricsConfig(listen="127.0.0.1:0"), counters=cache, reuse_s=0.0)
        tid = srv.server._thread.native_id
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        for _ in range(3):
            b._get(srv.port)
        load0, cpu, preempted, waits, queued, wall = os.getloadavg(), [], [], [], [], []
        t0 = time.time()
        for _ in range(reps):
            threads.kick()
            time.sleep(settle_s)
            clock.tick()
            wait_asleep(tid)
            p, (c, q) = _switches(tid), _sched(tid)
            w = time.perf_counter()
            b._get(srv.port)
            wall.append((time.perf_counter() - w) * 1e3)
            c1, q1 = _sched(tid)
            cpu.append((c1 - c) / 1e6)
            queued.append((q1 - q) / 1e6)
            p1 = _switches(tid)
            preempted.append(p1[0] - p[0])
            waits.append(p1[1] - p[1])
        srv.close()
    finally:
        threads.close()
    with open(out_path, "w") as f:
        json.dump({"tree": tree, "reps": reps, "frozen": frozen, "settle_s": settle_s, "nice": nice, "start": t0, "end": time.time(),
                   "load_before": load0, "load_after": os.getloadavg(), "server_cpu_ms": cpu,
                   "server_preemptions": preempted, "server_waits": waits, "server_queued_ms": queued,
                   "wall_ms": wall}, f)


if __name__ == "__main__":
    main()
