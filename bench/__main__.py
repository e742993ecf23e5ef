"""``python -m bench [--quick|--full]``: run B1–B3 and print their tables.

B1 (guest-observed latency) lives in ``bench/b1_latency.py`` and is imported
lazily: if it is missing or fails, the run says so and goes on with B2/B3.
Each benchmark module exposes ``run(quick: bool) -> dict`` and a function
that turns that dict into tables (``format``).

    python -m bench --quick             # < 20 min on the 2-CPU test machine
    python -m bench --full --json /tmp/bench.json   # the numbers in docs/benchmarks.md
    python -m bench --only b2,b3
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import time
import traceback

from .common import REPO, machine_info

BENCHES = {"b1": "bench.b1_latency", "b2": "bench.b2_reaction", "b3": "bench.b3_cost",
           "b3i": "bench.b3_interference"}
TITLES = {"b1": "B1 — guest-observed latency", "b2": "B2 — reaction and correction time",
          "b3": "B3 — cost as hosts grow", "b3i": "B3 — interference accounting on vs off"}
FORMATTERS = ("format", "format_results", "format_tables", "format_table", "tables", "table", "report")


def _formatter(mod):
    for name in FORMATTERS:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repetitions (default)")
    mode.add_argument("--full", action="store_true", help="the full run recorded in docs/benchmarks.md")
    ap.add_argument("--only", default="b1,b2,b3", help="comma-separated subset of b1,b2,b3")
    ap.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    ap.add_argument("--plot", metavar="PNG", help="B3 cost plot (default with --full: docs/bench-cost.png)")
    ap.add_argument("--drift-watch", choices=("default", "on", "off", "both"), default="default",
                    help="B3: the daemons' drift watch (default: on where the daemon has one; "
                         "both: the paused series once on, once off, side by side)")
    args = ap.parse_args(argv)
    quick = not args.full
    only = [b.strip().lower() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in only if b not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)} (known: b1, b2, b3)")
    if os.geteuid() != 0:
        print("bench: needs root (real guests, SCHED_FIFO, the proc connector)", file=sys.stderr)
        return 2

    info = machine_info()
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"# rtagent benchmarks ({'quick' if quick else 'full'})")
    print(f"command: {command.strip()}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(flush=True)

    results: dict = {"command": command.strip(), "mode": "quick" if quick else "full", "machine": info}
    t_all = time.monotonic()
    for key in only:
        title = TITLES[key]
        print(f"## {title}\n", flush=True)
        t0 = time.monotonic()
        try:
            mod = importlib.import_module(BENCHES[key])
        except Exception as err:  # noqa: BLE001 - B1 may not be there yet; never let it stop B2/B3
            why = "not there yet" if isinstance(err, ModuleNotFoundError) and err.name == BENCHES[key] else \
                f"import failed: {type(err).__name__}: {err}"
            print(f"{key.upper()} skipped: {BENCHES[key]} {why}\n", flush=True)
            results[key] = {"skipped": why}
            continue
        run = getattr(mod, "run", None)
        if not callable(run):
            print(f"{key.upper()} skipped: {BENCHES[key]} has no run(quick)\n", flush=True)
            results[key] = {"skipped": "no run()"}
            continue
        try:
            res = run(quick=quick, drift_watch=args.drift_watch) if key == "b3" else run(quick=quick)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001
            tb = traceback.format_exc()
            print(f"{key.upper()} failed after {time.monotonic() - t0:.0f} s: {type(err).__name__}: {err}\n{tb}",
                  flush=True)
            results[key] = {"failed": f"{type(err).__name__}: {err}", "traceback": tb}
            continue
        results[key] = res
        fmt = _formatter(mod)
        try:
            text = fmt(res) if fmt else json.dumps(res, indent=2, default=str)
        except Exception as err:  # noqa: BLE001
            text = f"(formatting failed: {type(err).__name__}: {err})\n" + json.dumps(res, indent=2, default=str)
        print(text)
        print(f"\n({key.upper()} took {time.monotonic() - t0:.0f} s)\n", flush=True)

    plot_path = args.plot or (str(REPO / "docs" / "bench-cost.png") if not quick else None)
    if plot_path and isinstance(results.get("b3"), dict) and results["b3"].get("daemon"):
        from .b3_cost import plot

        try:
            if plot(results["b3"], plot_path):
                print(f"plot: {plot_path}")
        except ImportError as err:  # matplotlib is optional ([bench] extra): keep the results
            print(f"plot skipped: {err}")
    results["elapsed_s"] = time.monotonic() - t_all
    print(f"total: {results['elapsed_s'] / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
