"""``rtagent host apply`` / ``rtagent host restore``: the host partition, once.

``apply`` enforces the partition (kernel threads, per-CPU kthread priorities,
IRQ affinity, workqueue cpumasks) one time and prints every change (item,
before → after), every refusal, and what was deliberately left alone.
``restore`` puts back every original value saved in
``host_tuning.state_file`` and removes the file.

Exit status: 0 done (refusals by the kernel — managed IRQs — are not
failures), 1 something failed, 2 configuration error (raised as
:class:`~rtagent.errors.ConfigError`, turned into exit 2 by the CLI).
"""

from __future__ import annotations

import argparse
import json

from ..config import Config, load_config
from ..cpulist import format_cpulist
from ..errors import RtagentError
from ..model import RealtimeSpec
from ..tuning.host.enforcer import HostPartitionEnforcer
from ..tuning.host.priority import vcpu_priority
from ..tuning.host.report import HostReport


def _running_specs(cfg: Config) -> list[RealtimeSpec]:
    """The intents of the running guests the daemon would manage (its guest
    selector), from their live XML: metadata, ``<vcpusched>`` or rules."""
    from ..selector import GuestSelector
    from .common import inspect_running, open_tuner, selected_domains

    selector = GuestSelector.from_config(cfg.daemon)
    _, host, tuner = open_tuner(argparse.Namespace(config=cfg.path))
    try:
        return [r.spec for _, r in inspect_running(tuner, selected_domains(host, [], selector), selector)]
    finally:
        host.close()


def _vcpu_priority(cfg: Config) -> int:
    """What the daemon would rank per-CPU kthreads against.  Without libvirt
    the running guests' priorities are unknown: the ceiling
    (``realtime.max_priority``) is above every priority a valid intent can
    have, so no realtime vCPU can end up above ``ksoftirqd``."""
    try:
        specs = _running_specs(cfg)
    except RtagentError as err:
        print(f"warning: cannot list the running guests ({err}): ranking per-CPU kernel threads above "
              f"realtime.max_priority = {cfg.realtime.max_priority}")
        return cfg.realtime.max_priority
    return vcpu_priority(specs, cfg.realtime.default_priority)


def _print_report(report: HostReport, verbose_left_alone: bool = True) -> None:
    p = report.partition
    print(f"host partition: realtime CPUs {format_cpulist(p.realtime) or '(none)'}, "
          f"housekeeping CPUs {format_cpulist(p.housekeeping) or '(none)'}")
    width = max((len(r.item) for r in report.results), default=0)
    for r in report.results:
        if r.status == "unchanged":
            continue
        line = f"  {r.status:<9} {r.kind:<18} {r.item:<{width}}  {r.before or '?'} -> {r.after or '?'}"
        if r.detail:
            line += f"  ({r.detail})"
        print(line)
    if verbose_left_alone and report.left_alone:
        print(f"left alone ({len(report.left_alone)} allowed on realtime CPUs, not changed):")
        for a in report.left_alone:
            print(f"  {a.item} [CPUs {a.cpus}]: {a.reason}")
    for c in report.conflicts:
        print(f"conflict: {c['item']} moved back {c['corrections']} times within {c['window_s']:g} s")
    if report.irqbalance is not None and report.irqbalance.running:
        print(f"irqbalance is running (pid {','.join(map(str, report.irqbalance.pids))})")
    for e in report.errors:
        print(f"error: {e}")
    n = report.counts
    verb = "changed" if report.operation == "enforce" else "restored"
    print(f"{report.operation}: {n['changed']} {verb}, {n['unchanged']} already in place, {n['refused']} refused, "
          f"{n['vanished']} vanished, {n['errors']} errors")


def run(args) -> int:
    cfg = load_config(args.config)
    assert cfg.partition is not None
    enforcer = HostPartitionEnforcer(cfg.partition, cfg.host_tuning)
    if args.host_command == "apply":
        if not cfg.partition.realtime:
            msg = ("no realtime CPUs are configured (host.realtime_cpus = \"auto\" and the kernel has no "
                   "isolcpus/nohz_full CPUs): nothing to enforce")
            if args.json:
                report = HostReport("enforce", cfg.partition, state_file=enforcer.state_file)
                print(json.dumps({**report.to_json(), "message": msg}, indent=2))
            else:
                print(msg)
            return 0
        report = enforcer.enforce(_vcpu_priority(cfg))
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            _print_report(report)
            if report.changed:
                print(f"original values saved in {enforcer.state_file} (rtagent host restore puts them back)")
        return 0 if report.ok else 1
    if args.host_command == "restore":
        report = enforcer.restore()
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            if not report.results and not report.errors:
                print(f"nothing to restore ({enforcer.state_file} holds no saved values)")
            else:
                _print_report(report, verbose_left_alone=False)
        return 0 if report.ok else 1
    raise ValueError(f"unknown host command {args.host_command!r}")  # pragma: no cover
