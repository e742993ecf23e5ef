"""One vCPU priority for the host partition: the daemon's host side and
`rtagent host apply` rank per-CPU kernel threads against the same number,
whatever a guest's intent came from (metadata, `<vcpusched>`, a rule)."""

from __future__ import annotations

import dataclasses

import pytest

from rtagent.commands import host as host_cmd
from rtagent.config import Partition, parse_config
from rtagent.daemon.hostside import HostSupervisor
from rtagent.errors import RtagentError
from rtagent.intent import derive_spec
from rtagent.state import StateStore
from rtagent.tuning.guest.report import DomainReport
from rtagent.tuning.host.kthreads import rt_priority_for
from rtagent.tuning.host.priority import vcpu_priority
from tests import guests

pytestmark = pytest.mark.unit

PART = Partition(frozenset({0, 1}), frozenset({1}), frozenset({0}))


def _config(**host_tuning):
    cfg = parse_config({"host_tuning": {"kthreads": False, "irqs": False, "workqueues": False,
                                        "kthread_priorities": False, **host_tuning}}, resolve=False)
    return dataclasses.replace(cfg, partition=PART)


def _metadata_spec(name: str, priority: int, cfg):
    xml = guests.domain_xml(name, virt_type="kvm", cputune=guests.pinned_cputune({0: "0", 1: "1"}),
                            metadata=guests.rt_metadata(priority=priority))
    return derive_spec(xml, cfg)


def _vcpusched_spec(name: str, priority: int, cfg):
    extra = f"<vcpusched vcpus='1' scheduler='fifo' priority='{priority}'/>"
    xml = guests.domain_xml(name, virt_type="kvm", cputune=guests.pinned_cputune({0: "0", 1: "1"}, extra=extra))
    return derive_spec(xml, cfg)


def test_highest_realtime_vcpu_of_any_source_wins():
    cfg = _config()
    specs = [_metadata_spec("a", 5, cfg), _vcpusched_spec("b", 3, cfg)]
    assert all(s.realtime and s.valid for s in specs), [s.errors for s in specs]
    assert vcpu_priority(specs, cfg.realtime.default_priority) == 5
    assert rt_priority_for("ksoftirqd/1", vcpu_priority(specs, 1)) == 6


def test_no_realtime_guest_means_the_default_and_invalid_intents_do_not_count():
    cfg = _config()
    bad = _metadata_spec("c", 99, cfg)  # above realtime.max_priority: invalid, never applied
    assert not bad.valid
    assert vcpu_priority([bad, None], 1) == 1
    assert vcpu_priority([], 4) == 4


def test_the_daemon_host_side_uses_it():
    cfg = _config()
    store = StateStore()
    spec = _metadata_spec("rk-fifo5", 5, cfg)
    store.update(lambda s: setattr(s.guest("u-5", "rk-fifo5"), "report",
                                   DomainReport(name="rk-fifo5", uuid="u-5", spec=spec)))
    assert HostSupervisor(cfg, store)._realtime_priority() == 5


def test_host_apply_uses_the_running_guests(monkeypatch):
    cfg = _config()
    monkeypatch.setattr(host_cmd, "_running_specs", lambda _cfg: [_metadata_spec("rk-fifo5", 5, cfg)])
    assert host_cmd._vcpu_priority(cfg) == 5


def test_host_apply_without_libvirt_ranks_above_the_ceiling(monkeypatch, capsys):
    cfg = _config()

    def unreachable(_cfg):
        raise RtagentError("cannot connect to qemu:///system")

    monkeypatch.setattr(host_cmd, "_running_specs", unreachable)
    assert host_cmd._vcpu_priority(cfg) == cfg.realtime.max_priority
    out = capsys.readouterr().out
    assert "cannot list the running guests" in out and "realtime.max_priority" in out
