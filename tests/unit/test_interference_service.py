"""The daemon side of the interference accounting without a kernel: owners
from the state store, the collector's series and the status lines, over a
sampler fed synthetic events."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rtagent.monitor.interference import IntrEnter, IntrExit, Kind, Switch
from rtagent.monitor.interference_sampler import InterferenceSampler
from rtagent.monitor.interference_service import (
    InterferenceCollector, InterferenceService, render_status, status_json,
)

pytestmark = pytest.mark.unit

OWNER = 4242


def populated_service() -> InterferenceService:
    """CPU 1 owned by vCPU 1 of guest rt1; 2 ms of a host task while the
    vCPU was preempted, 30 µs of an IRQ while it ran."""
    s = InterferenceSampler([1], instance="unit")
    owners = {1: {OWNER: ("rt1", 1)}}
    s._acc[1].classify = lambda pid, comm: (Kind.TASK, comm)
    s.account({1: ([], 0)}, owners, 0.0)
    events = [
        Switch(1_000, 0, 0, OWNER, "CPU 1/KVM"),
        Switch(2_000, OWNER, 0x100, 77, "stress"),
        Switch(2_002_000, 77, 1, OWNER, "CPU 1/KVM"),
        IntrEnter(3_000_000, Kind.IRQ, "eth0"), IntrExit(3_030_000, Kind.IRQ, ""),
        Switch(4_000_000, OWNER, 1, 0, "swapper/1"),
    ]
    s.account({1: (events, 2)}, owners, 1.0)
    s.account({1: ([], 0)}, owners, 2.0)
    return InterferenceService(s, alert_share=0.02)


def samples(service) -> dict[tuple[str, tuple], float]:
    reg = CollectorRegistry()
    reg.register(InterferenceCollector(service))
    text = generate_latest(reg).decode()
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for fam in text_string_to_metric_families(text) for x in fam.samples}


def test_collector_series():
    got = samples(populated_service())
    task = ("rtagent_cpu_interference_seconds_total", (("cpu", "1"), ("kind", "task"), ("source", "stress")))
    irq = ("rtagent_cpu_interference_events_total", (("cpu", "1"), ("kind", "irq"), ("source", "eth0")))
    # the first export admitted nothing (nothing seen yet), the second admitted
    # both at their totals: what they had is in "other", growth after that is theirs
    assert got[task] == 0.0 and got[irq] == 0
    other = ("rtagent_cpu_interference_seconds_total", (("cpu", "1"), ("kind", "task"), ("source", "other")))
    assert got[other] == pytest.approx(0.002)
    assert got[("rtagent_vcpu_preempted_seconds_total", (("domain", "rt1"), ("kind", "task"), ("vcpu", "1")))] \
        == pytest.approx(0.002)
    assert got[("rtagent_vcpu_preempted_seconds_total", (("domain", "rt1"), ("kind", "irq"), ("vcpu", "1")))] \
        == pytest.approx(30e-6)
    assert got[("rtagent_cpu_interference_lost_events_total", (("cpu", "1"),))] == 2
    assert got[("rtagent_cpu_interference_alert_share", ())] == 0.02
    assert got[("rtagent_interference_up", ())] == 0   # never opened a tracefs instance
    share = got[("rtagent_cpu_interference_share", (("cpu", "1"),))]
    assert share == pytest.approx((0.002 + 30e-6) / 2.0)


def test_status_json_and_lines():
    svc = populated_service()
    js = status_json(svc)
    cpu = js["cpus"][0]
    assert cpu["cpu"] == 1 and cpu["lost_events"] == 2
    assert [c["source"] for c in cpu["culprits"]] == ["stress", "eth0"]
    js["running"] = True
    lines = render_status(js)
    assert lines[0].startswith("interference CPU 1: 0.10% foreign over the last 2s, 2 events lost; top: task:stress 2.0ms/1")
    assert render_status({"running": False, "cpus": []})[0].startswith("interference: not accounted")
    assert status_json(None) == {"running": False, "cpus": []}


def test_gone_vcpu_loses_its_series():
    svc = populated_service()
    svc.sampler.account({1: ([], 0)}, {}, 3.0)
    names = {k[0] for k in samples(svc)}
    assert "rtagent_vcpu_preempted_seconds_total" not in names


def test_status_json_counts_switches_the_kernel_left_out():
    s = InterferenceSampler([1], instance="unit")
    s._acc[1].classify = lambda pid, comm: (Kind.TASK, comm or "?")
    s.account({1: ([], 0)}, {}, 0.0)
    events = [Switch(0, 5, 1, 0, "swapper/1", prev_comm="a"),
              IntrEnter(10_000, Kind.IRQ, "reschedule", pid=0), IntrExit(11_000, Kind.IRQ, "reschedule", pid=0),
              # idle -> 77 is not in the trace; its tick names it
              IntrEnter(500_000, Kind.IRQ, "local_timer", pid=77), IntrExit(505_000, Kind.IRQ, "local_timer", pid=77),
              Switch(900_000, 77, 1, 0, "swapper/1", prev_comm="stress")]
    s.account({1: (events, 0)}, {}, 1.0)
    cpu = s.snapshot().to_json()["cpus"][0]
    assert cpu["inferred_switches"] == 1
    assert cpu["culprits"][0]["source"] == "stress" and cpu["culprits"][0]["seconds"] == pytest.approx(884e-6)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_collector_writes_what_prometheus_client_writes(openmetrics):
    """Its families go through rtagent's writer (exposition.py), byte for byte
    what prometheus_client's own writer makes of the same families."""
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    from rtagent.monitor.exposition import FastMetric, render

    reg = CollectorRegistry()
    reg.register(InterferenceCollector(populated_service()))
    assert all(isinstance(m, FastMetric) for m in reg.collect())
    library = om_latest if openmetrics else generate_latest
    assert render(reg, library, openmetrics) == library(reg)
