"""Rendering rtagent's own metric families, fast; prometheus_client for the rest.

Measured (B3, 100 guests × 10 realtime vCPUs, ~8,700 samples): a scrape
through prometheus_client took ~80 ms of CPU — ~25 ms building ``Sample``
namedtuples and label dicts in ``add_metric``, ~55 ms in ``generate_latest``'s
per-sample ``sample_line`` (label-name validation by regex, sorting and
escaping every label of every sample, ``str.format``).  The goal is 20 ms.
So exactly that part is replaced, for rtagent's families only:

* :class:`FastMetric` is a prometheus_client ``Metric`` (``collect()`` still
  yields real metric families, and ``.samples`` is built on demand for any
  other consumer) whose ``add_metric`` only appends a tuple of label values;
* :func:`render` writes those families itself, in the text format 0.0.4 or
  OpenMetrics 1.0 (what Prometheus asks for first), byte-for-byte what
  prometheus_client writes for them (a unit test compares), with each
  label set's text built once per scrape and shared between families;
* everything else in the registry (``ProcessCollector``, the servers'
  connection counters) is still rendered by prometheus_client's own
  encoder, chosen by its own ``choose_encoder`` from the request's Accept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client.exposition import choose_encoder as _library_choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

__all__ = ["ColumnMetric", "FastMetric", "counter_family", "gauge_family", "render", "render_parts", "choose_encoder", "choose_parts_encoder", "fmt_value"]

_OM_EOF = b"# EOF\n"
_OM = "application/openmetrics-text"


def fmt_value(v: float | int) -> str:
    """prometheus_client's ``floatToGoString``, with its common case (a small
    non-negative integer: counts, 0/1 gauges) done without the float round trip."""
    t = type(v)
    if t is int and 0 <= v < 1_000_000:
        return f"{v}.0"
    if t is float and 0.0 <= v < 1e6:
        return repr(v)  # what floatToGoString returns below 7 integer digits
    return floatToGoString(v)


def _escape(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


class FastMetric(Metric):
    """A gauge, counter or histogram family with prometheus_client's
    ``add_metric`` signatures (``GaugeMetricFamily`` & co.), stored as rows."""

    def __init__(self, name: str, documentation: str, typ: str, labels: Sequence[str] = ()):
        if typ == "counter" and name.endswith("_total"):
            name = name[:-6]
        self.name, self.documentation, self.type, self.unit = name, documentation, typ, ""
        self._labelnames = tuple(labels)
        # Label order in the output is sorted by name (as prometheus_client does).
        self._order = tuple(sorted(range(len(self._labelnames)), key=lambda i: self._labelnames[i]))
        self._rows: list[tuple[tuple[str, ...], Any, Any]] = []

    def add_metric(self, labels: Sequence[str], value: Any, sum_value: Any = None, timestamp: Any = None) -> None:
        """Gauges/counters: ``(labels, value)``; histograms: ``(labels, buckets,
        sum_value)`` with ``buckets`` as ``[(le, cumulative count), …]``."""
        self._rows.append((tuple(labels), value, sum_value))

    @property
    def rows(self) -> list[tuple[tuple[str, ...], Any, Any]]:
        """The rows as :meth:`add_metric` stores them (callers that keep rows
        across scrapes extend this list directly)."""
        return self._rows

    # -- prometheus_client's view (OpenMetrics via the library, tests, …) ----

    @property
    def samples(self) -> list[Sample]:
        out = []
        for values, value, sum_value in self.rows:
            labels = dict(zip(self._labelnames, values, strict=True))
            if self.type == "histogram":
                for le, count in value:
                    out.append(Sample(f"{self.name}_bucket", {**labels, "le": le}, count))
                out.append(Sample(f"{self.name}_count", labels, value[-1][1]))
                out.append(Sample(f"{self.name}_sum", labels, sum_value))
            else:
                out.append(Sample(self.name + ("_total" if self.type == "counter" else ""), labels, value))
        return out

    @samples.setter
    def samples(self, _value: list) -> None:  # Metric.__init__ and copies assign it
        pass

    # -- our own writer --------------------------------------------------------

    def _prefixes(self, sample: str, memo: dict) -> dict[tuple[str, ...], str]:
        """label values -> ``name{labels} `` of this sample's series, built
        once and kept across scrapes (label sets are stable: guests and vCPUs
        come and go rarely); started afresh when it grew past the bound."""
        key = (sample, "prefixes")
        got = memo.get(key)
        if got is None or len(got) > _MEMO_MAX:
            got = memo[key] = {}
        return got

    def _prefix(self, sample: str, values: tuple[str, ...], prefixes: dict) -> str:
        names = self._labelnames
        ls = ",".join(f'{names[i]}="{_escape(values[i])}"' for i in self._order)
        s = prefixes[values] = f"{sample}{{{ls}}} " if ls else f"{sample} "
        return s

    def write(self, out: list[bytes], openmetrics: bool, memo: dict) -> None:
        """Append this family's text, UTF-8 encoded, to ``out``."""
        # A family whose rows are what they were at the last scrape (most of
        # them, in the steady state) is re-emitted as it was written then:
        # the same bytes object, which the gzip of the answer recognises
        # (rtagent/monitor/gzipparts.py).
        key = (self.name, openmetrics, "family")
        hit = memo.get(key)
        if hit is not None and hit[0] == self._rows:
            out.append(hit[1])
            return
        mine: list[str] = []
        self._write(mine, openmetrics, memo)
        text = "".join(mine).encode("utf-8")
        memo[key] = (self._rows, text)
        out.append(text)

    def _head(self, openmetrics: bool) -> str:
        """The family's ``# HELP`` and ``# TYPE`` lines."""
        name = self.name
        head = name + "_total" if self.type == "counter" and not openmetrics else name
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            doc = doc.replace('"', r"\"")
        return f"# HELP {head} {doc}\n# TYPE {head} {self.type}\n"

    def _write(self, out: list[str], openmetrics: bool, memo: dict) -> None:
        name = self.name
        out.append(self._head(openmetrics))
        if self.type == "histogram":
            self._write_histogram(out, memo)
            return
        sample = name + "_total" if self.type == "counter" else name
        prefixes = self._prefixes(sample, memo)
        get, append = prefixes.get, out.append
        for values, value, _ in self._rows:
            p = get(values) or self._prefix(sample, values, prefixes)
            # fmt_value's common cases inline: this loop runs per sample.
            t = type(value)
            if t is float and 0.0 <= value < 1e6:
                append(f"{p}{value!r}\n")
            elif t is int and 0 <= value < 1_000_000:
                append(f"{p}{value}.0\n")
            else:
                append(f"{p}{fmt_value(value)}\n")

    def _write_histogram(self, out: list[str], memo: dict) -> None:
        name = self.name
        for values, buckets, sum_value in self._rows:
            # A histogram row rarely changes (corrections are rare): its
            # whole block is kept, keyed by what it shows.
            key = (name, values, tuple(buckets), sum_value)
            block = memo.get(key)
            if block is None:
                names = self._labelnames
                inner = ",".join(f'{names[i]}="{_escape(values[i])}"' for i in self._order)
                ls = f"{{{inner}}}" if inner else ""
                pre = f"{name}_bucket{{{inner}," if inner else f"{name}_bucket{{"
                lines = [f'{pre}le="{le}"}} {fmt_value(count)}\n' for le, count in buckets]
                lines.append(f"{name}_count{ls} {fmt_value(buckets[-1][1])}\n{name}_sum{ls} {fmt_value(sum_value)}\n")
                block = memo[key] = "".join(lines)
            out.append(block)


