"""Fuzz the input parsers (hypothesis): no exception but the documented one.

* :func:`rtagent.intent.parse_domain_xml` and :func:`derive_spec` raise only
  :class:`~rtagent.errors.DomainXMLError` (XML that cannot be read); every
  other problem is an error string in the spec;
* the CPU list parsers (``parse_cpulist``, ``parse_hexmask``,
  ``parse_realtime_mask``, libvirt's ``parse_cpuset``) raise only
  :class:`~rtagent.cpulist.CpuListError` (a ``ValueError``), and what they
  return is within ``0..MAX_CPU``;
* every call finishes within hypothesis' deadline (10 s: a few thousand
  vCPUs each pinned to thousands of CPUs is legal and takes seconds on a
  loaded 2-CPU host): a hostile XML must not hang the daemon or
  ``rtagent plan`` (``<vcpu>100000000</vcpu>`` did, before the bound).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rtagent.config import Config, RealtimeConfig
from rtagent.cpulist import (
    MAX_CPU,
    CpuListError,
    format_cpulist,
    parse_cpulist,
    parse_hexmask,
    parse_realtime_mask,
)
from rtagent.errors import DomainXMLError
from rtagent.intent import derive_spec, parse_cpuset, parse_domain_xml
from tests.reliability.conftest import FULL

pytestmark = [pytest.mark.unit, pytest.mark.reliability]

CFG = Config(realtime=RealtimeConfig(max_priority=10))
EXAMPLES = 3000 if FULL else 300
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# -- CPU lists -------------------------------------------------------------------

cpu_alphabet = st.sampled_from(list("0123456789,-^:/ xabcdefABCDEF") + ["\t", "\n", "٣", "１"])
cpu_tokens = st.lists(st.sampled_from(["0x", "99999999", "8191", "8192", "0-", "^", ":2/4"]), max_size=4).map("".join)
cpu_text = st.text(cpu_alphabet, max_size=40) | st.text(max_size=20) | st.tuples(cpu_text_a := st.text(
    cpu_alphabet, max_size=10), cpu_tokens).map("".join)


def _ok_set(cpus) -> None:
    assert isinstance(cpus, frozenset)
    assert all(isinstance(c, int) and 0 <= c <= MAX_CPU for c in cpus)


@FUZZ
@given(cpu_text)
@example("0-99999999")
@example("0-15:2/4")
@example("1-0")
@example("٣")
def test_parse_cpulist_only_cpulisterror(text):
    try:
        cpus = parse_cpulist(text)
    except CpuListError as err:
        assert isinstance(err, ValueError) and err.reason
        return
    _ok_set(cpus)
    assert parse_cpulist(format_cpulist(cpus)) == cpus if cpus else True


@FUZZ
@given(cpu_text)
@example("ffffffff," * 300)
@example("0x")
def test_parse_hexmask_only_cpulisterror(text):
    try:
        _ok_set(parse_hexmask(text))
    except CpuListError:
        pass


@FUZZ
@given(cpu_text, st.integers(0, 64))
@example("^", 2)
@example("^0-1", 2)
def test_parse_realtime_mask_only_cpulisterror(text, nvcpus):
    try:
        vcpus = parse_realtime_mask(text, range(nvcpus))
    except CpuListError:
        return
    assert vcpus <= set(range(nvcpus))


@FUZZ
@given(cpu_text)
def test_parse_cpuset_only_cpulisterror(text):
    try:
        cpus = parse_cpuset(text)
    except CpuListError:
        return
    _ok_set(cpus)
    assert cpus


# -- domain XML --------------------------------------------------------------------

attr = st.text(st.sampled_from(list("0123456789^,-x ab'\"<&;١")), max_size=12) | st.sampled_from(
    ["99999999999", "0-8191", "1-", "^0-3", "0,^0"])
small = st.integers(-3, 40).map(str) | attr


@st.composite
def domain_xml(draw) -> str:
    """Mostly well-formed libvirt XML with hostile values in every place
    rtagent reads, sometimes cut short or with a DOCTYPE spliced in."""
    def q(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;").replace('"', "&quot;")

    parts = [f"<domain type='{q(draw(st.sampled_from(['kvm', 'qemu', '', 'x'])))}'>"]
    if draw(st.booleans()):
        parts.append(f"<name>{q(draw(st.text(max_size=10)))}</name>")
    parts.append(f"<uuid>{q(draw(st.text(max_size=8)))}</uuid>")
    meta = []
    if draw(st.booleans()):
        attrs = " ".join(f"{k}='{q(draw(small))}'" for k in draw(st.sets(
            st.sampled_from(["mask", "priority", "policy", "enabled"]))))
        meta.append(f"<rt:realtime xmlns:rt='urn:rtagent:realtime:1' {attrs}/>")
    if draw(st.booleans()):
        meta.append("<nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.0'>"
                    f"<nova:flavor name='{q(draw(attr))}'/></nova:instance>")
    parts.append(f"<metadata>{''.join(meta)}</metadata>")
    parts.append(f"<memory unit='{q(draw(st.sampled_from(['KiB', 'MiB', 'b', 'GB', 'x', ''])))}'>"
                 f"{q(draw(small))}</memory>")
    if draw(st.booleans()):
        parts.append("<memoryBacking><hugepages><page size='" + q(draw(small)) + "'/></hugepages><locked/>"
                     "</memoryBacking>")
    vcpu_count = draw(st.integers(0, 6).map(str) | small | st.sampled_from(["100000000", "4096", "8193"]))
    parts.append(f"<vcpu cpuset='{q(draw(attr))}' current='{q(draw(small))}'>{q(vcpu_count)}</vcpu>")
    if draw(st.booleans()):
        parts.append(f"<iothreads>{q(draw(small))}</iothreads>")
        parts.append(f"<iothreadids><iothread id='{q(draw(small))}'/></iothreadids>")
    tune = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["vcpupin", "emulatorpin", "iothreadpin", "vcpusched"]))
        if kind == "vcpupin":
            tune.append(f"<vcpupin vcpu='{q(draw(small))}' cpuset='{q(draw(attr))}'/>")
        elif kind == "emulatorpin":
            tune.append(f"<emulatorpin cpuset='{q(draw(attr))}'/>")
        elif kind == "iothreadpin":
            tune.append(f"<iothreadpin iothread='{q(draw(small))}' cpuset='{q(draw(attr))}'/>")
        else:
            tune.append(f"<vcpusched vcpus='{q(draw(attr))}' scheduler="
                        f"'{q(draw(st.sampled_from(['fifo', 'rr', 'other', 'batch', 'x'])))}' "
                        f"priority='{q(draw(small))}'/>")
    parts.append(f"<cputune>{''.join(tune)}</cputune></domain>")
    xml = "".join(parts)
    mutation = draw(st.sampled_from(["none", "none", "cut", "doctype", "garbage"]))
    if mutation == "cut":
        xml = xml[: draw(st.integers(0, len(xml)))]
    elif mutation == "doctype":
        xml = "<!DOCTYPE domain [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>" + xml
    elif mutation == "garbage":
        i = draw(st.integers(0, len(xml)))
        xml = xml[:i] + draw(st.text(max_size=5)) + xml[i:]
    return xml


@FUZZ
@given(domain_xml())
@example("<domain type='kvm'><name>huge</name><vcpu>100000000</vcpu><metadata>"
         "<rt:realtime xmlns:rt='urn:rtagent:realtime:1' mask='^0'/></metadata></domain>")
@example("<domain type='kvm'><name>huge</name><vcpu>3</vcpu><cputune>"
         "<vcpusched vcpus='0-8191' scheduler='fifo' priority='1'/></cputune></domain>")
def test_derive_spec_only_domainxmlerror(xml):
    for data in (xml, xml.encode("utf-8", "surrogatepass")):
        try:
            spec = derive_spec(data, CFG)
        except DomainXMLError as err:
            assert str(err)
            continue
        # Whatever the XML says, a valid spec keeps the safety rules.
        if spec.realtime and spec.valid:
            for v in spec.realtime_vcpus:
                assert len(v.cpus) == 1 and 1 <= v.priority <= 10
        assert all(e.startswith(f"domain {spec.domain!r}: ") for e in spec.errors)


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
@example(b"\xff\xfe<\x00d\x00")
@example('<?xml version="1.0" encoding="UTF-16"?><domain><name>x</name></domain>')
@example("<domain><name>x</name></domain>\x00")
def test_parse_domain_xml_on_arbitrary_input(data):
    try:
        parse_domain_xml(data)
    except DomainXMLError:
        pass
