"""Command line: argument parsing and dispatch.

Each subcommand's work lives in ``rtagent/commands/<name>.py`` as
``run(args) -> int``; this module only parses, sets up logging, and turns
:class:`~rtagent.errors.RtagentError` into one line on stderr and its exit code
(never a traceback for an operator's mistake).
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING

from . import __version__
from .errors import RtagentError
from .log import setup_logging

if TYPE_CHECKING:
    import argparse

log = logging.getLogger("rtagent")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config file (default /etc/rtagent/rtagent.toml)")


def build_parser() -> argparse.ArgumentParser:
    # Imported here: the daemon drops argparse once it has started (daemon/startonly.py).
    from .argparsing import Parser

    parser = Parser(
        prog="rtagent",
        description="Keep realtime KVM guests realtime: enforce and prove vCPU scheduling, "
        "pinning and host partitioning.",
    )
    parser.add_argument("--version", action="version", version=f"rtagent {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the daemon (systemd Type=notify)")
    _add_config(p)

    p = sub.add_parser("status", help="ask the running daemon; exit 0 compliant, 1 violation, 3 unreachable")
    _add_config(p)
    p.add_argument("domain", nargs="?", help="show the per-thread table of one guest")
    p.add_argument("--json", action="store_true")
    p.add_argument("--socket", help="status socket (default from config)")

    p = sub.add_parser("check", help="one-shot audit without a daemon; changes nothing")
    _add_config(p)
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("interference", help="sample who runs on the realtime CPUs for N seconds, without a daemon")
    _add_config(p)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to sample (default 10)")
    p.add_argument("--cpus", help="CPUs to account (default: host.realtime_cpus)")
    p.add_argument("--top", type=int, default=10, help="culprits shown per CPU (default 10)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("apply", help="one-shot enforcement for hosts without the daemon")
    _add_config(p)
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("plan", help="the realtime intent derived from a domain XML, with validation")
    _add_config(p)
    p.add_argument("--xml", required=True, metavar="FILE", help="domain XML file ('-' = stdin)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--running", action="store_true",
                   help="also compare with the guests running here (libvirt): pCPUs they own (exit 1 on a conflict)")

    _add_tools(sub)
    return parser


def _add_tools(sub) -> None:
    """``config check``, ``host apply``, ``host restore``."""
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate the config and print the effective values")
    _add_config(c)
    c.add_argument("--json", action="store_true")

    p = sub.add_parser("host", help="host partition tools")
    hsub = p.add_subparsers(dest="host_command", metavar="ACTION", required=True)
    h = hsub.add_parser("apply", help="enforce the host partition once (kthreads, workqueues, IRQs)")
    _add_config(h)
    h.add_argument("--json", action="store_true")
    h = hsub.add_parser("restore", help="put back what rtagent changed on the host partition")
    _add_config(h)
    h.add_argument("--json", action="store_true")


_COMMANDS = {
    "run": "daemon",
    "status": "status",
    "check": "check",
    "interference": "interference",
    "apply": "apply",
    "plan": "plan",
    "config": "config",
    "host": "host",
}


def parse(argv: list[str] | None = None) -> SimpleNamespace:
    """The parsed command line.  Neither the parser nor argparse's Namespace
    is kept: `run` lives as long as the daemon, which drops argparse once
    started (daemon/startonly.py)."""
    return SimpleNamespace(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    setup_logging(args.log_level)
    module = importlib.import_module(f"rtagent.commands.{_COMMANDS[args.command]}")
    try:
        return int(module.run(args) or 0)
    except RtagentError as err:
        print(f"rtagent: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
