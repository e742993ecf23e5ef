"""``rtagent plan --xml FILE``: the intent rtagent derives from a domain XML.

A debugging tool for operators, so it must work off-host: the config is
loaded without resolving the host partition (``resolve=False``).

Exit codes: 0 = valid, or not a realtime guest; 1 = realtime intent that
fails validation, or (with ``--running``) a pCPU a running guest owns; 2 =
unreadable or malformed XML, or a bad config (raised as
:class:`~rtagent.errors.RtagentError` and printed by the CLI).
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from ..config import load_config
from ..cpulist import format_cpulist
from ..errors import DomainXMLError
from ..intent import derive_spec
from ..kernel import Kernel
from ..model import RealtimeSpec
from ..tuning.guest import vcpusched
from .plan_host import running_conflicts


def read_xml(path: str) -> bytes:
    """The XML as bytes, so that its own encoding declaration is honoured."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise DomainXMLError(f"cannot read domain XML {path}: {err.strerror}") from None


def _cpus(cpus: frozenset[int]) -> str:
    return format_cpulist(cpus) if cpus else "(unpinned)"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def print_table(spec: RealtimeSpec, out: TextIO) -> None:
    """A table a person reads at a glance: vCPUs, then the other threads,
    memory, and the errors and warnings last where the eye ends up."""
    state = "realtime" if spec.realtime else "not realtime"
    validity = "valid" if spec.valid else "INVALID"
    source = spec.source_detail or spec.source
    origin = f"intent from {source}" if source else "no realtime intent"
    print(f"domain {spec.domain} ({spec.uuid or 'no uuid'}): {state}, {origin}, {validity}", file=out)
    rows = [("vcpu", "realtime", "policy", "priority", "cpus")]
    rows += [(str(v.vcpu), _yes(v.realtime), v.policy, str(v.priority), _cpus(v.cpus)) for v in spec.vcpus]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    print(f"emulator cpus: {_cpus(spec.emulator_cpus)} ({spec.emulator_source})", file=out)
    if spec.iothreads:
        print("iothreads: " + ", ".join(f"{t.iothread}: {_cpus(t.cpus)}" for t in spec.iothreads), file=out)
    else:
        print("iothreads: none", file=out)
    mem = spec.memory
    page = f", page size {_size(mem.page_size_bytes)}" if mem.page_size_bytes else ""
    print(f"memory: {_size(mem.size_bytes)}, locked {_yes(mem.locked)}, hugepages {_yes(mem.hugepages)}{page}, "
          f"nosharepages {_yes(mem.nosharepages)}", file=out)
    for message in spec.errors:
        print(f"error: {message}", file=out)
    for message in spec.warnings:
        print(f"warning: {message}", file=out)


def exit_code(spec: RealtimeSpec) -> int:
    return 1 if spec.realtime and not spec.valid else 0


def run(args) -> int:
    config = load_config(args.config, resolve=False)
    spec = derive_spec(read_xml(args.xml), config)
    # The one fact of the host the plan needs: on a host with RT group
    # scheduling, libvirt's own <vcpusched> makes the guest fail to start.
    refused = vcpusched.refusal(spec, vcpusched.host_refuses(Kernel()))
    # And the pCPUs the running guests own: started now, this guest comes last.
    conflicts, note = running_conflicts(spec, config) if getattr(args, "running", False) else ([], None)
    if args.json:
        print(json.dumps({**spec.to_json(), "host_warnings": [refused] if refused else [],
                          "conflicts": [c.to_json() for c in conflicts], "conflicts_note": note}))
    else:
        print_table(spec, sys.stdout)
        if refused:
            print(f"warning (this host): {refused}")
        for c in conflicts:
            print(f"conflict (running guests): {c.detail}")
        if note:
            print(f"note: {note}")
    return 1 if conflicts else exit_code(spec)