class ColumnMetric(FastMetric):
    """A gauge or counter family given as two aligned columns: ``labels``
    (label-value tuples; the caller keeps the one object while the series
    stay) and ``values`` (one per label tuple; ``None`` = no sample).

    For the per-scrape vCPU counters: 1,000 series whose label sets stay
    and whose values all change.  Their lines are one ``%`` format of the
    whole column (``name{labels} %r``, built once per ``labels`` object):
    no row tuple, prefix lookup or f-string per sample; ``repr`` is what
    :func:`fmt_value` writes for a float in [0, 1e6), ``%d.0`` for an int
    there.  Anything else (a gap, a larger value) is written row by row."""

    def __init__(self, name: str, documentation: str, typ: str, labelnames: Sequence[str],
                 labels: tuple[tuple[str, ...], ...], values: list):
        if typ not in ("gauge", "counter"):
            raise ValueError(f"a ColumnMetric is a gauge or counter, not {typ!r}")
        super().__init__(name, documentation, typ, labelnames)
        self._labels, self._values = labels, values

    @classmethod
    def like(cls, family: FastMetric, labels: tuple[tuple[str, ...], ...], values: list) -> ColumnMetric:
        """``family``'s name, help, type and label names, with these columns."""
        return cls(family.name, family.documentation, family.type, family._labelnames, labels, values)

    def add_metric(self, labels: Sequence[str], value: Any, sum_value: Any = None, timestamp: Any = None) -> None:
        raise TypeError("a ColumnMetric is built whole, from its two columns")

    @property
    def rows(self) -> list[tuple[tuple[str, ...], Any, Any]]:
        return [(labels, v, None) for labels, v in zip(self._labels, self._values, strict=True) if v is not None]

    def write(self, out: list[bytes], openmetrics: bool, memo: dict) -> None:
        key = (self.name, openmetrics, "columns")
        hit = memo.get(key)
        if hit is not None and hit[0] is self._labels and hit[1] == self._values:
            out.append(hit[2])  # nothing moved (idle threads): the very bytes of the last scrape
            return
        spec = _column_spec(self._values)
        if spec is None:
            mine: list[str] = []
            self._rows = self.rows  # the general writer, row by row
            self._write(mine, openmetrics, memo)
            body = "".join(mine)
        else:
            body = self._head(openmetrics) + self._format(spec, memo) % tuple(self._values)
        text = body.encode("utf-8")
        memo[key] = (self._labels, self._values, text)
        out.append(text)

    def _format(self, spec: str, memo: dict) -> str:
        """``name{labels} <spec>\\n`` for every label tuple, one string,
        built once per ``labels`` object (the collector keeps it while the
        series stay) and value format."""
        sample = self.name + "_total" if self.type == "counter" else self.name
        key = (sample, spec, "column format")
        hit = memo.get(key)
        if hit is not None and hit[0] is self._labels:
            return hit[1]
        prefixes = self._prefixes(sample, memo)
        fmt = "".join((prefixes.get(v) or self._prefix(sample, v, prefixes)).replace("%", "%%") + spec
                      for v in self._labels)
        memo[key] = (self._labels, fmt)
        return fmt


