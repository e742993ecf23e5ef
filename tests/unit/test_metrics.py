"""The Prometheus collector over a hand-built state store."""

from __future__ import annotations

import re

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rtagent.config import MetricsConfig, Partition, RealtimeConfig
from rtagent.errors import RtagentError
from rtagent.kernel.counters import ThreadCounters
from rtagent.model import MemorySpec, RealtimeSpec, VcpuSpec
from rtagent.monitor.counters import CounterCache
from rtagent.monitor.hostchecks import HostCheck
from rtagent.monitor.metrics import RtagentCollector, serve
from rtagent.daemon import startwindow
from rtagent.state import StateStore
from rtagent.tuning.guest.observe import Observed, ProcessMemory, ThreadInfo
from rtagent.tuning.guest.plan import plan_domain
from rtagent.tuning.guest.report import DomainReport
from rtagent.vocab import Severity

pytestmark = pytest.mark.unit

P = Partition(online=frozenset({0, 1, 2, 3}), realtime=frozenset({2, 3}), housekeeping=frozenset({0, 1}))
MiB = 1 << 20


def thread(tid, name, role="emulator", vcpu=None, kind="other", policy="other", prio=0, cpus=(0, 1),
           delay=0, run=0, nvcsw=0):
    return ThreadInfo(tid=tid, name=name, role=role, vcpu=vcpu, kind=kind, policy=policy, priority=prio,
                      cpus=frozenset(cpus), cgroup_cpu="/machine/g", run_time_ns=run, run_delay_ns=delay,
                      timeslices=1, voluntary_ctxt_switches=0, nonvoluntary_ctxt_switches=nvcsw,
                      delayacct_blkio_ticks=0)


def make_report(name="rt1", uuid="11111111-2222-3333-4444-555555555555", *, v2_policy="fifo",
                flavor=None, v2_thread=True) -> DomainReport:
    spec = RealtimeSpec(
        domain=name, uuid=uuid, realtime=True, source="metadata", flavor=flavor,
        vcpus=(VcpuSpec(0, False, "other", 0, frozenset({1})),
               VcpuSpec(1, True, "fifo", 1, frozenset({2})),
               VcpuSpec(2, True, "fifo", 1, frozenset({3}))),
        emulator_cpus=frozenset({0}), memory=MemorySpec(size_bytes=64 * MiB, locked=True, hugepages=True),
    )
    observed = Observed(
        pid=4000,
        threads=(
            thread(4000, "qemu-system-x86", kind="main", cpus=(0,)),
            thread(4001, "CPU 0/KVM", "vcpu", 0, "vcpu", cpus=(1,), delay=9_000_000_000, run=1, nvcsw=77),
            thread(4002, "CPU 1/KVM", "vcpu", 1, "vcpu", "fifo", 1, cpus=(2,), delay=1_500_000, run=2_000_000_000,
                   nvcsw=3),
            thread(4003, "CPU 2/KVM", "vcpu", 2, "vcpu", v2_policy, 1 if v2_policy == "fifo" else 0, cpus=(3,),
                   delay=250, run=5, nvcsw=0),
        )[:None if v2_thread else 3],
        kthreads=(),
        memory=ProcessMemory(vm_lck_bytes=4 * MiB, hugetlb_bytes=64 * MiB),
    )
    plan = plan_domain(spec, observed, P, RealtimeConfig())
    violations = [v for tp in plan.threads for v in tp.violations()] + plan.violations
    return DomainReport(name=name, uuid=uuid, spec=spec, pid=4000, observed=observed, threads=plan.threads,
                        violations=violations, observed_at=1.0)


