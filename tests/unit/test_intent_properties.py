"""Property tests: random guests through intent validation.

Two directions: every plan that validates satisfies the realtime invariants,
and every guest that breaks one of them gets at least one error.  The oracle
below restates the rules on the generated input, independently of how
rtagent/intent.py is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtagent.config import Config, RealtimeConfig
from rtagent.cpulist import format_cpulist
from rtagent.intent import derive_spec
from rtagent.model import RealtimeSpec

pytestmark = pytest.mark.unit

RT_NS = "urn:rtagent:realtime:1"
MAX_PRIORITY = 10
CFG = Config(realtime=RealtimeConfig(max_priority=MAX_PRIORITY))
PCPUS = range(8)

Cpus = frozenset[int]


@dataclass(frozen=True)
class Guest:
    nvcpus: int
    vcpu_cpuset: Cpus | None
    vcpupins: dict[int, Cpus]
    emulatorpin: Cpus | None
    iothreadpins: tuple[Cpus | None, ...]
    realtime: frozenset[int]
    priorities: dict[int, int]  # per realtime vCPU
    via: str  # "metadata" | "vcpusched"

    # -- what libvirt (and Nova, for the emulator) would apply -------------

    def pins(self, vcpu: int) -> Cpus:
        return self.vcpupins.get(vcpu, self.vcpu_cpuset or frozenset())

    def emulator(self) -> Cpus:
        if self.emulatorpin is not None:
            return self.emulatorpin
        others = [self.pins(v) for v in range(self.nvcpus) if v not in self.realtime]
        if others and all(others):
            return frozenset().union(*others)
        return self.vcpu_cpuset or frozenset()

    def iothreads(self) -> list[Cpus]:
        return [p if p is not None else (self.vcpu_cpuset or frozenset()) for p in self.iothreadpins]

    # -- the rules, stated on the input -------------------------------------

    def violations(self) -> list[str]:
        out = []
        rt = sorted(self.realtime)
        nonrt = [v for v in range(self.nvcpus) if v not in self.realtime]
        emulator = self.emulator()
        if not rt:
            return ["no realtime vCPU"]
        rt_pcpus = frozenset().union(*(self.pins(v) for v in rt))
        if not nonrt and (not emulator or emulator & rt_pcpus or not all(self.pins(v) for v in rt)):
            out.append("no non-realtime vCPU and emulator not offloaded")
        singles = {}
        for v in rt:
            if len(self.pins(v)) != 1:
                out.append(f"vCPU {v} not 1:1")
                continue
            (p,) = self.pins(v)
            if p in singles:
                out.append(f"vCPU {v} shares pCPU {p} with vCPU {singles[p]}")
            singles[p] = v
            shared = [emulator] + self.iothreads() + [self.pins(n) for n in nonrt]
            if any(not s or p in s for s in shared):
                out.append(f"vCPU {v} pCPU {p} shared with a SCHED_OTHER thread")
            if not 1 <= self.priorities[v] <= MAX_PRIORITY:
                out.append(f"vCPU {v} priority {self.priorities[v]}")
        return out

    # -- as XML ----------------------------------------------------------------

    def xml(self) -> str:
        cpuset = f" cpuset='{format_cpulist(self.vcpu_cpuset)}'" if self.vcpu_cpuset else ""
        tune = "".join(f"<vcpupin vcpu='{v}' cpuset='{format_cpulist(c)}'/>" for v, c in sorted(self.vcpupins.items()))
        if self.emulatorpin is not None:
            tune += f"<emulatorpin cpuset='{format_cpulist(self.emulatorpin)}'/>"
        for i, pin in enumerate(self.iothreadpins, start=1):
            if pin is not None:
                tune += f"<iothreadpin iothread='{i}' cpuset='{format_cpulist(pin)}'/>"
        metadata = ""
        if self.via == "metadata":
            # One priority for the whole guest; express the set as Nova's exclusion form.
            excluded = [v for v in range(self.nvcpus) if v not in self.realtime]
            mask = ",".join(f"^{v}" for v in excluded) if excluded else None
            prio = next(iter(self.priorities.values()), 1)
            mask_attr = f" mask='{mask}'" if mask else ""
            metadata = f"<rt:realtime xmlns:rt='{RT_NS}'{mask_attr} priority='{prio}'/>"
        else:
            for v in sorted(self.realtime):
                tune += f"<vcpusched vcpus='{v}' scheduler='fifo' priority='{self.priorities[v]}'/>"
        iothreads = f"<iothreads>{len(self.iothreadpins)}</iothreads>" if self.iothreadpins else ""
        return (
            f"<domain type='kvm'><name>g</name><metadata>{metadata}</metadata>"
            f"<memory unit='MiB'>64</memory><memoryBacking><hugepages/><locked/></memoryBacking>"
            f"<vcpu{cpuset}>{self.nvcpus}</vcpu>{iothreads}<cputune>{tune}</cputune></domain>"
        )


cpu_sets = st.frozensets(st.sampled_from(PCPUS), min_size=1, max_size=3)
# Mostly single pCPUs: that is where the interesting (nearly valid) guests are.
pin_sets = st.one_of(st.builds(lambda c: frozenset({c}), st.sampled_from(PCPUS)), cpu_sets)
priorities = st.integers(min_value=0, max_value=MAX_PRIORITY + 2)


@st.composite
def guests(draw) -> Guest:
    n = draw(st.integers(min_value=1, max_value=6))
    via = draw(st.sampled_from(["metadata", "vcpusched"]))
    if via == "metadata":
        # An all-excluded mask is the only way to ask for "none" there.
        realtime = draw(st.frozensets(st.integers(0, n - 1)))
    else:
        realtime = draw(st.frozensets(st.integers(0, n - 1), min_size=1))
    if via == "metadata":
        prio = draw(priorities)
        prios = {v: prio for v in realtime}
    else:
        prios = {v: draw(priorities) for v in sorted(realtime)}
    pinned = draw(st.frozensets(st.integers(0, n - 1)))
    return Guest(
        nvcpus=n,
        vcpu_cpuset=draw(st.none() | cpu_sets),
        vcpupins={v: draw(pin_sets) for v in sorted(pinned)},
        emulatorpin=draw(st.none() | cpu_sets),
        iothreadpins=tuple(draw(st.lists(st.none() | pin_sets, max_size=2))),
        realtime=realtime,
        priorities=prios,
        via=via,
    )


@st.composite
def nearly_valid_guests(draw) -> Guest:
    """Guests built to keep the rules (distinct pCPUs per realtime vCPU,
    housekeeping work on the others); a few still break one by chance, e.g.
    every vCPU realtime with the emulator left to Nova's rule."""
    n = draw(st.integers(min_value=1, max_value=6))
    perm = draw(st.permutations(list(PCPUS)))
    realtime = draw(st.frozensets(st.integers(0, n - 1), min_size=1))
    housekeeping = [perm[v] for v in range(n) if v not in realtime] + list(perm[n:])
    pins = {v: frozenset({perm[v]}) for v in range(n)}
    for v in range(n):
        if v not in realtime and draw(st.booleans()):
            pins[v] = pins[v] | draw(st.frozensets(st.sampled_from(housekeeping), max_size=2))
    spare = st.frozensets(st.sampled_from(housekeeping), min_size=1, max_size=2) if housekeeping else st.nothing()
    emulatorpin = draw(st.none() | spare) if housekeeping else None
    iothreads = tuple(draw(st.lists(spare, max_size=2))) if housekeeping else ()
    via = draw(st.sampled_from(["metadata", "vcpusched"]))
    prio = draw(st.integers(1, MAX_PRIORITY))
    prios = {v: prio if via == "metadata" else draw(st.integers(1, MAX_PRIORITY)) for v in sorted(realtime)}
    return Guest(nvcpus=n, vcpu_cpuset=None, vcpupins=pins, emulatorpin=emulatorpin,
                 iothreadpins=iothreads, realtime=realtime, priorities=prios, via=via)


