"""Domain XML (+ config rules) → :class:`~rtagent.model.RealtimeSpec`.  Pure.

Three intent sources, the first one found wins (docs/design.md, "Intent"):

1. rtagent's own metadata element ``<rt:realtime xmlns:rt="urn:rtagent:realtime:1"
   mask= priority= policy= enabled=>`` — works where libvirt cannot apply
   ``<vcpusched>`` itself (RT group scheduling);
2. libvirt's native ``<cputune><vcpusched scheduler='fifo|rr'>`` — what Nova,
   KubeVirt and hand-written XML produce;
3. the first config ``[[rule]]`` matching the domain name and/or Nova flavor,
   with Nova's ``hw:cpu_realtime_mask`` semantics.

``enabled="no"`` in the metadata opts a guest out even when ``<vcpusched>`` or
a rule would make it realtime: the result is ``realtime=False`` with
``source="metadata"`` (the metadata *did* decide) and a warning saying so.

Pinning, emulator and iothread sets follow libvirt: ``<vcpupin>`` else
``<vcpu cpuset>``, ``<emulatorpin>`` else Nova's rule (the pCPUs of the
non-realtime vCPUs), ``<iothreadpin>`` else ``<vcpu cpuset>``.  An empty set
means "not pinned", i.e. any host CPU — which is why an unpinned emulator or
iothread fails validation for a realtime guest.

Problems found while reading a realtime guest are *errors* (``valid=False``,
nothing applied); for a guest that is not realtime they are only warnings,
since rtagent leaves such a guest alone anyway.  Only XML that cannot be read
at all (malformed, DOCTYPE/ENTITY, not a ``<domain>``, no ``<name>``) raises
:class:`~rtagent.errors.DomainXMLError`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from xml.parsers import expat

from .config import Config
from .cpulist import MAX_CPU, CpuListError, format_cpulist, interned, parse_cpulist, parse_realtime_mask
from .errors import DomainXMLError
from .model import REALTIME_POLICIES, IOThreadSpec, MemorySpec, RealtimeSpec, VcpuSpec

__all__ = [
    "RT_NS",
    "NOVA_NS",
    "parse_domain_xml",
    "parse_cpuset",
    "parse_memory_size",
    "derive_spec",
    "derive_spec_from_element",
    "validate",
]

RT_NS = "urn:rtagent:realtime:1"
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.0"

# Upper bound on <vcpu>: QEMU's largest machine types allow 4096 (q35 with
# x2APIC); the CPU list parsers' bound is MAX_CPU + 1.
MAX_VCPUS = MAX_CPU + 1

# libvirt's <vcpusched scheduler=…> values; "other"/"none" = SCHED_OTHER.
_NON_RT_SCHEDULERS = frozenset({"batch", "idle", "other", "none"})


# ---------------------------------------------------------------------------
# safe XML parsing


class _Refused(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _refuse(what: str):
    def handler(*_args: object) -> None:
        raise _Refused(what)

    return handler


def _guard(text: str | bytes) -> None:
    """Scan with expat, refusing DOCTYPE/ENTITY before anything is expanded.

    libvirt never emits a DOCTYPE, so refusing every one is cheaper and safer
    than judging entities: no billion laughs, no external entity fetched.
    """
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse("DOCTYPE declaration")
    parser.EntityDeclHandler = _refuse("ENTITY declaration")
    parser.ExternalEntityRefHandler = _refuse("external entity reference")
    try:
        parser.Parse(text, True)
    except _Refused as err:
        raise DomainXMLError(
            f"domain XML refused: {err.what} at line {parser.CurrentLineNumber} "
            "(DOCTYPE and ENTITY declarations are not accepted: libvirt never writes them "
            "and they allow entity-expansion and external-entity attacks)"
        ) from None
    except expat.ExpatError as err:
        raise DomainXMLError(
            f"malformed domain XML at line {err.lineno}, column {err.offset + 1}: "
            f"{expat.ErrorString(err.code)}"
        ) from None


def parse_domain_xml(text: str | bytes) -> ET.Element:
    """Parse a libvirt domain XML safely; the root must be ``<domain>``."""
    _guard(text)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:  # pragma: no cover - the guard pass saw it first
        line, col = err.position
        raise DomainXMLError(f"malformed domain XML at line {line}, column {col + 1}: {err}") from None
    if root.tag != "domain":
        raise DomainXMLError(f"not a libvirt domain XML: root element is <{root.tag}>, expected <domain>")
    return root


# ---------------------------------------------------------------------------
# small syntaxes


def parse_cpuset(text: str) -> frozenset[int]:
    """libvirt's cpuset syntax: kernel list items plus ``^`` exclusions.

    Unlike Nova's mask, exclusions only subtract from the listed items
    (``0-3,^1`` = 0,2,3; ``^1`` alone selects nothing), and a set that selects
    nothing is an error, as libvirt rejects it.
    """
    included: set[int] = set()
    excluded: set[int] = set()
    for token in text.split(","):
        body = token.strip()
        negate = body.startswith("^")
        try:
            cpus = parse_cpulist(body[1:] if negate else body)
        except CpuListError as err:
            raise CpuListError(text, body, err.reason) from None
        (excluded if negate else included).update(cpus)
    result = included - excluded
    if not result:
        raise CpuListError(text, text.strip(), "selects no CPU")
    return interned(result)  # one instance per set: every guest's pins are kept (cpulist.interned)


# libvirt's virScaleInteger: case-insensitive; "k"/"KiB" = 1024, "KB" = 1000.
_SCALE_EXP = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_memory_size(value: str, unit: str | None) -> int:
    """``<memory unit=…>N</memory>`` in bytes, with libvirt's unit rules
    (default KiB).  Raises ValueError naming the bad value or unit."""
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"memory size {value!r} is not a whole number")
    number = int(text)
    suffix = (unit if unit is not None else "KiB").strip()
    low = suffix.lower()
    if low in ("b", "byte", "bytes"):
        return number
    if low and low[0] in _SCALE_EXP:
        rest = low[1:]
        if rest in ("", "ib"):
            return number * 1024 ** _SCALE_EXP[low[0]]
        if rest == "b":
            return number * 1000 ** _SCALE_EXP[low[0]]
    raise ValueError(f"unknown memory unit {suffix!r}")


def _attr_cpuset(elem: ET.Element, attr: str, where: str, problems: list[str]) -> frozenset[int] | None:
    """Parse a cpuset attribute; a bad one is reported and treated as absent."""
    raw = elem.get(attr)
    if raw is None:
        return None
    try:
        return parse_cpuset(raw)
    except CpuListError as err:
        problems.append(f"{where} {attr}={raw!r}: {err.reason} at {err.token!r}")
        return None


def _int(raw: str | None) -> int | None:
    if raw is None:
        return None
    raw = raw.strip()
    return int(raw) if raw.isdigit() and raw.isascii() else None


# ---------------------------------------------------------------------------
# facts read from the XML


@dataclass(frozen=True)
class DomainFacts:
    """Everything intent derivation needs, read once from the XML."""

    name: str
    uuid: str = ""
    virt_type: str = "kvm"
    flavor: str | None = None
    vcpu_count: int = 1
    vcpu_current: int | None = None
    vcpu_cpuset: frozenset[int] | None = None
    vcpupins: Mapping[int, frozenset[int]] = field(default_factory=dict)
    emulatorpin: frozenset[int] | None = None
    iothreads: tuple[IOThreadSpec, ...] = ()
    memory: MemorySpec = field(default_factory=MemorySpec)
    problems: tuple[str, ...] = ()

    @property
    def vcpu_ids(self) -> range:
        return range(self.vcpu_count)

    def pins(self, vcpu: int) -> frozenset[int]:
        """The vCPU's pCPUs as libvirt applies them; empty = not pinned."""
        if vcpu in self.vcpupins:
            return self.vcpupins[vcpu]
        return self.vcpu_cpuset or frozenset()