def populated_store() -> StateStore:
    store = StateStore()

    def fill(s: StateStore) -> None:
        d = s.daemon
        d.libvirt_connected = True
        d.reconnects = 2
        d.proc_connector = True
        d.events.update({"libvirt": 5, "proc": 40})
        d.events_dropped.update({"proc": 1})
        d.resyncs = 12
        d.full_checks = 2
        d.last_resync_at = 1700000000.0
        d.host = {"realtime_cpus": "2-3"}
        d.host_checks = (
            HostCheck("isolcpus", False, "…", Severity.WARNING),
            HostCheck("rt_throttling", True, "…", Severity.INFO),
            HostCheck("rt_group_sched", False, "…", Severity.ERROR),
            HostCheck("intruders", False, "…", Severity.WARNING, value=7),
        )
        d.host_corrections.update({"irq": 4, "kthread": 9})
        d.host_refused.update({"irq": 2})
        d.reconcile_duration.observe(0.003)
        d.reconcile_duration.observe(0.2)
        d.event_to_tuned.observe(0.04)

        g = s.guest("11111111-2222-3333-4444-555555555555", "rt1")
        g.report = make_report(v2_policy="other")  # vCPU 2 drifted to SCHED_OTHER
        g.corrections.update({"vcpu_policy": 3, "emulator_affinity": 1})
        g.correction_failures.update({"vcpu_policy": 1})
        g.correction_latency.observe(0.002)
        g.correction_latency.observe(0.7)
        g.event_to_tuned_s = 0.04
        # Its start: vCPU 2 made realtime 1.5 ms of run time after libvirt placed it; vCPU 3 not yet.
        g.start_window.update({2: startwindow.landed(startwindow.placed(2, 1102, 500_000), 2, 1102, 2_000_000,
                                                     startwindow.Path.EVENT, False),
                               3: startwindow.placed(3, 1103, 400_000)})

        ok = s.guest("aaaaaaaa-2222-3333-4444-555555555555", "rt2")
        ok.report = make_report("rt2", "aaaaaaaa-2222-3333-4444-555555555555")

        plain = s.guest("bbbbbbbb-2222-3333-4444-555555555555", "plain")
        plain.report = DomainReport(name="plain", uuid=plain.uuid, spec=RealtimeSpec(domain="plain", uuid=plain.uuid))

        s.guest("cccccccc-2222-3333-4444-555555555555", "starting")  # no report yet

    store.update(fill)
    return store


def report_counters(store: StateStore) -> CounterCache:
    """Scrape-time counters as the kernel would give them: here, the values
    the made-up threads of the reports carry (their TIDs are not real)."""
    table = store.read(lambda s: {
        (g.report.pid, t.tid): ThreadCounters(t.run_time_ns, t.run_delay_ns, t.nonvoluntary_ctxt_switches)
        for g in s.guests.values() if g.report is not None and g.report.observed is not None
        for t in g.report.observed.threads})
    return CounterCache(lambda pid, tid: table.get((pid, tid)))


def scrape(store: StateStore) -> tuple[str, dict[str, list]]:
    reg = CollectorRegistry()
    reg.register(RtagentCollector(store, version="9.9.9", counters=report_counters(store)))
    text = generate_latest(reg).decode()
    samples: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return text, samples


def value(samples, name, **labels) -> float:
    hits = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_daemon_metrics():
    text, s = scrape(populated_store())
    assert value(s, "rtagent_build_info", version="9.9.9") == 1
    assert value(s, "rtagent_libvirt_up") == 1
    assert value(s, "rtagent_libvirt_reconnects_total") == 2
    assert value(s, "rtagent_proc_connector_up") == 1
    assert value(s, "rtagent_events_total", source="libvirt") == 5
    assert value(s, "rtagent_events_total", source="proc") == 40
    assert value(s, "rtagent_events_dropped_total", source="proc") == 1
    assert value(s, "rtagent_resyncs_total") == 12
    assert value(s, "rtagent_full_checks_total") == 2
    assert value(s, "rtagent_last_resync_timestamp_seconds") == 1700000000.0
    assert value(s, "rtagent_reconcile_duration_seconds_count") == 2
    assert value(s, "rtagent_reconcile_duration_seconds_sum") == pytest.approx(0.203)
    assert value(s, "rtagent_reconcile_duration_seconds_bucket", le="0.005") == 1
    assert value(s, "rtagent_reconcile_duration_seconds_bucket", le="+Inf") == 2
    assert value(s, "rtagent_event_to_tuned_seconds_count") == 1
    assert value(s, "rtagent_scrape_duration_seconds") >= 0
    t = types(text)
    assert t["rtagent_events"] == "counter" and t["rtagent_libvirt_up"] == "gauge"
    assert t["rtagent_reconcile_duration_seconds"] == "histogram"


