"""rtagent's own exposition writer against prometheus_client's: byte for
byte the same text (0.0.4) and OpenMetrics, for every family the collector
emits, odd label values included; other collectors still go through the
library; content negotiation is the library's."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest

from rtagent.monitor.counters import CounterCache
from rtagent.monitor.exposition import ColumnMetric, FastMetric, choose_encoder, fmt_value, render, render_parts
from rtagent.monitor.metrics import RtagentCollector
from rtagent.state import StateStore
from tests.unit.test_metrics import make_report, populated_store, report_counters

pytestmark = pytest.mark.unit

OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class _Fixed(RtagentCollector):
    """The scrape-duration gauge is the one sample that differs per collect."""

    def collect(self):
        for m in super().collect():
            if m.name != "rtagent_scrape_duration_seconds":
                yield m


def _store() -> StateStore:
    store = populated_store()

    def odd(s: StateStore) -> None:
        g = s.guest("dddddddd-2222-3333-4444-555555555555", 'we"ird\\name\nx')
        g.report = make_report('we"ird\\name\nx', "dddddddd-2222-3333-4444-555555555555", flavor="m1.rt")
        g.corrections.update({"vcpu_affinity": 1234567})  # Go's exponent formatting
    store.update(odd)
    return store


@pytest.mark.parametrize("openmetrics", [False, True])
def test_same_bytes_as_prometheus_client(openmetrics):
    store = _store()
    reg = CollectorRegistry()
    reg.register(_Fixed(store, version="9.9.9", counters=report_counters(store)))
    Counter("other_thing", "A library metric beside ours.", registry=reg).inc(3)
    library = om_latest if openmetrics else generate_latest
    encoder, content_type = choose_encoder(OM if openmetrics else "")
    assert content_type.startswith("application/openmetrics-text" if openmetrics else "text/plain")
    ours, theirs = encoder(reg), library(reg)
    # Families may come in another order (ours after the library's); the bytes of each are the same.
    split = (lambda b: sorted(b.decode().replace("# EOF\n", "").split("# HELP ")))
    assert split(ours) == split(theirs)
    assert ours.endswith(b"# EOF\n") == openmetrics
    assert b'domain="we\\"ird\\\\name\\nx"' in ours


def test_fast_metric_is_a_metric_for_the_library():
    m = FastMetric("x_seconds", "Doc.", "histogram", ["domain"])
    m.add_metric(["a"], [("0.1", 1), ("+Inf", 3)], 0.5)
    names = [(s.name, s.labels, s.value) for s in m.samples]
    assert names == [("x_seconds_bucket", {"domain": "a", "le": "0.1"}, 1),
                     ("x_seconds_bucket", {"domain": "a", "le": "+Inf"}, 3),
                     ("x_seconds_count", {"domain": "a"}, 3), ("x_seconds_sum", {"domain": "a"}, 0.5)]
    c = FastMetric("y_total", "Doc.", "counter")
    assert c.name == "y"


def test_only_fast_families():
    reg = CollectorRegistry()
    reg.register(RtagentCollector(StateStore(), counters=CounterCache(lambda pid, tid: None)))
    text = render(reg, generate_latest, False)
    assert text.startswith(b"# HELP rtagent_build_info")
    om = render(reg, om_latest, True)
    assert om.count(b"# EOF") == 1 and om.endswith(b"# EOF\n")


def test_fmt_value_matches_go_formatting():
    from prometheus_client.utils import floatToGoString
    for v in (0, 1, 7, 999_999, 1_000_000, 123_456_789, -3, 0.5, 1e-9, 2.0, float("inf"), float("nan"), 0.0, -0.0,
              1e-07, 3.14159e-05, 123456.789, 999999.999999, 1e6, 1234567.5, 1e21, -2.5, 12345.000000001):
        assert fmt_value(v) == floatToGoString(v), v


def test_the_endpoint_encodes_through_exposition():
    """The HTTP handler must use this module's encoder, or rtagent's families
    fall back to prometheus_client's per-sample writer (~8× the CPU)."""
    from rtagent.monitor import exposition, httpd

    assert httpd.choose_parts_encoder is exposition.choose_parts_encoder


