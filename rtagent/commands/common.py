"""Pieces shared by the one-shot commands (check, apply)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import libvirt

from ..config import Config, load_config
from ..cpulist import format_cpulist
from ..libvirt_host import LibvirtHost, is_gone
from ..selector import GuestSelector
from ..tuning.guest.engine import DomainReport, Tuner

log = logging.getLogger(__name__)


def open_tuner(args) -> tuple[Config, LibvirtHost, Tuner]:
    config = load_config(args.config)
    host = LibvirtHost(config.libvirt.uri)
    host.connect()
    return config, host, Tuner(config, host)


def selected_domains(host: LibvirtHost, names: list[str], selector: GuestSelector | None = None) -> list:
    """The running guests named (any order, by name or UUID), or all running
    guests the daemon's guest selector manages (``[daemon] guest_names``).
    A guest named explicitly is inspected even outside the selection."""
    if names:
        doms = [host.lookup(n) for n in names]
        return doms
    doms = []
    for d in host.active_domains():
        if selector is not None and not selector.matches_name(d.name):
            continue
        try:
            doms.append(host.conn.lookupByUUIDString(d.uuid))
        except libvirt.libvirtError as err:
            if not is_gone(err):
                raise
            log.debug("guest %s stopped while listing", d.name)
    return doms


def inspect_running(tuner: Tuner, doms: list, selector: GuestSelector | None = None) -> list[tuple[Any, DomainReport]]:
    """``(dom, report)`` per guest; a guest that stops meanwhile is left out
    (guests come and go while a one-shot command runs).  With a selector
    that requires rtagent's metadata, other guests are reported as not
    realtime, as the daemon treats them."""
    out = []
    for dom in doms:
        try:
            report = tuner.inspect(dom)
            if selector is not None and selector.require_metadata and report.spec.source != "metadata":
                report.spec = dataclasses.replace(report.spec, realtime=False)
                report.violations = []
            out.append((dom, report))
        except libvirt.libvirtError as err:
            if not is_gone(err):
                raise
            log.warning("guest stopped while being inspected: %s", err.get_error_message())
    return out


def host_summary(config: Config) -> dict[str, Any]:
    p = config.partition
    assert p is not None
    return {
        "realtime_cpus": format_cpulist(p.realtime),
        "housekeeping_cpus": format_cpulist(p.housekeeping),
        "online_cpus": format_cpulist(p.online),
    }


def guest_line(r: DomainReport) -> str:
    """One line per guest: name, realtime vCPUs, compliant or first violations."""
    if not r.realtime:
        return f"{r.name:<24} -        not realtime"
    rt = format_cpulist(v.vcpu for v in r.spec.realtime_vcpus) or "-"
    if r.compliant:
        return f"{r.name:<24} RT {rt:<6} ✓ compliant"
    first = "; ".join(f"{v.check}: {v.detail}" for v in r.violations[:2])
    more = f" (+{len(r.violations) - 2} more)" if len(r.violations) > 2 else ""
    return f"{r.name:<24} RT {rt:<6} ✗ {first}{more}"


def thread_table(rows: list[dict[str, Any]]) -> list[str]:
    """The per-thread table, from the JSON rows of ``check`` and ``status``."""
    lines = [f"{'TID':>8}  {'THREAD':<16} {'ROLE':<9} {'VCPU':>4}  {'POLICY':<9} {'CPUS':<8} {'WANT':<16} OK"]
    for t in rows:
        w = t.get("want") or {}
        want = "-" if w.get("policy") is None else (
            f"{w['policy']}:{w['priority']}" if w["policy"] in ("fifo", "rr") else w["policy"])
        if w.get("cpus") is not None:
            want += f" @{w['cpus']}"
        vcpu = "" if t.get("vcpu") is None else t["vcpu"]
        lines.append(f"{t['tid']:>8}  {t['name']:<16} {t['role']:<9} {vcpu:>4}  "
                     f"{t['policy'] + ':' + str(t['priority']):<9} {t['cpus']:<8} {want:<16} "
                     f"{'✓' if t.get('ok') else '✗'}")
    return lines