def test_host_metrics():
    _, s = scrape(populated_store())
    assert value(s, "rtagent_host_check_ok", check="isolcpus") == 0
    assert value(s, "rtagent_host_check_ok", check="rt_throttling") == 1
    assert value(s, "rtagent_host_check_severity", check="isolcpus") == 1
    assert value(s, "rtagent_host_check_severity", check="rt_group_sched") == 2
    assert value(s, "rtagent_host_check_severity", check="rt_throttling") == 0
    assert value(s, "rtagent_host_intruder_threads") == 7
    assert value(s, "rtagent_host_corrections_total", kind="kthread") == 9
    assert value(s, "rtagent_host_refused", kind="irq") == 2


def test_no_intruder_gauge_without_a_value():
    store = StateStore()
    store.daemon.host_checks = (HostCheck("intruders", False, "3 user threads", Severity.WARNING),)
    _, s = scrape(store)
    assert "rtagent_host_intruder_threads" not in s
    assert value(s, "rtagent_host_check_ok", check="intruders") == 0


def test_domain_info_carries_the_nova_flavor():
    """A fleet query joins on domain_info to ask which flavors lose tuning."""
    store = StateStore()
    store.update(lambda s: setattr(s.guest("u-1", "instance-0001"), "report",
                                   make_report("instance-0001", "u-1", flavor="rt.large")))
    _, s = scrape(store)
    [info] = s["rtagent_domain_info"]
    assert info.labels == {"domain": "instance-0001", "uuid": "u-1", "source": "metadata", "flavor": "rt.large"}


def test_a_realtime_vcpu_without_a_thread_is_reported_untuned():
    """vCPU 2's thread is not in the report (e.g. moved out of its vcpu2 cgroup):
    its tuned series says 0 instead of vanishing; no timing series for it."""
    store = StateStore()
    store.update(lambda s: setattr(s.guest("u-1", "rt1"), "report", make_report("rt1", "u-1", v2_thread=False)))
    _, s = scrape(store)
    assert value(s, "rtagent_vcpu_tuned", domain="rt1", vcpu="1") == 1
    assert value(s, "rtagent_vcpu_tuned", domain="rt1", vcpu="2") == 0
    assert [x.labels["vcpu"] for x in s["rtagent_vcpu_run_delay_seconds_total"]] == ["1"]
    assert [x.labels["vcpu"] for x in s["rtagent_vcpu_policy_info"]] == ["1"]


def test_guest_metrics():
    _, s = scrape(populated_store())
    assert value(s, "rtagent_domain_info", domain="rt1") == 1
    info = [x for x in s["rtagent_domain_info"] if x.labels["domain"] == "rt1"][0]
    assert info.labels == {"domain": "rt1", "uuid": "11111111-2222-3333-4444-555555555555", "source": "metadata",
                           "flavor": ""}
    assert value(s, "rtagent_domain_info", domain="plain", source="") == 1
    assert value(s, "rtagent_domain_info", domain="starting") == 1

    assert value(s, "rtagent_domain_realtime", domain="rt1") == 1
    assert value(s, "rtagent_domain_realtime", domain="plain") == 0
    assert value(s, "rtagent_domain_realtime_intent_valid", domain="rt1") == 1
    assert value(s, "rtagent_domain_compliant", domain="rt1") == 0
    assert value(s, "rtagent_domain_compliant", domain="rt2") == 1
    assert value(s, "rtagent_domain_compliant", domain="plain") == 1
    # a guest without a report yet has only its info and correction series
    assert not [x for x in s["rtagent_domain_compliant"] if x.labels["domain"] == "starting"]

    assert value(s, "rtagent_domain_violations", domain="rt1", check="vcpu_policy") == 1
    assert not [x for x in s.get("rtagent_domain_violations", []) if x.labels["domain"] == "rt2"]

    assert value(s, "rtagent_domain_memory_required_bytes", domain="rt1") == 64 * MiB
    assert value(s, "rtagent_domain_memory_locked_bytes", domain="rt1") == 4 * MiB
    assert value(s, "rtagent_domain_memory_hugetlb_bytes", domain="rt1") == 64 * MiB
    assert value(s, "rtagent_domain_event_to_tuned_seconds", domain="rt1") == 0.04

    assert value(s, "rtagent_drift_corrections_total", domain="rt1", kind="vcpu_policy") == 3
    assert value(s, "rtagent_drift_corrections_total", domain="rt1", kind="emulator_affinity") == 1
    assert value(s, "rtagent_drift_correction_failures_total", domain="rt1", kind="vcpu_policy") == 1
    assert value(s, "rtagent_drift_correction_seconds_count", domain="rt1") == 2
    assert value(s, "rtagent_drift_correction_seconds_bucket", domain="rt1", le="0.0025") == 1
    assert value(s, "rtagent_drift_correction_seconds_bucket", domain="rt1", le="1.0") == 2
    assert value(s, "rtagent_drift_correction_seconds_count", domain="rt2") == 0