def _read_vcpus(root: ET.Element, problems: list[str]) -> tuple[int, int | None, frozenset[int] | None]:
    elem = root.find("vcpu")
    if elem is None:
        return 1, None, None  # libvirt's default: one vCPU
    count = _int(elem.text)
    if count is None or count < 1:
        problems.append(f"<vcpu> count {(elem.text or '').strip()!r} is not a positive integer")
        count = 0
    elif count > MAX_VCPUS:
        # Every vCPU gets a spec (and maybe an error line): an absurd count
        # would make derivation hang ``rtagent plan`` or the daemon.
        problems.append(f"<vcpu> count {count} is above {MAX_VCPUS} (no hypervisor runs that many vCPUs)")
        count = 0
    current = _int(elem.get("current"))
    cpuset = _attr_cpuset(elem, "cpuset", "<vcpu>", problems)
    return count, current, cpuset


def _read_vcpupins(cputune: ET.Element | None, count: int, problems: list[str]) -> dict[int, frozenset[int]]:
    pins: dict[int, frozenset[int]] = {}
    if cputune is None:
        return pins
    for pin in cputune.findall("vcpupin"):
        vcpu = _int(pin.get("vcpu"))
        if vcpu is None or vcpu >= count:
            problems.append(f"<vcpupin vcpu={pin.get('vcpu')!r}> names no vCPU of the guest "
                            f"(vCPUs {format_cpulist(range(count)) or '(none)'})")
            continue
        if vcpu in pins:
            problems.append(f"vCPU {vcpu} has more than one <vcpupin>")
            continue
        cpus = _attr_cpuset(pin, "cpuset", f"<vcpupin vcpu='{vcpu}'>", problems)
        if cpus is not None:
            pins[vcpu] = cpus
    return pins


