"""Where the ``/metrics`` server thread's CPU goes per GET, stage by stage.

``python -m bench.b3_scrape_stages [GETS]``: the goal's state of
:mod:`bench.b3_scrape` (100 guests × 10 realtime vCPUs, 1,000 real worker
threads, every one woken and run before each GET), the real endpoint on a
loopback port, GETs as Prometheus sends them (OpenMetrics, gzip).  Each
stage's function is wrapped, in this process only, so that the server
thread's CPU (``time.thread_time``) inside it is summed; the table gives
the mean per GET and the calls per GET.  Stages nest (the collector's
parts are inside the render, the kernel read inside the counter cache), so
the column does not add up; the last row is the thread's whole CPU per GET
by its schedstat.  The wrappers add a little of their own (≈ 1 µs a call).
"""

from __future__ import annotations

import collections
import os
import sys
import time

from . import b3_scrape as b
from .common import format_table, summary

# (module, object path, label): what is timed.
STAGES = (
    ("rtagent.monitor.httpd", "MetricsHandler.answer", "handler: the whole answer"),
    ("rtagent.monitor.httpd", "parse_request", "HTTP request parsing"),
    ("rtagent.monitor.exposition", "render_parts", "render (collect + write)"),
    ("rtagent.monitor.metrics", "_take", "copy under the store's lock"),
    ("rtagent.monitor.metrics", "RtagentCollector._derive", "report derivation"),
    ("rtagent.monitor.counters", "CounterCache.get", "counter cache (with the kernel read)"),
    ("rtagent.monitor.counters", "CounterCache._read", "kernel read of the threads"),
    ("rtagent.monitor.metrics", "RtagentCollector._daemon", "daemon families"),
    ("rtagent.monitor.metrics", "RtagentCollector._host", "host families"),
    ("rtagent.monitor.metrics", "RtagentCollector._guests", "guest families' rows"),
    ("prometheus_client.process_collector", "ProcessCollector.collect", "prometheus_client ProcessCollector"),
    ("rtagent.monitor.exposition", "FastMetric.write", "writer: row families"),
    ("rtagent.monitor.exposition", "ColumnMetric.write", "writer: column families"),
    ("rtagent.monitor.gzipparts", "PartsGzip.compress", "gzip"),
    ("rtagent.monitor.connserver", "ConnectionServer._write", "socket writes"),
    ("rtagent.monitor.connserver", "ConnectionServer._recv_all", "socket reads"),
    ("rtagent.monitor.connserver", "ConnectionServer._close", "close"),
)


def _wrap(module: str, path: str, label: str, acc: dict, calls: dict) -> bool:
    """Sum the calling thread's CPU inside ``module.path``; False if the
    code measured has no such function (an older tree)."""
    import importlib

    owner = importlib.import_module(module)
    *outer, name = path.split(".")
    for part in outer:
        owner = getattr(owner, part, None)
    fn = getattr(owner, name, None) if owner is not None else None
    if fn is None:
        return False

    def timed(*args, **kwargs):
        t = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[label] += time.thread_time_ns() - t
            calls[label] += 1

    setattr(owner, name, timed)  # module functions are looked up by name when called: patched there
    return True


def run(gets: int) -> dict:
    from prometheus_client import ProcessCollector  # noqa: F401  (imported before wrapping)

    from rtagent.monitor.gcpause import freeze_startup

    acc: dict = collections.defaultdict(int)
    calls: dict = collections.defaultdict(int)
    timed = [label for module, path, label in STAGES if _wrap(module, path, label, acc, calls)]
    freeze_startup()
    threads = b.WorkingThreads(1000)
    try:
        with b.served_goal_state(threads) as (clock, srv):
            tid = srv.server._thread.native_id
            acc.clear()
            calls.clear()
            load0, total = os.getloadavg(), []
            for _ in range(gets):
                threads.kick()
                clock.tick()
                c = b._thread_cpu_ns(tid)
                b._get(srv.port)
                total.append((b._thread_cpu_ns(tid) - c) / 1e9)
    finally:
        threads.close()
    return {"gets": gets, "load": [load0[0], os.getloadavg()[0]], "total": summary(total),
            "stages": {label: {"ms": acc[label] / gets / 1e6, "calls": calls[label] / gets} for label in timed}}


def table(res: dict) -> str:
    rows = [[label, f"{s['ms']:.3f}", f"{s['calls']:.1f}"] for label, s in res["stages"].items()]
    t = res["total"]
    rows.append(["the server thread's CPU per GET (schedstat): mean / p50 / p99",
                 f"{t['mean'] * 1e3:.2f} / {t['p50'] * 1e3:.2f} / {t['p99'] * 1e3:.2f}", ""])
    return format_table([f"stage ({res['gets']} GETs, load {res['load'][0]:.0f} → {res['load'][1]:.0f})",
                         "ms per GET (mean)", "calls per GET"], rows)


def main() -> None:
    from .common import on_housekeeping

    gets = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with on_housekeeping():
        res = run(gets)
    print(table(res))


if __name__ == "__main__":
    main()