@pytest.mark.parametrize("openmetrics", [False, True])
def test_one_collector_across_changes_writes_what_a_fresh_one_writes(openmetrics):
    """The collector keeps each guest's rows (and the writer its text) while
    what they show stays; every kind of change shows on the next scrape,
    byte for byte what prometheus_client writes for the new state."""
    store = _store()
    counters = report_counters(store)
    reg = CollectorRegistry()
    reg.register(_Fixed(store, version="9.9.9", counters=counters))
    encoder, _ = choose_encoder(OM if openmetrics else "")
    library = om_latest if openmetrics else generate_latest
    split = (lambda b: sorted(b.decode().replace("# EOF\n", "").split("# HELP ")))
    first = encoder(reg)
    assert encoder(reg) == first  # steady state: the same bytes

    def change(s: StateStore) -> None:
        g = s.guests["11111111-2222-3333-4444-555555555555"]
        g.corrections.update({"vcpu_policy": 1})
        g.correction_latency.observe(0.05)
        s.guests["aaaaaaaa-2222-3333-4444-555555555555"].report = make_report(
            "rt2", "aaaaaaaa-2222-3333-4444-555555555555", v2_policy="other")
        del s.guests["dddddddd-2222-3333-4444-555555555555"]
    store.update(change)
    ours = encoder(reg)
    assert ours != first
    fresh = CollectorRegistry()
    fresh.register(_Fixed(store, version="9.9.9", counters=counters))
    assert split(ours) == split(library(fresh))
    assert b"we\\\"ird" not in ours


class _Columns:
    """A collector of ColumnMetric families (the vCPU counters' kind) with
    whatever columns the test gives."""

    def __init__(self, labels, *columns):
        self.labels, self.columns = labels, columns

    def collect(self):
        for i, values in enumerate(self.columns):
            yield ColumnMetric(f"col{i}", "Doc % with a percent.", "counter" if i % 2 else "gauge",
                               ["domain", "vcpu"], self.labels, values)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_columns_write_what_prometheus_client_writes(openmetrics):
    labels = (("a", "1"), ('we"ird%s\\', "2"), ("100%", "3"), ("c", "4"))
    columns = [
        [0.0, 1.5, 1e-05, 999_999.5],  # the % format's floats, the exponent form of repr included
        [0, 3, 999_999, 12],  # its ints
        [0.25, None, 2.0, 3.0],  # a gap: row by row
        [1.0, 2_000_000.0, 3.0, 4.0],  # past 1e6: Go's exponent form
        [1, 2, 1_234_567, 4],
        [1.0, float("nan"), 2.0, 3.0],
        [1.0, 2, 3.0, 4.0],  # mixed types
        [-1.0, 0.5, 0.5, 0.5],
        [None, None, None, None],
    ]
    reg = CollectorRegistry()
    reg.register(_Columns(labels, *columns))
    library = om_latest if openmetrics else generate_latest
    split = (lambda b: sorted(b.decode().replace("# EOF\n", "").split("# HELP ")))
    ours = render(reg, library, openmetrics)
    assert split(ours) == split(library(reg))
    assert render(reg, library, openmetrics) == ours  # again, from what the first scrape kept


def test_columns_unchanged_are_the_bytes_of_the_last_scrape():
    labels = (("a", "1"), ("b", "2"))
    reg = CollectorRegistry()
    c = _Columns(labels, [1.0, 2.0])
    reg.register(c)
    first = [p for p in render_parts(reg, generate_latest, False) if b"col0" in p]
    again = [p for p in render_parts(reg, generate_latest, False) if b"col0" in p]
    assert again[0] is first[0]  # the gzip of the answer recognises it (gzipparts.py)
    c.columns = ([1.0, 2.5],)
    moved = [p for p in render_parts(reg, generate_latest, False) if b"col0" in p]
    assert moved[0] != first[0] and b'col0{domain="b",vcpu="2"} 2.5\n' in moved[0]


def test_a_column_metric_is_built_whole():
    m = ColumnMetric("x", "Doc.", "gauge", ["domain"], (("a",),), [1.0])
    with pytest.raises(TypeError):
        m.add_metric(["b"], 2.0)
    with pytest.raises(ValueError):
        ColumnMetric("x", "Doc.", "histogram", ["domain"], (), [])
    assert [(s.name, s.labels, s.value) for s in m.samples] == [("x", {"domain": "a"}, 1.0)]


def test_promtool_checks_the_text_we_write():
    """Prometheus' own linter over the whole answer (our writer, the column
    families, the library's families beside them)."""
    import shutil
    import subprocess

    from prometheus_client import ProcessCollector

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/setup-host.sh installs it)")
    store = _store()
    reg = CollectorRegistry()
    reg.register(RtagentCollector(store, version="9.9.9", counters=report_counters(store)))
    ProcessCollector(registry=reg)
    text = choose_encoder("")[0](reg)
    assert b"rtagent_vcpu_run_delay_seconds_total{" in text
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
