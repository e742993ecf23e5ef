#!/usr/bin/env python3
"""A QEMU-like process whose threads keep appearing and exiting.

    python thread_churn.py [--names "CPU 1/KVM,worker"] [--width N] [--life-ms MS]
                           [--seconds S]

The main thread spawns threads named from ``--names`` (round robin), keeping
about ``--width`` alive at once; each one names itself, sleeps up to
``--life-ms`` and exits.  A stable ``CPU 0/KVM`` thread lives throughout so
the process always looks like a guest.  Nothing spins: the threads sleep, so
one of them being made SCHED_FIFO costs nothing.

Prints ``{"pid": N}`` when running; exits on stdin EOF, SIGTERM or after
``--seconds``; prints ``{"spawned": N}`` on the way out.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import random
import signal
import sys
import threading
import time

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_name(name: str) -> None:
    libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", default="CPU 1/KVM,worker")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--life-ms", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    names = [n for n in args.names.split(",") if n]
    stop = threading.Event()

    def stable() -> None:
        set_name("CPU 0/KVM")
        stop.wait()

    threading.Thread(target=stable, daemon=True).start()

    def short(name: str) -> None:
        set_name(name)
        time.sleep(random.random() * args.life_ms / 1000)

    def eof() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=eof, daemon=True).start()
    print(json.dumps({"pid": threading.get_native_id()}), flush=True)
    deadline = time.monotonic() + args.seconds
    spawned = 0
    live: list[threading.Thread] = []
    while not stop.is_set() and time.monotonic() < deadline:
        live = [t for t in live if t.is_alive()]
        while len(live) < args.width:
            t = threading.Thread(target=short, args=(names[spawned % len(names)],), daemon=True)
            t.start()
            live.append(t)
            spawned += 1
        time.sleep(0.0005)
    stop.set()
    print(json.dumps({"spawned": spawned}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