def _column_spec(values: list) -> str | None:
    """The ``%`` conversion that writes every value of the column as
    :func:`fmt_value` would, or None (a gap, a mix of types, a value
    outside [0, 1e6), a NaN)."""
    if not values:
        return "%r\n"  # no lines: the format is empty
    kinds = set(map(type, values))  # a None shows here as a second type
    spec = {float: "%r\n", int: "%d.0\n"}.get(kinds.pop()) if len(kinds) == 1 else None
    if spec is None or not (0 <= min(values) and max(values) < 1_000_000):
        return None
    total = sum(values)
    return spec if total == total else None  # a NaN, which min() and max() can step over


def counter_family(name: str, documentation: str, labels: Sequence[str] = ()) -> FastMetric:
    """A drop-in for prometheus_client's ``CounterMetricFamily(name, documentation, labels=…)``."""
    return FastMetric(name, documentation, "counter", labels)


def gauge_family(name: str, documentation: str, labels: Sequence[str] = ()) -> FastMetric:
    """A drop-in for prometheus_client's ``GaugeMetricFamily(name, documentation, labels=…)``."""
    return FastMetric(name, documentation, "gauge", labels)


# Series prefixes and histogram blocks, kept across scrapes; dropped whole
# when it grows past this (guests churned), so it stays bounded.
_MEMO: dict = {}
_MEMO_MAX = 200_000


class _Listed(Collector):
    """A fixed list of families, for prometheus_client's encoders."""

    def __init__(self, metrics: list[Metric]):
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return iter(self._metrics)


def render_parts(registry: Collector, library_encoder: Callable[[Collector], bytes],
                 openmetrics: bool) -> list[bytes]:
    """One collect() of ``registry`` as the answer's parts, in order: the
    other families by ``library_encoder``, then one part per FastMetric
    family (:meth:`FastMetric.write`; an unchanged family is the bytes object
    of the last scrape), OpenMetrics' ``# EOF`` last."""
    fast: list[FastMetric] = []
    other: list[Metric] = []
    for m in registry.collect():
        (fast if isinstance(m, FastMetric) else other).append(m)
    body = library_encoder(_Listed(other)) if other else b""
    if openmetrics and body.endswith(_OM_EOF):
        body = body[:-len(_OM_EOF)]
    out: list[bytes] = [body]
    if len(_MEMO) > _MEMO_MAX:
        _MEMO.clear()
    memo = _MEMO
    for m in fast:
        m.write(out, openmetrics, memo)
    if openmetrics:
        out.append(_OM_EOF)
    return out


def render(registry: Collector, library_encoder: Callable[[Collector], bytes], openmetrics: bool) -> bytes:
    """:func:`render_parts`, joined."""
    return b"".join(render_parts(registry, library_encoder, openmetrics))


def choose_parts_encoder(accept_header: str) -> tuple[Callable[[Collector], list[bytes]], str]:
    """prometheus_client's ``choose_encoder`` (same negotiation, same content
    types), with :func:`render_parts` doing rtagent's families."""
    library, content_type = _library_choose_encoder(accept_header)
    openmetrics = content_type.startswith(_OM)
    return (lambda registry: render_parts(registry, library, openmetrics)), content_type


def choose_encoder(accept_header: str) -> tuple[Callable[[Collector], bytes], str]:
    """As :func:`choose_parts_encoder`, the answer joined into one body."""
    parts, content_type = choose_parts_encoder(accept_header)
    return (lambda registry: b"".join(parts(registry))), content_type