def test_start_window_series_only_for_vcpus_whose_fifo_landed():
    _, s = scrape(populated_store())
    assert value(s, "rtagent_vcpu_unprotected_start_seconds", domain="rt1", vcpu="2") == pytest.approx(0.0015)
    assert not [x for x in s["rtagent_vcpu_unprotected_start_seconds"] if x.labels.get("vcpu") == "3"]
    assert not [x for x in s["rtagent_vcpu_unprotected_start_seconds"] if x.labels["domain"] != "rt1"]


def test_vcpu_metrics_only_for_realtime_vcpus():
    text, s = scrape(populated_store())
    assert value(s, "rtagent_vcpu_run_delay_seconds_total", domain="rt1", vcpu="1") == pytest.approx(0.0015)
    assert value(s, "rtagent_vcpu_run_delay_seconds_total", domain="rt1", vcpu="2") == pytest.approx(250e-9)
    assert value(s, "rtagent_vcpu_cpu_seconds_total", domain="rt1", vcpu="1") == pytest.approx(2.0)
    assert value(s, "rtagent_vcpu_involuntary_context_switches_total", domain="rt1", vcpu="1") == 3
    assert value(s, "rtagent_vcpu_policy_info", domain="rt1", vcpu="1", policy="fifo") == 1
    assert value(s, "rtagent_vcpu_policy_info", domain="rt1", vcpu="2", policy="other") == 1
    assert value(s, "rtagent_vcpu_priority", domain="rt1", vcpu="1") == 1
    assert value(s, "rtagent_vcpu_priority", domain="rt1", vcpu="2") == 0
    assert value(s, "rtagent_vcpu_tuned", domain="rt1", vcpu="1") == 1
    assert value(s, "rtagent_vcpu_tuned", domain="rt1", vcpu="2") == 0
    # vCPU 0 is not realtime: no series at all
    for name in ("rtagent_vcpu_run_delay_seconds_total", "rtagent_vcpu_cpu_seconds_total",
                 "rtagent_vcpu_policy_info", "rtagent_vcpu_priority"):
        assert {x.labels["vcpu"] for x in s[name] if x.labels["domain"] == "rt1"} == {"1", "2"}, name
    assert types(text)["rtagent_vcpu_run_delay_seconds"] == "counter"


def test_no_thread_ids_anywhere():
    text, s = scrape(populated_store())
    for name, rows in s.items():
        for x in rows:
            assert not {"tid", "pid", "thread"} & set(x.labels), (name, x.labels)
            for v in x.labels.values():
                assert v not in {"4000", "4001", "4002", "4003"}, (name, x.labels)
    # As a token, not inside a float such as 0.00065678400278 (a time-dependent value).
    assert not re.search(r"(?<![\d.])4002(?!\d)", text)


def test_naming_conventions():
    text, _ = scrape(populated_store())
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("rtagent_")
        if fam.type == "counter":
            assert all(x.name.endswith("_total") for x in fam.samples), fam.name
        else:
            assert not fam.name.endswith("_total"), fam.name
        for unit in ("_ms", "_ns", "_us", "_milliseconds", "_kib", "_mib"):
            assert unit not in fam.name, fam.name


def test_dropped_guest_series_vanish():
    store = populated_store()
    _, before = scrape(store)
    assert any(x.labels.get("domain") == "rt1" for rows in before.values() for x in rows)
    store.drop("11111111-2222-3333-4444-555555555555")
    text, after = scrape(store)
    assert 'domain="rt1"' not in text
    assert value(after, "rtagent_domain_compliant", domain="rt2") == 1


