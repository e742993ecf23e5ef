"""The bad-input corpus: tests/corpus/config/*.toml and tests/corpus/xml/*.xml.

Each case has an adjacent ``.expect`` file::

    exit: 1                 (XML only: 1 = invalid realtime intent, 2 = unreadable)
    startable: yes          (XML only: libvirt accepts it, so it can run as a guest)
    requires-online: 0-1    (only meaningful with exactly these CPUs online)
    message: <fragment>     (one or more; every one must be in the message)

Through the CLI, as an operator would: ``rtagent config check`` exits 2 with
one line naming the key and value; ``rtagent plan`` exits 1 naming the domain
and the rule, or 2 with one line for XML it cannot read.  Then on the host
(system tier): ``rtagent apply`` on a running guest with an invalid intent,
and with each bad config, changes nothing (every thread's policy, priority
and affinity, and the guest's RT budget, read from the kernel before and after).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rtagent.kernel import Kernel
from rtagent.cpulist import parse_cpulist
from tests.guests import kvm_usable, rt_guest_xml
from tests.reliability.conftest import kvm_pit, report, sched_of, thread_snapshot

pytestmark = pytest.mark.reliability

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


@dataclass
class Case:
    path: Path
    exit: int = 2
    startable: bool = False
    online: frozenset[int] | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.path.stem


def _load(kind: str) -> list[Case]:
    cases = []
    for p in sorted((CORPUS / kind).glob("*.toml" if kind == "config" else "*.xml")):
        c = Case(p)
        for line in p.with_suffix(".expect").read_text().splitlines():
            key, _, value = line.partition(": ")
            if key == "exit":
                c.exit = int(value)
            elif key == "startable":
                c.startable = value == "yes"
            elif key == "requires-online":
                c.online = parse_cpulist(value)
            elif key == "message":
                c.messages.append(value)
            elif line.strip():
                raise ValueError(f"{p.with_suffix('.expect')}: bad line {line!r}")
        assert c.messages, f"{p}: no expected message"
        cases.append(c)
    return cases


CONFIGS = _load("config")
XMLS = _load("xml")


def _rtagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtagent", *args], capture_output=True, text=True, timeout=120)


def _skip_if_other_host(case: Case) -> None:
    if case.online is not None and Kernel().cpus.online() != case.online:
        pytest.skip(f"{case.id} is about a host with CPUs {sorted(case.online)} online")


def _domain_name(case: Case) -> str | None:
    m = re.search(r"<name>([^<&]+)</name>", case.path.read_text())
    return m.group(1) if m else None


@pytest.mark.unit
def test_corpus_is_complete():
    assert len(CONFIGS) >= 30 and len(XMLS) >= 25
    for kind, ext in (("config", ".toml"), ("xml", ".xml")):
        inputs = {p.stem for p in (CORPUS / kind).glob("*" + ext)}
        expects = {p.stem for p in (CORPUS / kind).glob("*.expect")}
        assert inputs == expects, inputs ^ expects
    report("bad-input corpus", configs=len(CONFIGS), xmls=len(XMLS),
           xml_exit_1=sum(c.exit == 1 for c in XMLS), xml_exit_2=sum(c.exit == 2 for c in XMLS),
           startable_xmls=sum(c.startable for c in XMLS))


@pytest.mark.unit
@pytest.mark.parametrize("case", CONFIGS, ids=lambda c: c.id)
def test_config_check_names_key_and_value(case: Case):
    _skip_if_other_host(case)
    r = _rtagent("config", "check", "--config", str(case.path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"rtagent: config error: {case.path}: "), lines[0]
    for fragment in case.messages:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.unit
@pytest.mark.parametrize("case", XMLS, ids=lambda c: c.id)
def test_plan_names_domain_and_rule(case: Case):
    r = _rtagent("plan", "--xml", str(case.path))
    assert r.returncode == case.exit, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    if case.exit == 2:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("rtagent: "), r.stderr
        text = lines[0]
    else:
        name = _domain_name(case)
        errors = [line for line in r.stdout.splitlines() if line.startswith("error: ")]
        assert errors and all(e.startswith(f"error: domain {name!r}: ") for e in errors), r.stdout
        text = "\n".join(errors)
    for fragment in case.messages:
        assert fragment in text, (fragment, text)


# -- nothing changes on the host ------------------------------------------------------


def _rt_budgets(name: str) -> dict[str, str]:
    out = {}
    for p in Path("/sys/fs/cgroup/cpu/machine").glob(f"qemu-*-{name}.libvirt-qemu/**/cpu.rt_runtime_us"):
        try:
            out[str(p)] = p.read_text().strip()
        except OSError:
            pass
    root = Path("/sys/fs/cgroup/cpu/machine/cpu.rt_runtime_us")
    if root.exists():
        out[str(root)] = root.read_text().strip()
    return out


def _host_view(g) -> tuple[dict, dict]:
    threads = thread_snapshot(g.pid)
    pit = kvm_pit(g.pid)
    if pit is not None:
        s = sched_of(pit)
        if s is not None:
            threads[(pit, "kvm-pit")] = s
    return threads, _rt_budgets(g.name)


def _assert_unchanged(before, after) -> None:
    tb, bb = before
    ta, ba = after
    common = tb.keys() & ta.keys()
    assert common, "no thread seen twice"
    changed = {k: (tb[k], ta[k]) for k in common if tb[k] != ta[k]}
    assert not changed, changed
    # A thread born in between (kvm-nx-lpage-recovery) was not made realtime either.
    import os

    assert all(v[0] not in (os.SCHED_FIFO, os.SCHED_RR) for k, v in ta.items() if k[1] != "kvm-pit"), ta
    assert ba == bb


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "good.toml"
    p.write_text('[host]\nrealtime_cpus = "1"\n[metrics]\nenabled = false\n')
    return p


@pytest.mark.system
@pytest.mark.parametrize("case", [c for c in XMLS if c.startable], ids=lambda c: c.id)
def test_apply_on_a_running_invalid_guest_changes_nothing(case: Case, guest_factory, tmp_path):
    from tests.conftest import unique_name

    name = unique_name("rtrel")
    xml = re.sub(r"<name>[^<]+</name>", f"<name>{name}</name>", case.path.read_text())
    if not kvm_usable():
        xml = xml.replace("<domain type='kvm'>", "<domain type='qemu'>")
    g = guest_factory(xml, name=name)
    before = _host_view(g)
    r = _rtagent("apply", "--config", str(_config(tmp_path)), name)
    after = _host_view(g)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.startswith("rtagent: invalid realtime intent")]
    assert lines, r.stderr
    assert all(f"nothing changed: domain {name!r}: " in line for line in lines), lines
    for fragment in case.messages:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert "changed:" not in r.stdout, r.stdout
    _assert_unchanged(before, after)


@pytest.mark.system
def test_apply_with_each_bad_config_changes_nothing(guest_factory, tmp_path):
    g = guest_factory(rt_guest_xml(name := __import__("tests.conftest", fromlist=["unique_name"]).unique_name("rtrel")),
                      name=name)
    before = _host_view(g)
    online = Kernel().cpus.online()
    ran = 0
    for case in CONFIGS:
        if case.online is not None and case.online != online:
            continue
        r = _rtagent("apply", "--config", str(case.path), g.name)
        assert r.returncode == 2, (case.id, r.stdout, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and case.messages[0] in r.stderr, (case.id, r.stderr)
        ran += 1
    _assert_unchanged(before, _host_view(g))
    # The guest is a valid realtime guest: a good config does tune it (the
    # check above would otherwise prove nothing).
    r = _rtagent("apply", "--config", str(_config(tmp_path)), g.name)
    assert sched_of(g.vcpu_tids()[1])[0] == __import__("os").SCHED_FIFO, (r.stdout, r.stderr)
    report("bad configs through rtagent apply", configs=ran, host_changed="no")
