"""The daemon's memory through guest churn: does it come back down?

    python -m bench.b3_churn --guests 20 --cycles 5 [--tag rtr-] [TREE]

A daemon of ``TREE`` (default: this checkout; started as the package runs
it, bench/installed.py, with B3's config and the drift watch on) watches
``--guests`` paused canonical guests (``rtbench-churn-<tag><pid>-<cycle>-N``)
start, get tuned, and be destroyed, ``--cycles`` times.  Its RSS and
anonymous memory are read when a cycle's guests are all listed and again
once they are gone and the daemon has forgotten them.  A daemon that kept
something per guest started grows by the same amount every cycle; one
whose heap only reached a high-water mark stays there.  The goal column:
the last cycle's memory with no guest within 0.5 MiB of the first's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .b3_rss_ab import _daemon_extra, _rollup, _start
from .common import REPO, Guests, drop_workdir, format_table, wait_for

GOAL_GROWTH_MIB = 0.5


def growth(empty: list[dict[str, float]], key: str = "anon") -> float:
    """MiB the daemon grew from the first cycle's empty reading to the last."""
    return empty[-1][key] - empty[0][key] if len(empty) >= 2 else float("nan")


def run(tree: Path, guests: int, cycles: int, tag: str = "") -> dict:
    import libvirt

    from rtagent.status import fetch
    from tests.guests import rt_guest_xml

    prefix = f"rtbench-churn-{tag}{os.getpid()}-"
    g = Guests()
    proc, sock, d = _start(tree, prefix, _daemon_extra("on"))
    out: dict = {"tree": str(tree), "guests": guests, "cycles": [], "load": []}
    try:
        out["start"] = _rollup(proc.pid)
        for c in range(cycles):
            for i in range(guests):
                name = f"{prefix}{c}-{i}"
                g.start(name, rt_guest_xml(name, metadata=""), flags=libvirt.VIR_DOMAIN_START_PAUSED)
            listed = wait_for(lambda: len(fetch(sock)["domains"]) >= guests, 120 + 3 * guests, 1.0)
            time.sleep(15)  # the full check the new guests bring (B3's settle: 5-15 s)
            full = _rollup(proc.pid)
            g.close()
            gone = wait_for(lambda: not fetch(sock)["domains"], 120, 1.0)
            time.sleep(15)
            out["cycles"].append({"full": full, "empty": _rollup(proc.pid), "listed": bool(listed),
                                  "forgotten": bool(gone)})
            out["load"].append(os.getloadavg()[0])
            print(f"  churn: cycle {c + 1}: {guests} guests {full['rss']:.2f} MiB (anon {full['anon']:.2f}), "
                  f"none {out['cycles'][-1]['empty']['rss']:.2f} (anon {out['cycles'][-1]['empty']['anon']:.2f})",
                  flush=True)
        return out
    finally:
        g.close()
        proc.terminate()
        try:
            proc.wait(15)
        except Exception:  # noqa: BLE001 - a daemon that will not stop is killed
            proc.kill()
        drop_workdir(d)


def format_result(r: dict) -> str:
    rows = []
    for n, c in enumerate(r["cycles"], 1):
        rows.append([n, f"{c['full']['rss']:.2f} / {c['full']['anon']:.2f}",
                     f"{c['empty']['rss']:.2f} / {c['empty']['anon']:.2f}", "" if c["listed"] and c["forgotten"]
                     else "not all listed" if not c["listed"] else "not all forgotten"])
    empty = [c["empty"] for c in r["cycles"]]
    g_anon, g_rss = growth(empty), growth(empty, "rss")
    mark = "n/a" if g_anon != g_anon else "pass" if max(g_anon, g_rss) <= GOAL_GROWTH_MIB else "FAIL"
    rows.append(["growth, first to last cycle with no guest", "", f"{g_rss:+.2f} / {g_anon:+.2f}",
                 f"goal ≤ {GOAL_GROWTH_MIB} MiB: {mark}"])
    return format_table(["cycle", f"{r['guests']} paused guests: RSS / anon MiB", "no guest: RSS / anon MiB", ""],
                        rows, title=f"daemon {r['tree']} (started with no guest: RSS {r['start']['rss']:.2f}, "
                                    f"anon {r['start']['anon']:.2f} MiB), load {min(r['load'] or [0]):.1f}–"
                                    f"{max(r['load'] or [0]):.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.b3_churn", description=__doc__.splitlines()[0])
    ap.add_argument("tree", nargs="?", type=Path, default=REPO)
    ap.add_argument("--guests", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--tag", default="", help="in the guests' names (an engineer's prefix, e.g. rtr-)")
    args = ap.parse_args(argv)
    print(format_result(run(args.tree, args.guests, args.cycles, args.tag)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
