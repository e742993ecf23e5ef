#!/usr/bin/env python3
"""A process whose threads are named like a QEMU guest's, for the threads tier.

    python qemu_like.py [--vcpus N] [--tcg] [--thread NAME]... [--mlock BYTES]
                        [--comm NAME] [-name guest=NAME] [-uuid UUID]

Starts threads named ``CPU <i>/KVM`` (``/TCG`` with ``--tcg``), ``call_rcu``,
``IO mon_iothread`` and any ``--thread`` names; the main thread keeps its name
unless ``--comm`` is given (``--comm qemu-system-x86`` makes it look like QEMU
to :meth:`rtagent.kernel.qemu.QemuProcesses.find`, together with ``-name`` and
``-uuid``, which are only there to be read from /proc/<pid>/cmdline).  Every
thread sleeps; nothing spins.  With ``--mlock BYTES`` it maps and mlocks that
many bytes of its own memory first (the hard RLIMIT_MEMLOCK on the test host
is 8 MiB: stay at or below 4 MiB).

When ready it prints one JSON line on stdout:

    {"pid": 123, "main": "python3", "threads": {"CPU 0/KVM": 125, ...},
     "tasks": [["call_rcu", 124], ...], "mlocked": 4194304}

and then runs until stdin reaches EOF or it receives SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import signal
import sys
import threading

PR_SET_NAME = 15
PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
MAP_FAILED = ctypes.c_void_p(-1).value

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.memset.restype = ctypes.c_void_p


def set_thread_name(name: str) -> None:
    """prctl(PR_SET_NAME) names the *calling* thread (15 bytes + NUL)."""
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NAME, {name!r}): {os.strerror(err)}")


def lock_memory(size: int) -> int:
    addr = libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr in (None, MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap({size}): {os.strerror(err)}")
    libc.memset(addr, 1, size)  # fault the pages in (mlock would too; be explicit)
    if libc.mlock(addr, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mlock({size}): {os.strerror(err)}")
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--tcg", action="store_true", help="name vCPU threads CPU N/TCG")
    ap.add_argument("--thread", action="append", default=[], metavar="NAME", help="an extra thread name")
    ap.add_argument("--no-default-threads", action="store_true", help="no call_rcu / IO mon_iothread")
    ap.add_argument("--mlock", type=int, default=0, metavar="BYTES")
    ap.add_argument("--comm", help="rename the main thread")
    ap.add_argument("-name", dest="qemu_name", help="ignored; shows in cmdline like QEMU's -name")
    ap.add_argument("-uuid", dest="qemu_uuid", help="ignored; shows in cmdline like QEMU's -uuid")
    args = ap.parse_args(argv)

    # Default SIGTERM action already terminates; make it explicit in case the
    # parent ignored it (an ignored disposition is inherited across exec).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    mlocked = lock_memory(args.mlock) if args.mlock else 0
    if args.comm:
        set_thread_name(args.comm)

    names = [] if args.no_default_threads else ["call_rcu", "IO mon_iothread"]
    accel = "TCG" if args.tcg else "KVM"
    names += [f"CPU {i}/{accel}" for i in range(args.vcpus)]
    names += args.thread

    stop = threading.Event()
    tasks: list[tuple[str, int]] = []
    ready = threading.Barrier(len(names) + 1)
    lock = threading.Lock()

    def body(name: str) -> None:
        set_thread_name(name)
        with lock:
            tasks.append((name, threading.get_native_id()))
        ready.wait()
        stop.wait()

    for name in names:
        threading.Thread(target=body, args=(name,), name=name, daemon=True).start()
    ready.wait(timeout=30)

    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        main_name = f.read().strip()
    report = {
        "pid": os.getpid(),
        "main": main_name,
        "threads": {name: tid for name, tid in tasks},  # a repeated name keeps one tid here
        "tasks": sorted(tasks, key=lambda nt: nt[1]),  # every (name, tid)
        "mlocked": mlocked,
    }
    print(json.dumps(report), flush=True)

    # Block until the parent closes our stdin (or SIGTERM ends us).
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
