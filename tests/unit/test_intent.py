"""Intent derivation and validation (rtagent/intent.py) on domain XML fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtagent.config import Config, RealtimeConfig, Rule
from rtagent.errors import DomainXMLError
from rtagent.intent import (
    derive_spec,
    derive_spec_from_element,
    parse_cpuset,
    parse_domain_xml,
    parse_memory_size,
)
from rtagent.cpulist import CpuListError
from rtagent.model import RealtimeSpec

pytestmark = pytest.mark.unit

XML_DIR = Path(__file__).resolve().parent.parent / "data" / "xml"
RT_NS = "urn:rtagent:realtime:1"
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.0"
CFG = Config()


def domain(
    name: str = "rt1",
    *,
    vcpus: int | str = 4,
    vcpu_attrs: str = "",
    cputune: str = "",
    metadata: str = "",
    memory: str = "<memory unit='MiB'>1024</memory>",
    backing: str = "<memoryBacking><hugepages/><locked/></memoryBacking>",
    extra: str = "",
    virt_type: str = "kvm",
) -> str:
    """A minimal domain XML: just the elements intent reads."""
    return (
        f"<domain type='{virt_type}'><name>{name}</name><uuid>00000000-0000-0000-0000-000000000001</uuid>"
        f"<metadata>{metadata}</metadata>{memory}{backing}"
        f"<vcpu placement='static'{vcpu_attrs}>{vcpus}</vcpu>{extra}"
        f"<cputune>{cputune}</cputune><devices/></domain>"
    )


def pins(mapping: dict[int, str], emulator: str | None = None) -> str:
    out = "".join(f"<vcpupin vcpu='{v}' cpuset='{c}'/>" for v, c in mapping.items())
    if emulator is not None:
        out += f"<emulatorpin cpuset='{emulator}'/>"
    return out


ONE_TO_ONE = pins({0: "0", 1: "1", 2: "2", 3: "3"}, emulator="0-1")


def meta(**attrs: str) -> str:
    text = " ".join(f"{k}='{v}'" for k, v in attrs.items())
    return f"<rt:realtime xmlns:rt='{RT_NS}' {text}/>"


def nova(flavor: str, prefix: str = "nova") -> str:
    return (f"<{prefix}:instance xmlns:{prefix}='{NOVA_NS}'><{prefix}:flavor name='{flavor}'>"
            f"<{prefix}:vcpus>4</{prefix}:vcpus></{prefix}:flavor></{prefix}:instance>")


def sched(vcpus: str | None, scheduler: str = "fifo", priority: str | None = "1") -> str:
    attrs = f" vcpus='{vcpus}'" if vcpus is not None else ""
    attrs += f" scheduler='{scheduler}'"
    if priority is not None:
        attrs += f" priority='{priority}'"
    return f"<vcpusched{attrs}/>"


def rt_ids(spec: RealtimeSpec) -> list[int]:
    return [v.vcpu for v in spec.realtime_vcpus]


def only_error(spec: RealtimeSpec) -> str:
    assert len(spec.errors) == 1, spec.errors
    return spec.errors[0]


# ---------------------------------------------------------------------------
# safe parsing


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<domain type='kvm'><name>&lol3;</name></domain>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<domain type='kvm'><name>&xxe;</name></domain>"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE domain SYSTEM "http://example.invalid/domain.dtd">
<domain type='kvm'><name>x</name></domain>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD])
def test_doctype_and_entities_are_refused(text: str) -> None:
    with pytest.raises(DomainXMLError) as exc:
        parse_domain_xml(text)
    message = str(exc.value)
    assert "refused: DOCTYPE declaration at line 2" in message
    assert "\n" not in message
    assert exc.value.exit_code == 2


def test_external_entity_is_not_resolved_even_as_bytes(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("SECRET")
    text = EXTERNAL_ENTITY.replace("/etc/passwd", str(secret)).encode()
    with pytest.raises(DomainXMLError, match="DOCTYPE"):
        derive_spec(text, CFG)


@pytest.mark.parametrize(
    "text, where",
    [
        ("<domain><name>x</name>", "line 1, column 23"),
        ("<domain>\n  <name>x</nam>\n</domain>", "line 2, column 12"),
        ("", "line 1, column 1"),
        ("<domain a='1' a='2'/>", "line 1, column 15"),
    ],
)
def test_malformed_xml_names_line_and_column(text: str, where: str) -> None:
    with pytest.raises(DomainXMLError) as exc:
        parse_domain_xml(text)
    assert str(exc.value).startswith(f"malformed domain XML at {where}: ")


def test_root_must_be_domain_and_have_a_name() -> None:
    with pytest.raises(DomainXMLError, match=r"root element is <network>, expected <domain>"):
        parse_domain_xml("<network/>")
    with pytest.raises(DomainXMLError, match="has no <name>"):
        derive_spec("<domain type='kvm'><vcpu>1</vcpu></domain>", CFG)


def test_bytes_with_encoding_declaration() -> None:
    text = domain(name="gäst").replace("<domain", "<?xml version='1.0' encoding='ISO-8859-1'?><domain", 1)
    spec = derive_spec(text.encode("latin-1"), CFG)
    assert spec.domain == "gäst"


def test_element_entry_point_matches_text_entry_point() -> None:
    text = domain(cputune=ONE_TO_ONE + sched("2-3"))
    assert derive_spec_from_element(parse_domain_xml(text), CFG) == derive_spec(text, CFG)


# ---------------------------------------------------------------------------
# the seed: Nova's XML for hw:cpu_realtime_mask=^0-1 on 4 vCPUs


def test_nova_seed_xml() -> None:
    spec = derive_spec((XML_DIR / "nova_seed.xml").read_text(), CFG)
    assert spec.domain == "instance-00000003"
    assert spec.uuid == "bcd4164b-f0da-4f70-8864-6514ff5c1c54"
    assert spec.realtime and spec.valid and spec.source == "vcpusched"
    assert spec.flavor == "realtime4"
    assert spec.virt_type == "kvm"
    assert [(v.vcpu, v.realtime, v.policy, v.priority, v.cpus) for v in spec.vcpus] == [
        (0, False, "other", 0, {0}),
        (1, False, "other", 0, {1}),
        (2, True, "fifo", 1, {2}),
        (3, True, "fifo", 1, {3}),
    ]
    assert spec.emulator_cpus == {0, 1}
    assert spec.memory.size_bytes == 1073741824
    assert spec.memory.locked is True
    assert spec.memory.hugepages is False
    assert spec.memory.nosharepages is True
    assert spec.errors == ()
    assert spec.warnings == (
        "domain 'instance-00000003': guest RAM is not backed by hugepages (<memoryBacking><hugepages/>): "
        "TLB misses and page faults add latency",
    )


# ---------------------------------------------------------------------------
# source 1: rtagent metadata


def test_metadata_intent() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE, metadata=meta(mask="^0-1", priority="2", policy="rr")), CFG)
    assert spec.source == "metadata" and spec.realtime and spec.valid
    assert [(v.vcpu, v.policy, v.priority) for v in spec.realtime_vcpus] == [(2, "rr", 2), (3, "rr", 2)]
    assert spec.warnings == ()


def test_metadata_defaults_from_config_and_any_prefix() -> None:
    cfg = Config(realtime=RealtimeConfig(default_priority=3, default_policy="rr"))
    md = f"<x:realtime xmlns:x='{RT_NS}' mask='^0'/>"
    spec = derive_spec(domain(cputune=ONE_TO_ONE, metadata=md), cfg)
    assert rt_ids(spec) == [1, 2, 3]
    assert {(v.policy, v.priority) for v in spec.realtime_vcpus} == {("rr", 3)}


def test_metadata_without_mask_makes_every_vcpu_realtime() -> None:
    # All vCPUs realtime is allowed only with offloaded emulator threads.
    tune = pins({0: "2", 1: "3"}, emulator="0-1")
    spec = derive_spec(domain(vcpus=2, cputune=tune, metadata=meta()), CFG)
    assert rt_ids(spec) == [0, 1] and spec.valid


def test_metadata_in_other_namespace_is_ignored() -> None:
    md = "<rt:realtime xmlns:rt='urn:example:other' mask='^0'/>"
    spec = derive_spec(domain(cputune=ONE_TO_ONE, metadata=md), CFG)
    assert spec.source is None and not spec.realtime


def test_metadata_opt_out_beats_vcpusched_and_rules() -> None:
    cfg = Config(rules=(Rule(match_name="rt*"),))
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3"), metadata=meta(enabled="no")), cfg)
    assert not spec.realtime and spec.valid
    assert spec.source == "metadata"
    assert all(v.policy == "other" and v.priority == 0 for v in spec.vcpus)
    assert "domain 'rt1': opted out of realtime by rtagent metadata (enabled='no')" in spec.warnings
    assert any("libvirt still applies <vcpusched>" in w for w in spec.warnings)


def test_metadata_beats_vcpusched_and_says_so() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("1-3"), metadata=meta(mask="^0-1")), CFG)
    assert spec.source == "metadata" and rt_ids(spec) == [2, 3] and spec.valid
    assert spec.warnings == (
        "domain 'rt1': libvirt still applies <vcpusched> at guest start; rtagent follows the metadata "
        "(realtime vCPUs 2-3 instead of 1-3)",
    )


def test_metadata_agreeing_with_vcpusched_is_quiet() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3"), metadata=meta(mask="^0-1")), CFG)
    assert spec.warnings == ()


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"enabled": "maybe"}, "rtagent metadata enabled='maybe': expected 'yes' or 'no'"),
        ({"priority": "high"}, "rtagent metadata priority='high' is not an integer"),
        ({"policy": "deadline"}, "realtime vCPUs 2-3: policy 'deadline' is not a realtime policy (fifo or rr)"),
    ],
)
def test_metadata_attribute_errors(attrs: dict[str, str], message: str) -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE, metadata=meta(mask="^0-1", **attrs)), CFG)
    assert spec.realtime and not spec.valid
    assert only_error(spec) == f"domain 'rt1': {message}"


# Nova's hw:cpu_realtime_mask forms, through the metadata mask.


@pytest.mark.parametrize(
    "mask, nvcpus, expected",
    [
        ("^0-1", 4, [2, 3]),
        ("2-7", 8, [2, 3, 4, 5, 6, 7]),
        ("0-3,^2", 4, [0, 1, 3]),
        ("^0", 2, [1]),
    ],
)
def test_nova_mask_forms(mask: str, nvcpus: int, expected: list[int]) -> None:
    tune = pins({v: str(v + 1) for v in range(nvcpus)}, emulator="0")
    spec = derive_spec(domain(vcpus=nvcpus, cputune=tune, metadata=meta(mask=mask)), CFG)
    assert rt_ids(spec) == expected
    assert spec.valid, spec.errors


@pytest.mark.parametrize(
    "mask, detail",
    [
        ("^", "'^' without a vCPU at '^'"),
        ("a-b", "expected a CPU number at 'a-b'"),
        ("^a-b", "expected a CPU number at '^a-b'"),
        ("3-1", "range end below its start at '3-1'"),
        ("2-5", "vCPU 4-5 not in the guest's vCPUs 0-3 at '2-5'"),
        ("^7", "excluded vCPU 7 not in the guest's vCPUs 0-3 at '^7'"),
        ("", "empty realtime mask at ''"),
    ],
)
def test_invalid_nova_masks_name_the_token(mask: str, detail: str) -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE, metadata=meta(mask=mask)), CFG)
    assert not spec.valid
    assert spec.errors[0] == f"domain 'rt1': invalid realtime mask {mask!r} (rtagent metadata): {detail}"


# ---------------------------------------------------------------------------
# source 2: libvirt <vcpusched>


def test_multiple_vcpusched_elements() -> None:
    tune = ONE_TO_ONE + sched("2", "fifo", "2") + sched("3", "rr", "3") + sched("0-1", "batch", None)
    spec = derive_spec(domain(cputune=tune), CFG)
    assert spec.source == "vcpusched" and spec.valid
    assert [(v.vcpu, v.realtime, v.policy, v.priority) for v in spec.vcpus] == [
        (0, False, "other", 0), (1, False, "other", 0), (2, True, "fifo", 2), (3, True, "rr", 3),
    ]


def test_vcpusched_libvirt_exclusion_syntax() -> None:
    tune = pins({0: "4", 1: "1", 2: "2", 3: "3"}, emulator="0") + sched("1-3,^2")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert rt_ids(spec) == [1, 3] and spec.valid


def test_vcpusched_without_vcpus_applies_to_all() -> None:
    tune = pins({0: "2", 1: "3"}, emulator="0-1") + sched(None)
    spec = derive_spec(domain(vcpus=2, cputune=tune), CFG)
    assert rt_ids(spec) == [0, 1] and spec.valid


def test_non_realtime_vcpusched_is_not_intent() -> None:
    cfg = Config(rules=(Rule(match_name="rt1", realtime_mask="^0"),))
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("0-3", "batch", None)), cfg)
    assert spec.source == "rule"  # fell through to the config rule
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("0-3", "idle", None)), CFG)
    assert spec.source is None and not spec.realtime


@pytest.mark.parametrize(
    "tune, message",
    [
        (sched("2-3", "fifo", None),
         "<vcpusched vcpus='2-3' scheduler='fifo'> has no integer priority (fifo and rr need one)"),
        (sched("2-3", "rr", "x"),
         "<vcpusched vcpus='2-3' scheduler='rr'> has no integer priority (fifo and rr need one)"),
        (sched("2-3") + sched("3", "rr", "1"),
         "<vcpusched vcpus='3' scheduler='rr'> overlaps <vcpusched vcpus='2-3' scheduler='fifo'> on vCPU 3"),
        (sched("2-5"), "<vcpusched vcpus='2-5' scheduler='fifo'> names vCPU 4-5, but the guest has vCPUs 0-3"),
        (sched("2-x") + sched("3"), "<vcpusched vcpus='2-x' scheduler='fifo'>: expected a CPU number at '2-x'"),
    ],
)
def test_vcpusched_errors(tune: str, message: str) -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + tune), CFG)
    assert spec.realtime and spec.source == "vcpusched"
    assert only_error(spec) == f"domain 'rt1': {message}"


def test_broken_vcpusched_only_is_not_silently_ignored() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("^")), CFG)
    assert spec.source == "vcpusched" and not spec.valid
    assert "domain 'rt1': no realtime vCPU (the intent selects none; at least one is required)" in spec.errors


def test_parse_cpuset() -> None:
    assert parse_cpuset("0-3,^1") == {0, 2, 3}
    assert parse_cpuset(" 4 ") == {4}
    with pytest.raises(CpuListError, match="selects no CPU"):
        parse_cpuset("^1")
    with pytest.raises(CpuListError) as exc:
        parse_cpuset("0,^x")
    assert exc.value.token == "^x"


# ---------------------------------------------------------------------------
# source 3: config rules


def test_rule_by_name_glob_with_mask_priority_policy() -> None:
    cfg = Config(rules=(Rule(match_name="rt*", realtime_mask="^0-1", priority=4, policy="rr"),))
    spec = derive_spec(domain(cputune=ONE_TO_ONE), cfg)
    assert spec.source == "rule" and spec.source_detail == "rule[0] (match_name='rt*')"
    assert [(v.vcpu, v.policy, v.priority) for v in spec.realtime_vcpus] == [(2, "rr", 4), (3, "rr", 4)]
    assert spec.valid


@pytest.mark.parametrize("prefix", ["nova", "n"])
def test_rule_by_flavor_matches_namespace_not_prefix(prefix: str) -> None:
    cfg = Config(rules=(
        Rule(match_flavor="small*", realtime_mask="^0"),
        Rule(match_flavor="realtime*", realtime_mask="^0-1"),
    ))
    spec = derive_spec(domain(name="instance-1", cputune=ONE_TO_ONE, metadata=nova("realtime4", prefix)), cfg)
    assert spec.flavor == "realtime4"
    assert spec.source_detail == "rule[1] (match_flavor='realtime*')"
    assert rt_ids(spec) == [2, 3]


def test_first_matching_rule_wins_and_both_criteria_must_match() -> None:
    cfg = Config(rules=(
        Rule(match_name="rt1", match_flavor="other", realtime_mask="^0"),
        Rule(match_name="rt*", realtime_mask="^0-2"),
        Rule(match_name="rt1", realtime_mask="^0-1"),
    ))
    spec = derive_spec(domain(cputune=ONE_TO_ONE, metadata=nova("realtime4")), cfg)
    assert spec.source_detail == "rule[1] (match_name='rt*')" and rt_ids(spec) == [3]


def test_flavor_rule_needs_a_flavor() -> None:
    cfg = Config(rules=(Rule(match_flavor="*"),))
    spec = derive_spec(domain(cputune=ONE_TO_ONE), cfg)
    assert spec.source is None


def test_rule_without_mask_is_all_vcpus_and_fails_like_nova() -> None:
    cfg = Config(rules=(Rule(match_name="rt1"),))
    spec = derive_spec(domain(cputune=pins({0: "0", 1: "1", 2: "2", 3: "3"})), cfg)
    assert rt_ids(spec) == [0, 1, 2, 3]
    assert spec.errors[0].startswith(
        "domain 'rt1': every vCPU is realtime and the emulator threads are not offloaded to pCPUs apart "
        "from them (realtime requires either one or more non-realtime vCPU(s) or offloaded emulator threads"
    )


def test_rule_mask_out_of_range_for_this_guest() -> None:
    cfg = Config(rules=(Rule(match_name="rt1", realtime_mask="2-5"),))
    spec = derive_spec(domain(cputune=ONE_TO_ONE), cfg)
    assert spec.errors[0] == ("domain 'rt1': invalid realtime mask '2-5' (rule[0].realtime_mask): "
                              "vCPU 4-5 not in the guest's vCPUs 0-3 at '2-5'")


# ---------------------------------------------------------------------------
# no intent


def test_no_intent() -> None:
    tune = pins({0: "0", 1: "1"})
    spec = derive_spec(domain(vcpus=3, vcpu_attrs=" cpuset='4-5'", cputune=tune, backing=""), CFG)
    assert not spec.realtime and spec.valid and spec.source is None
    assert [(v.vcpu, v.realtime, v.policy, v.priority, v.cpus) for v in spec.vcpus] == [
        (0, False, "other", 0, {0}), (1, False, "other", 0, {1}), (2, False, "other", 0, {4, 5}),
    ]
    assert spec.warnings == ()  # no locked/hugepages nagging for ordinary guests
    assert spec.to_json()["source"] is None


def test_problems_of_a_non_realtime_guest_are_warnings() -> None:
    spec = derive_spec(domain(cputune="<vcpupin vcpu='0' cpuset='x'/>"), CFG)
    assert spec.valid
    assert spec.warnings == ("domain 'rt1': <vcpupin vcpu='0'> cpuset='x': expected a CPU number at 'x'",)


# ---------------------------------------------------------------------------
# pinning, emulator and iothreads


def test_vcpu_cpuset_fallback_is_not_one_to_one() -> None:
    tune = "<vcpupin vcpu='1' cpuset='1'/>" + sched("1")
    spec = derive_spec(domain(vcpus=2, vcpu_attrs=" cpuset='0,2'", cputune=tune), CFG)
    assert spec.vcpu(0).cpus == {0, 2}
    assert spec.emulator_cpus == {0, 2} and spec.emulator_source == "nonrealtime-vcpus"
    assert spec.valid


def test_vcpu_cpuset_single_cpu_counts_as_pinning() -> None:
    tune = "<vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='0'/>" + sched("1")
    spec = derive_spec(domain(vcpus=2, vcpu_attrs=" cpuset='3'", cputune=tune), CFG)
    assert spec.vcpu(1).cpus == {3} and spec.valid


def test_emulator_nova_rule_union_of_nonrealtime_vcpus() -> None:
    tune = pins({0: "0", 1: "1", 2: "2", 3: "3"}) + sched("2-3")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert spec.emulator_cpus == {0, 1} and spec.emulator_source == "nonrealtime-vcpus"
    assert spec.valid
    assert spec.to_json()["emulator"] == {"cpus": "0-1", "source": "nonrealtime-vcpus"}


def test_emulator_falls_back_to_vcpu_cpuset() -> None:
    tune = pins({0: "2", 1: "3"}) + sched(None)
    spec = derive_spec(domain(vcpus=2, vcpu_attrs=" cpuset='0-3'", cputune=tune), CFG)
    assert spec.emulator_cpus == {0, 1, 2, 3} and spec.emulator_source == "vcpu-cpuset"
    assert not spec.valid


def test_unpinned_emulator_fails_validation() -> None:
    tune = pins({0: "2", 1: "3"}) + sched(None)
    spec = derive_spec(domain(vcpus=2, cputune=tune), CFG)
    assert spec.emulator_cpus == frozenset() and spec.emulator_source == "unpinned"
    assert ("domain 'rt1': the emulator threads are not pinned, so they may run on the pCPUs of "
            "realtime vCPUs 0-1 (a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)") in spec.errors


def test_iothreads() -> None:
    extra = "<iothreads>3</iothreads><iothreadids><iothread id='5'/></iothreadids>"
    tune = ONE_TO_ONE + sched("2-3") + "<iothreadpin iothread='1' cpuset='0'/><iothreadpin iothread='5' cpuset='1'/>"
    spec = derive_spec(domain(cputune=tune, extra=extra, vcpu_attrs=" cpuset='0-1'"), CFG)
    assert [(t.iothread, t.cpus) for t in spec.iothreads] == [(1, {0}), (2, {0, 1}), (5, {1})]
    assert spec.valid
    assert spec.to_json()["iothreads"][0] == {"iothread": 1, "cpus": "0"}


def test_iothread_pin_for_unknown_iothread() -> None:
    tune = ONE_TO_ONE + sched("2-3") + "<iothreadpin iothread='2' cpuset='0'/>"
    spec = derive_spec(domain(cputune=tune, extra="<iothreads>1</iothreads>"), CFG)
    assert "domain 'rt1': <iothreadpin iothread='2'> names no iothread of the guest" in spec.errors


# ---------------------------------------------------------------------------
# validation rules, one by one


def test_no_realtime_vcpu() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE, metadata=meta(mask="^0-3")), CFG)
    assert only_error(spec) == "domain 'rt1': no realtime vCPU (the intent selects none; at least one is required)"


def test_all_realtime_needs_offloaded_emulator() -> None:
    tune = pins({0: "0", 1: "1"}, emulator="1-2")
    spec = derive_spec(domain(vcpus=2, cputune=tune, metadata=meta()), CFG)
    assert spec.errors[0].startswith("domain 'rt1': every vCPU is realtime and the emulator threads are not "
                                     "offloaded")
    assert spec.errors[1] == ("domain 'rt1': realtime vCPU 1 shares pCPU 1 with the emulator threads "
                              "(a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)")


def test_realtime_vcpu_pinned_to_several_pcpus() -> None:
    tune = pins({0: "0", 1: "1", 2: "2-3", 3: "4"}, emulator="0-1") + sched("2-3")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert only_error(spec) == ("domain 'rt1': realtime vCPU 2 is pinned to pCPUs 2-3, not to exactly one "
                                "pCPU (realtime needs dedicated 1:1 pinning)")


def test_realtime_vcpu_not_pinned() -> None:
    tune = pins({0: "0", 1: "1", 2: "2"}, emulator="0-1") + sched("2-3")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert only_error(spec) == ("domain 'rt1': realtime vCPU 3 is not pinned (realtime needs dedicated 1:1 "
                                "pinning: add <vcpupin>)")


def test_two_realtime_vcpus_on_one_pcpu() -> None:
    tune = pins({0: "0", 1: "1", 2: "2", 3: "2"}, emulator="0-1") + sched("2-3")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert only_error(spec) == ("domain 'rt1': realtime vCPUs 2-3 share pCPU 2 "
                                "(each realtime vCPU needs a pCPU of its own)")


def test_realtime_vcpu_shares_with_emulator() -> None:
    tune = pins({0: "0", 1: "2", 2: "1", 3: "3"}, emulator="0-1") + sched("2-3")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert only_error(spec) == ("domain 'rt1': realtime vCPU 2 shares pCPU 1 with the emulator threads "
                                "(a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)")


def test_realtime_vcpu_shares_with_iothread() -> None:
    tune = ONE_TO_ONE + sched("2-3") + "<iothreadpin iothread='1' cpuset='1,3'/>"
    spec = derive_spec(domain(cputune=tune, extra="<iothreads>1</iothreads>"), CFG)
    assert only_error(spec) == ("domain 'rt1': realtime vCPU 3 shares pCPU 3 with iothread 1 "
                                "(a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)")


def test_unpinned_iothread_is_an_error_for_realtime_guests() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3"), extra="<iothreads>1</iothreads>"), CFG)
    assert spec.errors == (
        "domain 'rt1': iothread 1 is not pinned, so it may run on the pCPUs of realtime vCPUs 2-3 "
        "(a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)",
    )


def test_realtime_vcpu_shares_with_nonrealtime_vcpu() -> None:
    tune = pins({0: "0", 1: "1-2", 2: "2", 3: "3"}, emulator="0") + sched("2-3")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert only_error(spec) == ("domain 'rt1': realtime vCPU 2 shares pCPU 2 with non-realtime vCPU 1 "
                                "(a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)")


@pytest.mark.parametrize("priority", ["0", "11", "99"])
def test_priority_out_of_range(priority: str) -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3", "fifo", priority)), CFG)
    assert only_error(spec) == (f"domain 'rt1': realtime vCPUs 2-3: priority {priority} outside 1..10 "
                                "(realtime.max_priority keeps guests below the host's kernel threads)")


def test_priority_ceiling_from_config() -> None:
    cfg = Config(realtime=RealtimeConfig(max_priority=50))
    assert derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3", "fifo", "50")), cfg).valid
    assert not derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3", "fifo", "51")), cfg).valid


# ---------------------------------------------------------------------------
# memory


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        ("1048576", None, 1 << 30),
        ("1073741824", "b", 1 << 30),
        ("1073741824", "bytes", 1 << 30),
        ("1000", "KB", 1_000_000),
        ("1024", "k", 1 << 20),
        ("1024", "KiB", 1 << 20),
        ("1", "MB", 1_000_000),
        ("1024", "M", 1 << 30),
        ("1024", "MiB", 1 << 30),
        ("1", "GB", 1_000_000_000),
        ("1", "G", 1 << 30),
        ("1", "GiB", 1 << 30),
        ("2", "TB", 2 * 10**12),
        ("2", "T", 2 << 40),
        ("2", "TiB", 2 << 40),
        ("1", "gib", 1 << 30),  # libvirt compares case-insensitively
    ],
)
def test_memory_units(value: str, unit: str | None, expected: int) -> None:
    assert parse_memory_size(value, unit) == expected
    unit_attr = f" unit='{unit}'" if unit is not None else ""
    spec = derive_spec(domain(memory=f"<memory{unit_attr}>{value}</memory>"), CFG)
    assert spec.memory.size_bytes == expected


@pytest.mark.parametrize("value, unit", [("1", "furlongs"), ("-1", "KiB"), ("1.5", "GiB"), ("", None)])
def test_bad_memory_values(value: str, unit: str | None) -> None:
    with pytest.raises(ValueError):
        parse_memory_size(value, unit)


def test_bad_memory_in_realtime_guest_is_an_error() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3"), memory="<memory unit='parsecs'>1</memory>"), CFG)
    assert only_error(spec) == "domain 'rt1': <memory>: unknown memory unit 'parsecs'"


def test_hugepage_size() -> None:
    backing = "<memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/></hugepages><locked/></memoryBacking>"
    spec = derive_spec(domain(backing=backing), CFG)
    assert spec.memory.hugepages and spec.memory.page_size_bytes == 2 << 20
    spec = derive_spec(domain(backing="<memoryBacking><hugepages><page size='1' unit='G'/></hugepages></memoryBacking>"),
                       CFG)
    assert spec.memory.page_size_bytes == 1 << 30
    assert derive_spec(domain(), CFG).memory.page_size_bytes is None


def test_missing_locked_and_hugepages_are_warnings() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3"), backing=""), CFG)
    assert spec.valid
    assert spec.warnings == (
        "domain 'rt1': guest RAM is not locked (<memoryBacking><locked/>): the host may swap or migrate its "
        "pages under a realtime vCPU",
        "domain 'rt1': guest RAM is not backed by hugepages (<memoryBacking><hugepages/>): TLB misses and "
        "page faults add latency",
    )


# ---------------------------------------------------------------------------
# other domain facts


def test_vcpu_current_and_tcg_warnings() -> None:
    spec = derive_spec(domain(cputune=ONE_TO_ONE + sched("2-3"), vcpu_attrs=" current='2'", virt_type="qemu"), CFG)
    assert spec.virt_type == "qemu" and len(spec.vcpus) == 4 and spec.valid
    assert spec.warnings == (
        "domain 'rt1': <vcpu current='2'> of 4: the plan covers all 4 vCPUs, so hotplugged ones are tuned too",
        "domain 'rt1': domain type 'qemu' is not kvm: vCPU threads are emulated (TCG) and cannot give "
        "realtime latency",
    )


@pytest.mark.parametrize(
    "extra_tune, message",
    [
        ("<vcpupin vcpu='7' cpuset='1'/>", "<vcpupin vcpu='7'> names no vCPU of the guest (vCPUs 0-3)"),
        ("<vcpupin vcpu='0' cpuset='0'/>", "vCPU 0 has more than one <vcpupin>"),
        ("<emulatorpin cpuset='^0'/>", "<emulatorpin> cpuset='^0': selects no CPU at '^0'"),
    ],
)
def test_structural_problems_of_realtime_guest(extra_tune: str, message: str) -> None:
    tune = pins({0: "0", 1: "1", 2: "2", 3: "3"}) + extra_tune + sched("2-3")
    spec = derive_spec(domain(cputune=tune), CFG)
    assert f"domain 'rt1': {message}" in spec.errors


def test_bad_vcpu_count() -> None:
    spec = derive_spec(domain(vcpus="four", cputune=sched("0")), CFG)
    assert "domain 'rt1': <vcpu> count 'four' is not a positive integer" in spec.errors


def test_metadata_key_ignores_text_after_the_metadata_element() -> None:
    """ElementTree writes an element's tail with it; canonical XML refuses
    text after the document element (a fuzz case: ``</metadata>0<memory>``)."""
    import xml.etree.ElementTree as ET

    from rtagent.intent import metadata_key

    with_tail = ET.fromstring("<domain><metadata><x a='1'/></metadata>0<memory>1</memory></domain>")
    without = ET.fromstring("<domain><metadata><x a='1'/></metadata><memory>1</memory></domain>")
    assert metadata_key(with_tail) == metadata_key(without) == '<metadata><x a="1"></x></metadata>'
    assert with_tail.find("metadata").tail == "0"  # the parsed tree is left as it was