def _read_iothreads(root: ET.Element, cputune: ET.Element | None, fallback: frozenset[int] | None,
                    problems: list[str]) -> tuple[IOThreadSpec, ...]:
    ids: list[int] = []
    for elem in root.findall("iothreadids/iothread"):
        tid = _int(elem.get("id"))
        if tid is None or tid < 1:
            problems.append(f"<iothreadids><iothread id={elem.get('id')!r}> is not a positive integer")
        elif tid not in ids:
            ids.append(tid)
    count_elem = root.find("iothreads")
    if count_elem is not None:
        count = _int(count_elem.text)
        if count is None:
            problems.append(f"<iothreads> count {(count_elem.text or '').strip()!r} is not an integer")
            count = 0
        elif count > MAX_VCPUS:
            problems.append(f"<iothreads> count {count} is above {MAX_VCPUS}")
            count = 0
        # libvirt numbers the iothreads not listed in <iothreadids> from 1 up.
        candidate = 1
        while len(ids) < count:
            if candidate not in ids:
                ids.append(candidate)
            candidate += 1
    pins: dict[int, frozenset[int]] = {}
    if cputune is not None:
        for pin in cputune.findall("iothreadpin"):
            tid = _int(pin.get("iothread"))
            if tid is None or tid not in ids:
                problems.append(f"<iothreadpin iothread={pin.get('iothread')!r}> names no iothread of the guest")
                continue
            cpus = _attr_cpuset(pin, "cpuset", f"<iothreadpin iothread='{tid}'>", problems)
            if cpus is not None:
                pins[tid] = cpus
    return tuple(IOThreadSpec(t, pins.get(t, fallback or frozenset())) for t in sorted(ids))


def _read_memory(root: ET.Element, problems: list[str]) -> MemorySpec:
    size = 0
    elem = root.find("memory")
    if elem is None:
        problems.append("no <memory> element")
    else:
        try:
            size = parse_memory_size(elem.text or "", elem.get("unit"))
        except ValueError as err:
            problems.append(f"<memory>: {err}")
    backing = root.find("memoryBacking")
    if backing is None:
        return MemorySpec(size_bytes=size)
    hugepages = backing.find("hugepages")
    page_size = None
    if hugepages is not None:
        page = hugepages.find("page")
        if page is not None and page.get("size") is not None:
            try:
                page_size = parse_memory_size(page.get("size", ""), page.get("unit"))
            except ValueError as err:
                problems.append(f"<hugepages><page>: {err}")
    return MemorySpec(
        size_bytes=size,
        locked=backing.find("locked") is not None,
        hugepages=hugepages is not None,
        page_size_bytes=page_size,
        nosharepages=backing.find("nosharepages") is not None,
    )


def _read_flavor(root: ET.Element) -> str | None:
    # Matched by namespace URI: the "nova:" prefix is only a convention.
    flavor = root.find(f"metadata/{{{NOVA_NS}}}instance/{{{NOVA_NS}}}flavor")
    return None if flavor is None else flavor.get("name")


