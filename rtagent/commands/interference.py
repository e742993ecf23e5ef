"""``rtagent interference``: sample who runs on the realtime CPUs for N
seconds, without a daemon.  Changes nothing but a tracefs instance of its
own (``rtagent-oneshot-<pid>``), removed before it exits."""

from __future__ import annotations

import json
import os
import time

from ..config import load_config
from ..cpulist import CpuListError, format_cpulist, parse_cpulist
from ..errors import ConfigError, RtagentError
from ..kernel import Kernel
from ..kernel.tracefs import TracefsError
from ..monitor.interference_procscan import scan
from ..monitor.interference_sampler import InterferenceSampler


def run(args) -> int:
    config = load_config(args.config)
    part = config.partition
    assert part is not None
    cpus = part.realtime
    if args.cpus:
        try:
            cpus = parse_cpulist(args.cpus)
        except CpuListError as err:
            raise ConfigError("--cpus", args.cpus, f"{err.reason} at {err.token!r}") from None
    if not cpus:
        raise RtagentError("no realtime CPUs are configured: set host.realtime_cpus or pass --cpus")
    if not 0 < args.seconds <= 3600:
        raise ConfigError("--seconds", args.seconds, "must be in (0, 3600]")
    if not 1 <= args.top <= 1000:
        raise ConfigError("--top", args.top, "must be in 1..1000")
    housekeeping = (part.online - cpus) or part.housekeeping
    # The sampler must never run on the CPUs it measures.
    kernel = Kernel()
    kernel.tasks.set_affinity(0, frozenset(housekeeping))
    owners, guests = scan(frozenset(cpus), kernel)
    sampler = InterferenceSampler(cpus, instance=f"rtagent-oneshot-{os.getpid()}", owners=lambda: owners,
                                  guests=lambda: guests, top_n=100, window_s=args.seconds + 60,
                                  buffer_kb=config.interference.buffer_kb)
    try:
        sampler.open()
        deadline = time.monotonic() + args.seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(config.interference.poll_interval_s, left))
            sampler.poll()
        snap = sampler.snapshot(top=args.top)
    except TracefsError as err:
        raise RtagentError(f"interference: {err}") from None
    finally:
        sampler.stop()
    return _report(args, snap, cpus, owners)


def _report(args, snap, cpus, owners) -> int:
    cpus_out = []
    for c in snap.cpus:
        view = c.window
        row = {**view.to_json(), "lost_events": c.lost, "inferred_switches": c.inferred,
               "owners": [{"tid": tid, "owner": label[0]} for tid, label in sorted(owners.get(c.cpu, {}).items())]}
        cpus_out.append(row)
    if args.json:
        print(json.dumps({"seconds": args.seconds, "cpus": cpus_out}, indent=2))
        return 0
    print(f"interference on CPU {format_cpulist(cpus)} over {args.seconds:g}s (tracefs clock {snap.clock})")
    for row in cpus_out:
        owners = [f"{o['owner']}[{o['tid']}]" for o in row["owners"]]
        owner = ", ".join(owners[:4]) + (f" and {len(owners) - 4} more" if len(owners) > 4 else "") or "none"
        lost = f", {row['lost_events']} events LOST" if row["lost_events"] else ""
        print(f"CPU {row['cpu']}: {row['share'] * 100:.3f}% foreign ({row['foreign_s'] * 1000:.3f} ms), "
              f"owner {owner}{lost}")
        for cul in row["culprits"]:
            print(f"  {cul['kind']:<8} {cul['source']:<24} {cul['seconds'] * 1000:10.3f} ms  {cul['count']:>7}x")
    return 0