any_guests = st.one_of(guests(), nearly_valid_guests())


def assert_invariants(spec: RealtimeSpec, guest: Guest) -> None:
    rt = spec.realtime_vcpus
    assert rt, "a valid realtime plan has at least one realtime vCPU"
    assert {v.vcpu for v in rt} == guest.realtime
    owned = [next(iter(v.cpus)) for v in rt if len(v.cpus) == 1]
    assert len(owned) == len(rt), "each realtime vCPU pinned to exactly one pCPU"
    assert len(set(owned)) == len(owned), "no two realtime vCPUs share a pCPU"
    for v in rt:
        assert v.cpus == guest.pins(v.vcpu)
        assert 1 <= v.priority <= MAX_PRIORITY
        assert v.policy in ("fifo", "rr")
    pcpus = set(owned)
    assert spec.emulator_cpus and not spec.emulator_cpus & pcpus
    for t in spec.iothreads:
        assert t.cpus and not t.cpus & pcpus
    for v in spec.nonrealtime_vcpus:
        assert v.cpus and not v.cpus & pcpus
        assert v.policy == "other" and v.priority == 0
    assert spec.nonrealtime_vcpus or spec.emulator_cpus.isdisjoint(pcpus)


@settings(max_examples=400, deadline=None)
@given(any_guests)
def test_valid_plans_satisfy_invariants_and_violations_are_reported(guest: Guest) -> None:
    spec = derive_spec(guest.xml(), CFG)
    assert spec.realtime and spec.source == guest.via
    violations = guest.violations()
    if spec.valid:
        assert not violations, (violations, guest.xml())
        assert_invariants(spec, guest)
    if violations:
        assert spec.errors, (violations, guest.xml())
        assert all(e.startswith("domain 'g': ") for e in spec.errors)


@settings(max_examples=200, deadline=None)
@given(any_guests)
def test_no_false_errors(guest: Guest) -> None:
    """The converse: a guest that keeps every rule is valid (no spurious errors)."""
    spec = derive_spec(guest.xml(), CFG)
    if not guest.violations():
        assert spec.valid, (spec.errors, guest.xml())


@settings(max_examples=100, deadline=None)
@given(any_guests)
def test_derivation_is_deterministic_and_json_serialisable(guest: Guest) -> None:
    import json

    a = derive_spec(guest.xml(), CFG)
    b = derive_spec(guest.xml(), CFG)
    assert a == b
    data = json.loads(json.dumps(a.to_json()))
    assert data["valid"] == a.valid and len(data["vcpus"]) == guest.nvcpus