def read_facts(root: ET.Element) -> DomainFacts:
    """Read the parts of a ``<domain>`` element that intent depends on."""
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError("domain XML has no <name>")
    problems: list[str] = []
    count, current, vcpu_cpuset = _read_vcpus(root, problems)
    cputune = root.find("cputune")
    emulatorpin = None
    if cputune is not None and (pin := cputune.find("emulatorpin")) is not None:
        emulatorpin = _attr_cpuset(pin, "cpuset", "<emulatorpin>", problems)
    return DomainFacts(
        name=name,
        uuid=(root.findtext("uuid") or "").strip(),
        virt_type=root.get("type", "kvm"),
        flavor=_read_flavor(root),
        vcpu_count=count,
        vcpu_current=current,
        vcpu_cpuset=vcpu_cpuset,
        vcpupins=_read_vcpupins(cputune, count, problems),
        emulatorpin=emulatorpin,
        iothreads=_read_iothreads(root, cputune, vcpu_cpuset, problems),
        memory=_read_memory(root, problems),
        problems=tuple(problems),
    )


# ---------------------------------------------------------------------------
# intent sources


@dataclass(frozen=True)
class Intent:
    """Which vCPUs are realtime and how, as one source states it.

    ``sched`` maps each realtime vCPU to (policy, priority); a priority of
    None means the source gave none usable (already reported in problems).
    """

    source: str | None
    realtime: bool
    sched: Mapping[int, tuple[str, int | None]] = field(default_factory=dict)
    detail: str | None = None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


NO_INTENT = Intent(source=None, realtime=False)


def _mask_vcpus(mask: str | None, facts: DomainFacts, what: str, problems: list[str]) -> frozenset[int]:
    if mask is None:
        return frozenset(facts.vcpu_ids)
    try:
        return parse_realtime_mask(mask, facts.vcpu_ids)
    except CpuListError as err:
        problems.append(f"invalid realtime mask {mask!r} ({what}): {err.reason} at {err.token!r}")
        return frozenset()


def metadata_intent(root: ET.Element, facts: DomainFacts, config: Config) -> Intent | None:
    """Source 1: ``<metadata><rt:realtime …/>``; None when absent."""
    elems = root.findall(f"metadata/{{{RT_NS}}}realtime")
    if not elems:
        return None
    elem = elems[0]
    problems: list[str] = []
    notes: list[str] = []
    if len(elems) > 1:
        notes.append(f"{len(elems)} rtagent metadata elements; only the first is used")
    enabled = elem.get("enabled", "yes").strip().lower()
    if enabled == "no":
        return Intent(source="metadata", realtime=False, detail="metadata enabled='no'",
                      notes=("opted out of realtime by rtagent metadata (enabled='no')",))
    if enabled != "yes":
        problems.append(f"rtagent metadata enabled={elem.get('enabled')!r}: expected 'yes' or 'no'")
    policy = elem.get("policy", config.realtime.default_policy).strip()
    priority: int | None = config.realtime.default_priority
    if (raw := elem.get("priority")) is not None:
        priority = _int(raw)
        if priority is None:
            problems.append(f"rtagent metadata priority={raw!r} is not an integer")
    vcpus = _mask_vcpus(elem.get("mask"), facts, "rtagent metadata", problems)
    return Intent(source="metadata", realtime=True, sched={v: (policy, priority) for v in vcpus},
                  detail="metadata", problems=tuple(problems), notes=tuple(notes))


