"""The daemon's interference accounting: one self-contained object.

``InterferenceService.start(config, store)`` → a running service (or None
with a warning when accounting is off, no realtime CPU is configured or
tracefs is unusable: the daemon runs on without it).  It reads the realtime
vCPU threads (the CPUs' owners) and the guests' QEMU PIDs from the state
store, exports metrics through :class:`InterferenceCollector` and adds an
``interference`` section to the status answer (:func:`status_json`).
``stop()`` removes the tracefs instance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..config import Config
from ..kernel.tracefs import TracefsError
from ..state import StateStore
# rtagent's writer for these families too: at one series per realtime vCPU and
# kind, prometheus_client's per-sample writer would cost what exposition.py saves.
from .exposition import counter_family, gauge_family
from .interference import Kind
from .interference_sampler import InterferenceSampler, InterferenceSnapshot, Owners

log = logging.getLogger(__name__)


def owners_from_store(store: StateStore) -> Owners:
    """``{cpu: {tid: (domain, vcpu)}}``: realtime vCPU threads pinned to one CPU."""
    def read(s: StateStore) -> dict[int, dict[int, tuple[str, int]]]:
        out: dict[int, dict[int, tuple[str, int]]] = {}
        for g in s.guests.values():
            if g.report is None or not g.report.realtime:
                continue
            for tp in g.report.threads:
                t, want = tp.thread, tp.want
                if t.role != "vcpu" or t.vcpu is None or want.policy not in ("fifo", "rr"):
                    continue
                if want.cpus is not None and len(want.cpus) == 1:
                    out.setdefault(next(iter(want.cpus)), {})[t.tid] = (g.name, t.vcpu)
        return out
    return store.read(read)


def guests_from_store(store: StateStore) -> Mapping[int, str]:
    return store.read(lambda s: {g.report.pid: g.name for g in s.guests.values()
                                 if g.report is not None and g.report.pid})


class InterferenceService:
    def __init__(self, sampler: InterferenceSampler, alert_share: float = 0.01):
        self.sampler = sampler
        self.alert_share = alert_share

    @classmethod
    def start(cls, config: Config, store: StateStore) -> InterferenceService | None:
        cfg, part = config.interference, config.partition
        if not cfg.enabled:
            return None
        if part is None or not part.realtime:
            log.info("interference accounting off: no realtime CPUs are configured")
            return None
        sampler = InterferenceSampler(
            part.realtime, instance=cfg.instance, owners=lambda: owners_from_store(store),
            guests=lambda: guests_from_store(store), housekeeping=part.housekeeping, top_n=cfg.top_n,
            poll_interval_s=cfg.poll_interval_s, window_s=cfg.window_s, buffer_kb=cfg.buffer_kb)
        try:
            sampler.start()
        except (TracefsError, OSError) as exc:
            log.warning("interference accounting off: %s", exc)
            sampler.stop()
            return None
        log.info("interference accounting on realtime CPUs %s (tracefs instance %s)",
                 ",".join(map(str, sampler.cpus)), cfg.instance)
        return cls(sampler, cfg.alert_share)

    def stop(self, timeout: float = 5.0) -> None:
        self.sampler.stop(timeout)

    def snapshot(self, top: int = 3) -> InterferenceSnapshot:
        return self.sampler.snapshot(top)


def status_json(service: InterferenceService | None) -> dict[str, Any]:
    if service is None:
        return {"running": False, "cpus": []}
    # JSON carries the top 10; the text view shows the first 3.
    return service.snapshot(top=10).to_json()


class InterferenceCollector(Collector):
    """``rtagent_cpu_interference_*`` and ``rtagent_vcpu_preempted_seconds_total``."""

    def __init__(self, service: InterferenceService):
        self.service = service

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.service.snapshot()
        labels = ["cpu", "kind", "source"]
        secs = counter_family("rtagent_cpu_interference_seconds",
                              "Time something other than the realtime CPU's own vCPU ran there (task, "
                              "kthread, guest, irq, softirq); top sources per CPU, the rest source=\"other\".",
                              labels=labels)
        events = counter_family("rtagent_cpu_interference_events",
                                "Times a foreign task was switched in or an IRQ/softirq entered on a realtime CPU.",
                                labels=labels)
        lost = counter_family("rtagent_cpu_interference_lost_events",
                              "Trace events the kernel dropped (buffer full) on a realtime CPU: the "
                              "accounting is incomplete while this grows.", labels=["cpu"])
        share = gauge_family("rtagent_cpu_interference_share",
                             "Foreign share of a realtime CPU over the status window (interference.window_s).",
                             labels=["cpu"])
        pre = counter_family("rtagent_vcpu_preempted_seconds",
                             "Time a realtime vCPU was runnable or running but something else had its CPU, by kind.",
                             labels=["domain", "vcpu", "kind"])
        for c in snap.cpus:
            cpu = str(c.cpu)
            for (kind, source), (ns, count) in sorted(c.exported.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
                secs.add_metric([cpu, kind.value, source], ns / 1e9)
                events.add_metric([cpu, kind.value, source], count)
            lost.add_metric([cpu], c.lost)
            share.add_metric([cpu], c.window.share)
            for (domain, vcpu), per in sorted(c.preempted.items()):
                for kind in Kind:
                    if kind in per:
                        pre.add_metric([domain, str(vcpu), kind.value], per[kind] / 1e9)
        up = gauge_family("rtagent_interference_up", "1 if the interference accounting is reading its trace "
                          "buffers, else 0.")
        up.add_metric([], 1 if snap.running and snap.error is None else 0)
        threshold = gauge_family("rtagent_cpu_interference_alert_share",
                                 "interference.alert_share: the foreign share of a realtime CPU above which "
                                 "RtagentCpuInterferenceHigh fires.")
        threshold.add_metric([], self.service.alert_share)
        yield from (secs, events, lost, share, pre, up, threshold)


def render_status(section: Mapping[str, Any] | None) -> list[str]:
    """The `rtagent status` lines for the ``interference`` section."""
    if not section:
        return []
    if not section.get("running"):
        return ["interference: not accounted (interference.enabled = false, no realtime CPU, or no tracefs)"]
    lines = []
    for c in section.get("cpus", []):
        culprits = ", ".join(f"{x['kind']}:{x['source']} {x['seconds'] * 1000:.1f}ms/{x['count']}"
                             for x in c.get("culprits", [])[:3]) or "-"
        lost = f", {c['lost_events']} events lost" if c.get("lost_events") else ""
        if section.get("error"):
            lost += f", reader error: {section['error']}"
        lines.append(f"interference CPU {c['cpu']}: {c.get('share', 0) * 100:.2f}% foreign over the last "
                     f"{c.get('window_s', 0):.0f}s{lost}; top: {culprits}")
    return lines
