"""What ``rtagent plan`` compares a domain XML with on the host it runs on:
the pCPUs the running guests own (one realtime vCPU per realtime pCPU,
host-wide).  Optional: without libvirt the plan is still made, with a note."""

from __future__ import annotations

import dataclasses
import logging

from ..config import Config
from ..errors import DomainXMLError, RtagentError
from ..intent import derive_spec
from ..kernel import Kernel
from ..libvirt_host import LibvirtHost
from ..model import RealtimeSpec
from ..selector import GuestSelector
from ..tuning.guest.claims import ClaimBook, Conflict, claims_of

log = logging.getLogger(__name__)
CANDIDATE = "(this XML)"


def running_conflicts(spec: RealtimeSpec, config: Config) -> tuple[list[Conflict], str | None]:
    """The conflicts the guest of ``spec`` would have if started now (it
    starts last, so running guests keep their pCPUs), and a note when the
    running guests could not be read."""
    if not (spec.realtime and spec.valid and spec.realtime_vcpus):
        return [], None
    kernel = Kernel()
    book = ClaimBook()
    selector = GuestSelector.from_config(config.daemon)  # the guests a daemon here would manage
    host = LibvirtHost(config.libvirt.uri, config.libvirt.call_timeout_s)
    try:
        host.connect()
        for uuid, guest in host.active_guests().items():
            if uuid == spec.uuid or guest.name == spec.domain or not selector.matches_name(guest.name):
                continue
            try:
                other = derive_spec(guest.xml(), config)
            except (DomainXMLError, RtagentError):
                continue
            pid = kernel.qemu.find(guest.name, uuid)
            started = kernel.tasks.stat(pid).starttime if pid is not None else float("inf")
            book.record(uuid, claims_of(other, started))
    except RtagentError as err:
        return [], f"running guests not compared ({err})"
    finally:
        host.close()
    mine = claims_of(spec, float("inf"))
    mine = dataclasses.replace(mine, uuid=spec.uuid or CANDIDATE)
    return list(book.ownership_for(mine).lost_by(mine.uuid)), None