def vcpusched_intent(root: ET.Element, facts: DomainFacts) -> Intent | None:
    """Source 2: libvirt's ``<vcpusched>``; None when no element asks for fifo/rr."""
    elems = root.findall("cputune/vcpusched")
    problems: list[str] = []
    notes: list[str] = []
    sched: dict[int, tuple[str, int | None]] = {}
    seen: dict[int, str] = {}
    all_vcpus = frozenset(facts.vcpu_ids)
    for elem in elems:
        scheduler = (elem.get("scheduler") or "").strip()
        raw_vcpus = elem.get("vcpus")
        label = f"<vcpusched vcpus={raw_vcpus!r} scheduler={scheduler!r}>" if raw_vcpus is not None \
            else f"<vcpusched scheduler={scheduler!r}>"
        if raw_vcpus is None:
            vcpus = all_vcpus  # libvirt: no vcpus attribute = the default for all
        else:
            try:
                vcpus = parse_cpuset(raw_vcpus)
            except CpuListError as err:
                problems.append(f"{label}: {err.reason} at {err.token!r}")
                continue
            if missing := vcpus - all_vcpus:
                problems.append(f"{label} names vCPU {format_cpulist(missing)}, but the guest has vCPUs "
                                f"{format_cpulist(all_vcpus) or '(none)'}")
                vcpus &= all_vcpus
        if overlap := vcpus & seen.keys():
            problems.append(f"{label} overlaps {seen[min(overlap)]} on vCPU {format_cpulist(overlap)}")
            vcpus -= overlap
        seen.update({v: label for v in vcpus})
        if scheduler in REALTIME_POLICIES:
            priority = _int(elem.get("priority"))
            if priority is None:
                problems.append(f"{label} has no integer priority (fifo and rr need one)")
            sched.update({v: (scheduler, priority) for v in vcpus})
        elif scheduler not in _NON_RT_SCHEDULERS:
            notes.append(f"{label}: unknown scheduler, ignored")
    if not sched:
        if problems:  # realtime was probably meant; don't fall through silently
            return Intent(source="vcpusched", realtime=True, detail="<vcpusched>",
                          problems=tuple(problems), notes=tuple(notes))
        return None
    return Intent(source="vcpusched", realtime=True, sched=sched, detail="<vcpusched>",
                  problems=tuple(problems), notes=tuple(notes))


def rule_intent(facts: DomainFacts, config: Config) -> Intent | None:
    """Source 3: the first config ``[[rule]]`` matching name and/or flavor."""
    for index, rule in enumerate(config.rules):
        if not rule.matches(facts.name, facts.flavor):
            continue
        what = f"rule[{index}]"
        problems: list[str] = []
        vcpus = _mask_vcpus(rule.realtime_mask, facts, f"{what}.realtime_mask", problems)
        policy = rule.policy or config.realtime.default_policy
        priority = rule.priority if rule.priority is not None else config.realtime.default_priority
        matched = ", ".join(f"{k}={v!r}" for k, v in (("match_name", rule.match_name),
                                                       ("match_flavor", rule.match_flavor)) if v is not None)
        return Intent(source="rule", realtime=True, sched={v: (policy, priority) for v in vcpus},
                      detail=f"{what} ({matched})", problems=tuple(problems))
    return None


def choose_intent(root: ET.Element, facts: DomainFacts, config: Config) -> Intent:
    """First source found wins; say so when a weaker one disagrees."""
    meta = metadata_intent(root, facts, config)
    native = vcpusched_intent(root, facts)
    if meta is not None:
        if native is not None and native.realtime and dict(native.sched) != dict(meta.sched):
            note = ("libvirt still applies <vcpusched> at guest start; rtagent follows the metadata "
                    f"(realtime vCPUs {format_cpulist(meta.sched) or 'none'} instead of "
                    f"{format_cpulist(native.sched) or 'none'})")
            return Intent(meta.source, meta.realtime, meta.sched, meta.detail, meta.problems,
                          meta.notes + (note,))
        return meta
    if native is not None:
        return native
    return rule_intent(facts, config) or NO_INTENT


# ---------------------------------------------------------------------------
# assembling and validating the spec


def _emulator(facts: DomainFacts, realtime: Iterable[int]) -> tuple[frozenset[int], str]:
    """``<emulatorpin>``, else Nova's rule: the pCPUs of the non-realtime vCPUs,
    else ``<vcpu cpuset>``, else unpinned (empty)."""
    if facts.emulatorpin is not None:
        return facts.emulatorpin, "emulatorpin"
    rt = set(realtime)
    others = [facts.pins(v) for v in facts.vcpu_ids if v not in rt]
    if others and all(others):
        return frozenset().union(*others), "nonrealtime-vcpus"
    if facts.vcpu_cpuset:
        return facts.vcpu_cpuset, "vcpu-cpuset"
    return frozenset(), "unpinned"


