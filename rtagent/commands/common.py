"""Pieces shared by the one-shot commands (check, apply)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..config import Config, load_config
from ..cpulist import format_cpulist
from ..errors import DomainXMLError, GuestGone
from ..libvirt_host import Guest, LibvirtHost
from ..selector import GuestSelector
from ..tuning.guest.claims import ClaimBook
from ..tuning.guest.engine import DomainReport, Tuner

log = logging.getLogger(__name__)


def open_tuner(args) -> tuple[Config, LibvirtHost, Tuner]:
    config = load_config(args.config)
    host = LibvirtHost(config.libvirt.uri, config.libvirt.call_timeout_s)
    host.connect()
    return config, host, Tuner(config)


def selected_domains(host: LibvirtHost, names: list[str], selector: GuestSelector | None = None) -> list[Guest]:
    """The running guests named (any order, by name or UUID), or all running
    guests the daemon's guest selector manages (``[daemon] guest_names``).
    A guest named explicitly is inspected even outside the selection."""
    if names:
        return [host.lookup(n) for n in names]
    return list(host.active_guests(None if selector is None else selector.matches_name).values())


def inspect_running(tuner: Tuner, guests: list[Guest],
                    selector: GuestSelector | None = None) -> list[tuple[Guest, DomainReport]]:
    """``(guest, report)`` per guest; a guest that stops meanwhile is left out
    (guests come and go while a one-shot command runs).  With a selector
    that requires rtagent's metadata, other guests are reported as not
    realtime, as the daemon treats them."""
    out = []
    for guest in guests:
        try:
            report = tuner.inspect(guest)
            if selector is not None and selector.require_metadata and report.spec.source != "metadata":
                report.spec = dataclasses.replace(report.spec, realtime=False)
                report.violations = []
            out.append((guest, report))
        except GuestGone as err:
            log.warning("guest stopped while being inspected: %s", err)
    return out


def judge_host_wide(tuner: Tuner, host: LibvirtHost, pairs: list[tuple[Guest, DomainReport]],
                    selector: GuestSelector | None = None) -> list[DomainReport]:
    """Judge each report (in place) against the pCPU claims of every running
    guest the selector manages (a realtime pCPU has one owner host-wide), as
    the daemon does.  Returns the reports of every other running guest
    (selected or not: the kernel's RT budget is shared by all of them)."""
    book = ClaimBook()
    mine = {r.uuid for _, r in pairs}
    others = []
    for uuid, guest in host.active_guests().items():
        if uuid in mine:
            continue
        try:
            others.append(tuner.inspect(guest))
        except GuestGone:  # another guest stopped meanwhile: normal
            continue
        if selector is None or selector.matches_name(guest.name):
            book.record(uuid, others[-1].claims)
    for _, r in pairs:
        book.record(r.uuid, r.claims)
    for i, (guest, r) in enumerate(pairs):
        pairs[i] = (guest, tuner.reassess(r, book))
    return others


def vcpusched_guests(tuner: Tuner, host: LibvirtHost, selector: GuestSelector | None = None) -> list[str]:
    """Defined, not running guests whose XML has a realtime ``<vcpusched>``
    (libvirt applies it at their next start: refused with RT group
    scheduling).  Empty when this host does not refuse it."""
    if tuner.vcpusched_refused is None:
        return []
    out = []
    for guest in host.inactive_guests():
        if selector is not None and not selector.matches_name(guest.name):
            continue
        try:
            if tuner.spec_for(guest).libvirt_vcpusched:
                out.append(guest.name)
        except (GuestGone, DomainXMLError):  # undefined meanwhile, or unreadable: not ours to judge
            continue
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
