"""The full check's cost in-process, source trees side by side on the same guests.

    python -m bench.fullcheck_ab --guests 10,100 --checks 15 [--parts] TREE [TREE ...]

Each ``TREE`` is a source tree (``git archive <rev> | tar -x -C DIR``, or a
worktree).  Starts ``max(--guests)`` paused canonical guests (named
``--prefix``\\ ``NNN``, default ``rtbench-fc-rtp-``; destroyed at the end), then for
every guest count, for every tree in turn (interleaved, ``--rounds``
times), a child process that makes that tree's ``Daemon`` in-process over
the first N guests (B3's daemon config, bench/common.py :func:`daemon_config`:
resync 1 s, metrics, host tuning and interference off, ``rt_budget_us =
1000``; the drift watch off), tunes them
with two full resyncs, then runs ``--checks`` full checks one second apart
(the daemon's cadence leaves its caches cold: a check right after another
costs a fraction) and reports each one's main-thread CPU
(``time.thread_time_ns``) and how many guests it reconciled (0 when every
guest stood, the case measured).  ``--parts``: also the CPU inside each
named part of a full check (timers wrapped around the functions; their own
cost is in the total).  The host checks are kept out (``next_checks`` set
to infinity): they are not the full check's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# (label, dotted owner, attribute): what --parts times, where it exists in a tree.
_PARTS = [
    ("listing RPC", "rtagent.libvirt_host:LibvirtHost", "active_guests"),
    ("marks: group task lists", "rtagent.kernel.members:GroupMembers", "read"),
    ("marks: process status+limits", "rtagent.kernel.tasks:Tasks", "process"),
    ("marks: task listing", "rtagent.kernel.tasks:Tasks", "tids"),
    ("marks: stat+affinity per task", "rtagent.kernel.tasks:Tasks", "look"),
    ("marks: whole read", "rtagent.tuning.guest.marks", "read_marks"),
    ("marks kept: per task", "rtagent.kernel.kept:KeptTasks", "task"),
    ("marks kept: process status+limits", "rtagent.kernel.kept:KeptTasks", "process"),
    ("marks kept: whole read", "rtagent.tuning.guest.marks", "read_marks_kept"),
    ("still_observed (marks + compare)", "rtagent.tuning.guest.engine:Tuner", "still_observed"),
    ("counters of the guests that stood", "rtagent.daemon.fullcheck:Standing", "read_counters"),
    ("_stands (all of a guest's shortcut)", "rtagent.daemon.guests:GuestSupervisor", "_stands"),
    ("settled", "rtagent.daemon.fullcheck", "settled"),
    ("claims ownership_for", "rtagent.tuning.guest.claims:ClaimBook", "ownership_for"),
    ("_refresh_counters (with the store update)", "rtagent.daemon.guests:GuestSupervisor", "_refresh_counters"),
    ("budget release_unclaimed", "rtagent.tuning.guest.ledger:BudgetLedger", "release_unclaimed"),
]


def _wrap(totals: dict[str, int], label: str, owner: str, attr: str) -> None:
    import importlib

    mod_name, _, cls_name = owner.partition(":")
    try:
        target = importlib.import_module(mod_name)
        target = getattr(target, cls_name) if cls_name else target
        fn = getattr(target, attr)
    except (ImportError, AttributeError):
        return
    clock = time.thread_time_ns

    def timed(*a, **k):
        t = clock()
        try:
            return fn(*a, **k)
        finally:
            totals[label] = totals.get(label, 0) + clock() - t

    setattr(target, attr, timed)
    if not cls_name:  # a module function: also where it was imported by name
        for name in ("rtagent.tuning.guest.engine", "rtagent.daemon.guests"):
            m = sys.modules.get(name)
            if m is not None and getattr(m, attr, None) is fn:
                setattr(m, attr, timed)


def child(config: str, checks: int, parts: bool) -> dict:
    """Runs inside the tree (PYTHONPATH): one in-process daemon's full checks."""
    from rtagent.config import load_config
    from rtagent.daemon import Daemon
    from rtagent.libvirt_host import start_event_loop

    import rtagent.tuning.guest.engine  # noqa: F401  (so _wrap can patch its imported names)

    totals: dict[str, int] = {}
    if parts:
        for label, owner, attr in _PARTS:
            _wrap(totals, label, owner, attr)
    start_event_loop()
    d = Daemon(load_config(config), config)
    d.host.connect()
    standing = d.guests.standing
    if hasattr(standing, "budget"):  # the daemon's descriptor budget, as services.start gives it
        from rtagent.monitor import fdlimit

        standing.budget(fdlimit.client_budget(fdlimit.raise_nofile(), 0, 64).standing)
    d.resync()
    time.sleep(1.5)
    d.resync()
    d.hostside.next_checks = float("inf")
    n = [0]
    orig = d.guests.reconcile
    d.guests.reconcile = lambda *a, **k: (n.__setitem__(0, n[0] + 1), orig(*a, **k))[1]
    cpu, reconciled, per_part = [], [], []
    for _ in range(checks):
        time.sleep(1.0)
        totals.clear()
        n[0] = 0
        t = time.thread_time_ns()
        d.guests.resync()
        cpu.append(time.thread_time_ns() - t)
        reconciled.append(n[0])
        per_part.append(dict(totals))
    threads = sum(len(r.threads) for r in d.guests.last.values())
    return {"cpu_ns": cpu, "reconciled": reconciled, "parts": per_part, "guests": len(d.guests.tracked),
            "threads": threads}


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _run_child(tree: Path, config: Path, checks: int, parts: bool) -> dict:
    from . import installed  # here: the child runs this file as a script, outside the package

    env = installed.installed_env(tree)
    out = subprocess.run(installed.command(str(Path(__file__).resolve()), "--child", str(config), "--checks",
                                           str(checks), *(["--parts"] if parts else [])), cwd=str(tree), env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: child failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _selecting(prefix: str, n: int) -> str:
    """The name prefix the first ``n`` of the guests ``prefixNNN`` share
    (B3's daemon config manages ``prefix*``)."""
    return {1: f"{prefix}000", 10: f"{prefix}00", 100: prefix}[n]


def _report(results: list[dict]) -> None:
    print(f"{'tree':<28} {'guests':>6} {'threads':>7} {'p50 ms':>8} {'min ms':>8} {'p50 µs/guest':>12} "
          f"{'reconciled':>10}")
    for r in results:
        cpu = [c / 1e6 for c in r["cpu_ns"]]
        print(f"{r['tree'][-28:]:<28} {r['guests']:>6} {r['threads']:>7} {_median(cpu):>8.2f} {min(cpu):>8.2f} "
              f"{_median(cpu) * 1e3 / max(1, r['guests']):>12.0f} {max(r['reconciled']):>10}")
        if r["parts"] and any(r["parts"]):
            labels = sorted({k for p in r["parts"] for k in p})
            for label in labels:
                v = _median([p.get(label, 0) / 1e3 for p in r["parts"]])
                print(f"    {label:<40} p50 {v:>9.0f} µs  ({v / max(1, r['guests']):.0f} µs a guest)")


def _give_back(give_back, at_start: int, wait_s: float = 15.0) -> None:
    """/machine's RT budget back to what it held before the run.  Right
    after a guest's groups go the trim can be refused for a moment
    (``EINVAL``, rtagent/tuning/guest/ledger.py): retried for ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            done = give_back(at_start)
        except OSError as err:
            if time.monotonic() > deadline:
                print(f"/machine's RT budget not given back: {err}", file=sys.stderr)
                return
            time.sleep(0.5)
            continue
        if done:
            print(done)
        return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fullcheck_ab")
    ap.add_argument("trees", nargs="*", type=Path)
    ap.add_argument("--guests", default="10,100")
    ap.add_argument("--checks", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--parts", action="store_true")
    ap.add_argument("--prefix", default="rtbench-fc-rtp-", help="guest names (bench/common.py's PREFIX first)")
    ap.add_argument("--json")
    ap.add_argument("--child")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.checks, args.parts)))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import Guests, daemon_config, drop_workdir
    from tests.guests import rt_guest_xml
    from tests.hostguard import give_back_machine_budget, machine_budget

    import libvirt

    counts = [int(x) for x in args.guests.split(",")]
    if not set(counts) <= {1, 10, 100}:
        ap.error("--guests: a list of 1, 10 and 100 (the guests each count manages share a name prefix)")
    total = max(counts)
    guests = Guests()
    results: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="rtbench-fc-"))
    at_start = machine_budget()
    try:
        for i in range(total):
            name = f"{args.prefix}{i:03d}"
            guests.start(name, rt_guest_xml(name, metadata=""), flags=libvirt.VIR_DOMAIN_START_PAUSED)
        for n in counts:
            cfg = daemon_config(work / f"g{n}.toml", socket_path=str(work / f"g{n}.sock"), resync=1.0,
                                prefix=_selecting(args.prefix, n), rt_budget_us=1000,
                                daemon_extra='drift_watch = "off"\n')
            for _ in range(args.rounds):
                for tree in args.trees:
                    r = _run_child(tree, cfg, args.checks, args.parts)
                    r["tree"] = str(tree)
                    results.append(r)
                    _report([r])
    finally:
        guests.close()
        drop_workdir(work)
        # The in-process checks stop before the guests go, so nothing else
        # takes their RT budget back off /machine (tests/hostguard.py).
        _give_back(give_back_machine_budget, at_start[1] if at_start is not None else 0)
    print()
    _report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