def _vcpu_specs(facts: DomainFacts, intent: Intent) -> tuple[VcpuSpec, ...]:
    specs = []
    for v in facts.vcpu_ids:
        if intent.realtime and v in intent.sched:
            policy, priority = intent.sched[v]
            specs.append(VcpuSpec(v, True, policy, priority or 0, facts.pins(v)))
        else:
            specs.append(VcpuSpec(v, False, "other", 0, facts.pins(v)))
    return tuple(specs)


def _plural(cpus: Iterable[int], word: str) -> str:
    cpus = sorted(cpus)
    return f"{word}{'s' if len(cpus) > 1 else ''} {format_cpulist(cpus)}"


def _check_priorities(vcpus: Iterable[VcpuSpec], intent: Intent, ceiling: int) -> list[str]:
    errors = []
    by_priority: dict[int, list[int]] = {}
    by_policy: dict[str, list[int]] = {}
    for v in vcpus:
        if intent.sched[v.vcpu][1] is not None and not 1 <= v.priority <= ceiling:
            by_priority.setdefault(v.priority, []).append(v.vcpu)
        if v.policy not in REALTIME_POLICIES:
            by_policy.setdefault(v.policy, []).append(v.vcpu)
    for priority, ids in sorted(by_priority.items()):
        errors.append(f"{_plural(ids, 'realtime vCPU')}: priority {priority} outside 1..{ceiling} "
                      "(realtime.max_priority keeps guests below the host's kernel threads)")
    for policy, ids in sorted(by_policy.items()):
        errors.append(f"{_plural(ids, 'realtime vCPU')}: policy {policy!r} is not a realtime policy "
                      "(fifo or rr)")
    return errors


def _check_pinning(rt: tuple[VcpuSpec, ...]) -> list[str]:
    errors = []
    owners: dict[int, list[int]] = {}
    for v in rt:
        if not v.cpus:
            errors.append(f"realtime vCPU {v.vcpu} is not pinned (realtime needs dedicated 1:1 pinning: "
                          "add <vcpupin>)")
        elif len(v.cpus) != 1:
            errors.append(f"realtime vCPU {v.vcpu} is pinned to pCPUs {format_cpulist(v.cpus)}, not to exactly "
                          "one pCPU (realtime needs dedicated 1:1 pinning)")
        else:
            owners.setdefault(next(iter(v.cpus)), []).append(v.vcpu)
    for pcpu, ids in sorted(owners.items()):
        if len(ids) > 1:
            errors.append(f"realtime vCPUs {format_cpulist(ids)} share pCPU {pcpu} "
                          "(each realtime vCPU needs a pCPU of its own)")
    return errors


_STARVES = "(a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)"


def _check_sharing(rt: tuple[VcpuSpec, ...], others: list[tuple[str, frozenset[int]]]) -> list[str]:
    """A realtime vCPU's pCPU must not be usable by any SCHED_OTHER thread of
    the guest; an empty set (unpinned) may use every pCPU."""
    errors = []
    singles = [(v.vcpu, next(iter(v.cpus))) for v in rt if len(v.cpus) == 1]
    for what, cpus in others:
        if not singles:
            break
        if not cpus:
            verb, pronoun = ("are", "they") if what.endswith("threads") else ("is", "it")
            errors.append(f"{what} {verb} not pinned, so {pronoun} may run on the pCPUs of "
                          f"{_plural([v for v, _ in singles], 'realtime vCPU')} {_STARVES}")
            continue
        for vcpu, pcpu in singles:
            if pcpu in cpus:
                errors.append(f"realtime vCPU {vcpu} shares pCPU {pcpu} with {what} {_STARVES}")
    return errors


