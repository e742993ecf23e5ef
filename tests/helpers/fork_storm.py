#!/usr/bin/env python3
"""A bounded storm of short-lived processes and threads, to flood the
kernel's proc connector (every fork, clone and exit is multicast to each
listener).

    python fork_storm.py [--tasks N] [--seconds S] [--procs P] [--fork-every K]

``P`` worker processes each create threads that exit at once (and every
``K``-th task a forked child that ``_exit``s), until ``N`` tasks in total
were created or ``S`` seconds passed, whichever comes first.  Runs wherever
its affinity allows (the caller pins it with ``taskset``).  Prints
``{"tasks": created, "seconds": elapsed}`` at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time


def _nothing() -> None:
    pass


def worker(quota: int, deadline: float, fork_every: int, out) -> None:
    made = 0
    while made < quota and time.monotonic() < deadline:
        if fork_every and made % fork_every == 0:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        else:
            t = threading.Thread(target=_nothing)
            t.start()
            t.join()
        made += 1
    out.put(made)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--fork-every", type=int, default=10)
    args = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    quota = -(-args.tasks // args.procs)
    procs = [ctx.Process(target=worker, args=(quota, deadline, args.fork_every, q)) for _ in range(args.procs)]
    for p in procs:
        p.start()
    made = sum(q.get(timeout=args.seconds + 30) for _ in procs)
    for p in procs:
        p.join(timeout=10)
    print(json.dumps({"tasks": made, "seconds": round(time.monotonic() - t0, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
