"""The daemon's memory, two checkouts side by side over the same paused guests.

    python -m bench.b3_rss_ab --guests 100 --seconds 120 OLD_TREE NEW_TREE

``OLD_TREE``/``NEW_TREE`` are source trees (``git archive <rev> | tar -x -C
DIR``); ``--early N`` starts the first N daemons before the guests, which
then start in B3's steps (a tree given twice, once early: what B3's
progression adds to a daemon that found the guests running).  Starts ``--guests`` paused canonical guests (named
``rtbench-rss-<tag><pid>-N``, ``--tag`` e.g. ``rtr-``; destroyed at the end), then one ``rtagent run`` per
tree at once, each with B3's daemon config (bench/common.py
:func:`daemon_config`: resync 1 s, metrics and host tuning off, RT budget
1,000 µs; ``--drift-watch on``/``off`` sets ``[daemon] drift_watch`` as B3's series
do, with B3's host-check interval, bench/b3_cost.py) and ``MALLOC_ARENA_MAX=2`` (what the daemon now sets itself, daemon/heap.py; older
trees got it from the unit).  After a minute
of settling it samples each daemon every 10 s for ``--seconds``, asking its
status socket twice first, as each B3 window does; prints RSS, anonymous,
file-backed and PSS (MiB: last, median, max) and each thread's CPU (ms of
CPU per second of the sampling time), and the new/old ratios.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import installed
from .common import (Guests, daemon_config, drop_workdir, format_table, installed_env, median, schedstat, thread_names,
                     wait_for)


def _rollup(pid: int) -> dict[str, float]:
    kb: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                kb[key] = int(rest.split()[0])
    return {"rss": kb["Rss"] / 1024, "anon": kb["Anonymous"] / 1024,
            "file": (kb["Rss"] - kb["Anonymous"]) / 1024, "pss": kb["Pss"] / 1024}


def _thread_cpu(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for tid, name in thread_names(pid).items():
        s = schedstat(pid, tid)
        if s is not None:
            key = "main" if tid == pid else name
            out[key] = out.get(key, 0) + s[0]
    return out


def _start(tree: Path, prefix: str, extra: str = "") -> tuple[subprocess.Popen, str, Path]:
    d = Path(tempfile.mkdtemp(prefix="rtbench-rss-"))
    sock = str(d / "rtagent.sock")
    cfg = daemon_config(d / "rtagent.toml", socket_path=sock, resync=1.0, prefix=prefix, rt_budget_us=1000,
                        daemon_extra=extra)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(d / "notify"))
    ns.settimeout(0.5)
    env = installed_env(tree, NOTIFY_SOCKET=str(d / "notify"))
    proc = subprocess.Popen(installed.command("-m", "rtagent", "run", "--config", str(cfg)), cwd=str(tree), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(d / "log").open("w"))
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if b"READY=1" in ns.recv(4096):
                    return proc, sock, d
            except (TimeoutError, BlockingIOError):
                continue
    finally:
        ns.close()
    proc.kill()
    raise RuntimeError(f"{tree}: daemon not ready: {(d / 'log').read_text()[-2000:]}")


def _daemon_extra(drift_watch: str) -> str:
    """``[daemon]`` lines for a drift-watch mode ("default": the trees' own
    default, no line): B3's, from this checkout's config fields — the trees
    compared must know the key (an older one refuses an unknown key)."""
    if drift_watch == "default":
        return ""
    from .b3_cost import _daemon_fields, host_checks_config, watch_config

    fields = _daemon_fields()
    return watch_config(drift_watch, fields) + host_checks_config(fields)


STEPS = (1, 10, 50)  # B3's guest counts before its last row


def _start_guests(g: Guests, prefix: str, guests: int, early: list[str]) -> None:
    """``guests`` paused guests.  With ``early`` daemons running (status
    sockets), in B3's steps, each step waited for as B3 waits (the status
    asked every second until every guest is listed): what B3's daemon
    lives through before its last row."""
    import libvirt
    from rtagent.status import fetch
    from tests.guests import rt_guest_xml

    for step in [*(n for n in STEPS if early and n < guests), guests]:
        while len(g.started) < step:
            i = len(g.started)
            g.start(f"{prefix}{i}", rt_guest_xml(f"{prefix}{i}", metadata=""), flags=libvirt.VIR_DOMAIN_START_PAUSED)
        for sock in early:
            wait_for(lambda s=sock, n=step: len(fetch(s)["domains"]) >= n, 120 + 2 * step, 1.0)


def run(trees: list[Path], guests: int, seconds: float, tag: str = "", drift_watch: str = "default",
        report: Callable[[dict], None] | None = None, early: int = 0) -> dict:
    """The samples (see the module's docstring); ``report`` gets them before
    the guests are destroyed (100 take minutes on this host).  ``early``:
    the first that many trees' daemons start before the guests and see them
    start in B3's steps (:func:`_start_guests`); the rest start after."""
    from rtagent.status import fetch

    prefix = f"rtbench-rss-{tag}{os.getpid()}-"
    g = Guests()
    daemons: list[tuple[Path, subprocess.Popen, str]] = []
    dirs: list[Path] = []
    try:
        for n, tree in enumerate(trees):
            if n == early:
                _start_guests(g, prefix, guests, [sock for _, _, sock in daemons])
            proc, sock, d = _start(tree, prefix, _daemon_extra(drift_watch))
            daemons.append((tree, proc, sock))
            dirs.append(d)
        if early >= len(trees):
            _start_guests(g, prefix, guests, [sock for _, _, sock in daemons])
        for _, _, sock in daemons:
            wait_for(lambda s=sock: len(fetch(s)["domains"]) >= guests, 120 + 2 * guests, 2.0)
        time.sleep(60)
        cpu0 = {p.pid: _thread_cpu(p.pid) for _, p, _ in daemons}
        t0 = time.monotonic()
        samples: dict[int, list[dict]] = {p.pid: [] for _, p, _ in daemons}
        while time.monotonic() - t0 < seconds:
            for _, p, sock in daemons:
                fetch(sock)
                fetch(sock)
                samples[p.pid].append(_rollup(p.pid))
            time.sleep(10)
        wall = time.monotonic() - t0
        out = {"guests": guests, "load": os.getloadavg(), "drift_watch": drift_watch, "daemons": []}
        for n, (tree, p, sock) in enumerate(daemons):
            c1 = _thread_cpu(p.pid)
            out["daemons"].append({
                "tree": str(tree) + (" (early)" if n < early else ""), "managed": len(fetch(sock)["domains"]),
                "watch": (fetch(sock)["daemon"].get("drift_watch") or {}).get("state"),
                "memory": {k: (samples[p.pid][-1][k], median([s[k] for s in samples[p.pid]]),
                               max(s[k] for s in samples[p.pid])) for k in ("rss", "anon", "file", "pss")},
                "cpu_ms_per_s": {k: (v - cpu0[p.pid].get(k, 0)) / 1e6 / wall for k, v in c1.items()}})
        if report is not None:
            report(out)
        return out
    finally:
        # The guests first, while their daemons run: a daemon gives a stopped
        # guest's RT budget back (and trims /machine); one stopped before its
        # guests leaves it in place, by design (B3 does the same).
        g.close()
        for _, p, _ in daemons:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for d in dirs:
            drop_workdir(d)


def format_result(r: dict) -> str:
    ds = r["daemons"]
    rows = []
    for d in ds:
        m = d["memory"]
        rows.append([d["tree"], d["managed"], *(f"{m[k][0]:.2f} ({m[k][1]:.2f} / {m[k][2]:.2f})" for k in
                                                 ("rss", "anon", "file", "pss")),
                     f"{d['cpu_ms_per_s'].get('main', 0):.2f}", f"{sum(d['cpu_ms_per_s'].values()):.2f}"])
    if len(ds) == 2:
        a, b = (d["memory"] for d in ds)
        ca, cb = (d["cpu_ms_per_s"] for d in ds)
        rows.append(["ratio second / first", "", *(f"{b[k][0] / a[k][0]:.3f}" for k in ("rss", "anon", "file", "pss")),
                     f"{cb.get('main', 0) / max(ca.get('main', 0), 1e-9):.2f}",
                     f"{sum(cb.values()) / max(sum(ca.values()), 1e-9):.2f}"])
    return format_table(["tree", "guests", "RSS MiB last (median / max)", "anon", "file-backed", "PSS",
                         "main thread CPU ms/s", "all threads ms/s"], rows,
                        title=f"{r['guests']} paused guests, drift watch {r.get('drift_watch', 'default')} "
                              f"(daemons say: {', '.join(str(d.get('watch')) for d in ds)}), load {r['load'][0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.b3_rss_ab", description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", type=Path)
    ap.add_argument("--guests", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--tag", default="", help="in the guests' names (an engineer's prefix, e.g. rtr-)")
    ap.add_argument("--drift-watch", choices=("default", "on", "off"), default="default",
                    help="[daemon] drift_watch for both daemons (default: each tree's own)")
    ap.add_argument("--early", type=int, default=0,
                    help="the first N trees' daemons start before the guests and see them start in B3's steps "
                         "(1, 10, 50, then all), the rest after (a tree may be given twice)")
    args = ap.parse_args(argv)
    run(args.trees, args.guests, args.seconds, args.tag, args.drift_watch,
        report=lambda r: print(format_result(r), flush=True), early=args.early)
    return 0


if __name__ == "__main__":
    sys.exit(main())