def validate(spec: RealtimeSpec, intent: Intent, max_priority: int) -> list[str]:
    """Nova's rules plus the host's, as messages without the domain prefix."""
    rt = spec.realtime_vcpus
    errors: list[str] = []
    if not rt:
        errors.append("no realtime vCPU (the intent selects none; at least one is required)")
        return errors
    rt_pcpus = frozenset().union(*(v.cpus for v in rt))
    nonrt = spec.nonrealtime_vcpus
    if not nonrt and (not spec.emulator_cpus or spec.emulator_cpus & rt_pcpus or not all(v.cpus for v in rt)):
        errors.append("every vCPU is realtime and the emulator threads are not offloaded to pCPUs apart "
                      "from them (realtime requires either one or more non-realtime vCPU(s) or offloaded "
                      "emulator threads: add a non-realtime vCPU to the mask or an <emulatorpin>)")
    errors += _check_pinning(rt)
    others: list[tuple[str, frozenset[int]]] = [("the emulator threads", spec.emulator_cpus)]
    others += [(f"iothread {t.iothread}", t.cpus) for t in spec.iothreads]
    others += [(f"non-realtime vCPU {v.vcpu}", v.cpus) for v in nonrt]
    errors += _check_sharing(rt, others)
    errors += _check_priorities(rt, intent, max_priority)
    return errors


def _realtime_warnings(facts: DomainFacts) -> list[str]:
    warnings = []
    if not facts.memory.locked:
        warnings.append("guest RAM is not locked (<memoryBacking><locked/>): the host may swap or "
                        "migrate its pages under a realtime vCPU")
    if not facts.memory.hugepages:
        warnings.append("guest RAM is not backed by hugepages (<memoryBacking><hugepages/>): "
                        "TLB misses and page faults add latency")
    if facts.vcpu_current is not None and facts.vcpu_current < facts.vcpu_count:
        warnings.append(f"<vcpu current='{facts.vcpu_current}'> of {facts.vcpu_count}: the plan covers all "
                        f"{facts.vcpu_count} vCPUs, so hotplugged ones are tuned too")
    if facts.virt_type != "kvm":
        warnings.append(f"domain type {facts.virt_type!r} is not kvm: vCPU threads are emulated (TCG) "
                        "and cannot give realtime latency")
    return warnings


def metadata_key(root: ET.Element) -> str:
    """The domain's ``<metadata>`` as canonical XML, "" without one: what a
    missed METADATA_CHANGE event would have changed (rtagent's element, Nova's
    flavor), and nothing a live ``vcpupin`` rewrites."""
    meta = root.find("metadata")
    if meta is None:
        return ""
    # tostring() writes the element's tail too (text after </metadata>),
    # which canonicalize() refuses as junk after the document element.
    tail, meta.tail = meta.tail, None
    try:
        text = ET.tostring(meta, encoding="unicode")
    finally:
        meta.tail = tail
    return ET.canonicalize(text, strip_text=True)


def derive_spec_from_element(root: ET.Element, config: Config) -> RealtimeSpec:
    """:func:`derive_spec` for an already parsed ``<domain>`` element."""
    facts = read_facts(root)
    intent = choose_intent(root, facts, config)
    rt_ids = [v for v in intent.sched] if intent.realtime else []
    emulator, emulator_source = _emulator(facts, rt_ids)
    spec = RealtimeSpec(
        domain=facts.name,
        uuid=facts.uuid,
        realtime=intent.realtime,
        source=intent.source,
        vcpus=_vcpu_specs(facts, intent),
        emulator_cpus=emulator,
        iothreads=facts.iothreads,
        memory=facts.memory,
        virt_type=facts.virt_type,
        emulator_source=emulator_source,
        source_detail=intent.detail,
        flavor=facts.flavor,
        libvirt_vcpusched=bool((native := vcpusched_intent(root, facts)) is not None and native.realtime),
        metadata_key=metadata_key(root),
    )
    problems = list(facts.problems) + list(intent.problems)
    warnings = list(intent.notes)
    errors: list[str] = []
    if intent.realtime:
        errors = problems + validate(spec, intent, config.realtime.max_priority)
        warnings += _realtime_warnings(facts)
    else:
        warnings += problems
    prefix = f"domain {facts.name!r}: "
    return replace(spec, errors=tuple(prefix + m for m in errors), warnings=tuple(prefix + m for m in warnings))


def derive_spec(xml_text: str | bytes, config: Config) -> RealtimeSpec:
    """The realtime intent of one domain XML, validated.  Pure: no I/O.

    Raises :class:`DomainXMLError` only when the XML cannot be read; every
    problem with the intent itself is in ``spec.errors``/``spec.warnings``.
    """
    return derive_spec_from_element(parse_domain_xml(xml_text), config)