def test_same_name_twice_exports_the_newer_guest():
    store = StateStore()

    def fill(s):
        old = s.guest("old-uuid", "dup")
        old.first_seen = 1.0
        new = s.guest("new-uuid", "dup")
        new.first_seen = 2.0
    store.update(fill)
    _, s = scrape(store)
    assert [x.labels["uuid"] for x in s["rtagent_domain_info"]] == ["new-uuid"]


def test_collect_copies_under_the_lock():
    """collect() enters the store only through read(), once per scrape."""
    store = populated_store()
    calls = []
    real_read = store.read
    store.read = lambda fn: (calls.append(fn), real_read(fn))[1]
    c = RtagentCollector(store)
    list(c.collect())
    list(c.collect())
    assert len(calls) == 2


def test_empty_store():
    _, s = scrape(StateStore())
    assert value(s, "rtagent_libvirt_up") == 0
    assert value(s, "rtagent_libvirt_unresponsive_seconds") == 0


def test_libvirt_unresponsive_seconds_while_libvirtd_hangs():
    import time

    store = StateStore()
    store.daemon.libvirt_connected = True
    store.daemon.libvirt_unresponsive_since = time.time() - 4.0
    _, s = scrape(store)
    assert value(s, "rtagent_libvirt_up") == 1  # the connection is still open
    assert value(s, "rtagent_libvirt_unresponsive_seconds") >= 4.0
    assert "rtagent_domain_info" not in s


# -- the HTTP endpoint ---------------------------------------------------------


def test_serve_and_close():
    store = populated_store()
    server = serve(store, MetricsConfig(listen="127.0.0.1:0"))
    try:
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            body = resp.read().decode()
        assert 'rtagent_domain_compliant{domain="rt2"} 1.0' in body
        assert "process_start_time_seconds" in body  # the agent's own process collector
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)
    server.close()  # idempotent


def test_port_in_use_names_the_key():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        listen = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(RtagentError) as err:
            serve(StateStore(), MetricsConfig(listen=listen))
    assert "metrics.listen" in str(err.value) and listen in str(err.value)


def test_bad_tls_files_fail_before_binding(tmp_path):
    cfg = MetricsConfig(listen="127.0.0.1:0", tls_cert=str(tmp_path / "no.crt"), tls_key=str(tmp_path / "no.key"))
    with pytest.raises(RtagentError) as err:
        serve(StateStore(), cfg)
    assert "metrics.tls_cert" in str(err.value)


def test_tls(tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    crt, key = tmp_path / "m.crt", tmp_path / "m.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    server = serve(populated_store(), MetricsConfig(listen="127.0.0.1:0", tls_cert=str(crt), tls_key=str(key)))
    try:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(crt))
        with urllib.request.urlopen(server.url, timeout=5, context=ctx) as resp:
            assert b"rtagent_libvirt_up 1.0" in resp.read()
    finally:
        server.close()


def test_cpu_conflict_series_names_both_guests_the_threads_and_the_pcpu():
    """Issue 12 item 2: the series RtagentRealtimeCpuConflict alerts on."""
    import dataclasses

    from rtagent.tuning.guest.claims import ClaimRole, Conflict, CpuClaim

    c = Conflict(cpu=2, owner_uuid="u-1", owner="rt1", owner_claim=CpuClaim(ClaimRole.REALTIME_VCPU, frozenset({2}), 1),
                 loser_uuid="u-2", loser="rt2", claim=CpuClaim(ClaimRole.REALTIME_VCPU, frozenset({2}), 1))
    store = StateStore()

    def fill(s):
        s.guest("u-1", "rt1").report = make_report("rt1", "u-1")
        s.guest("u-2", "rt2").report = dataclasses.replace(make_report("rt2", "u-2"), conflicts=(c,))

    store.update(fill)
    _, s = scrape(store)
    assert value(s, "rtagent_cpu_conflict", domain="rt2", cpu="2", thread="realtime vCPU 1", other="rt1",
                 other_thread="realtime vCPU 1") == 1
    assert [x.labels["domain"] for x in s["rtagent_cpu_conflict"]] == ["rt2"]
