"""libvirt's own ``<vcpusched>`` on a host with RT group scheduling (issue
12, item 9): ``virsh start`` fails with "Cannot set scheduler parameters …
Operation not permitted"; ``plan``, ``check`` and the daemon (on the DEFINED
event) must say so and what fixes it, and the ``rt_group_sched`` host check
turns into a warning while such a guest is defined.
"""

from __future__ import annotations

import json
import subprocess

import libvirt
import pytest

from rtagent.cli import main
from rtagent.kernel import Kernel
from rtagent.tuning.guest.vcpusched import host_refuses
from tests.conftest import unique_name
from tests.guests import domain_xml, pinned_cputune
from tests.system.conftest import wait_for

pytestmark = pytest.mark.system

NOVA_STYLE = "<vcpusched vcpus='1' scheduler='fifo' priority='1'/>"


@pytest.fixture
def refusing_host():
    reason = host_refuses(Kernel())
    if reason is None:
        pytest.skip("this host does not refuse <vcpusched> (no RT group scheduling, or "
                    "kernel.sched_rt_runtime_us = -1)")
    return reason


@pytest.fixture
def defined(conn):
    """``defined(xml)`` defines a persistent guest; undefined at teardown."""
    made = []

    def define(xml: str):
        dom = conn.defineXML(xml)
        made.append(dom)
        return dom

    yield define
    for dom in made:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass


def _xml(name: str) -> str:
    return domain_xml(name, cputune=pinned_cputune({0: "0", 1: "1"}, extra=NOVA_STYLE))


def _fixes(text: str) -> bool:
    return "kernel.sched_rt_runtime_us = -1" in text and "urn:rtagent:realtime:1" in text


def test_plan_says_vcpusched_will_be_refused_here(refusing_host, tmp_path, capsys):
    xml = tmp_path / "nova.xml"
    xml.write_text(_xml("rtt-nova-plan"))
    assert main(["plan", "--json", "--xml", str(xml)]) == 0  # the intent itself is valid
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "vcpusched" and out["libvirt_vcpusched"]
    (warning,) = out["host_warnings"]
    assert "will be refused on this host" in warning and _fixes(warning)
    assert main(["plan", "--xml", str(xml)]) == 0
    assert "will be refused on this host" in capsys.readouterr().out


def test_daemon_check_and_host_check_on_a_defined_vcpusched_guest(refusing_host, daemon_factory, defined, capsys):
    name = unique_name()  # matches the test daemon's selector
    # The start window off: with it on, rtagent grants vcpuN its RT budget as
    # the group appears, and now and then that lands before libvirt's own
    # scheduler call, so the start gets through (a race, not the premise).
    d = daemon_factory(resync=0.5, daemon="start_window_early = false\n")
    dom = defined(_xml(name))
    line = wait_for(lambda: next((ln for ln in d.log_text().splitlines()
                                  if name in ln and "will be refused" in ln), None), 15, "the daemon's warning")
    assert "WARNING" in line and _fixes(line)

    # The premise, for real: libvirt cannot start it here.
    start = subprocess.run(["virsh", "-q", "start", name], capture_output=True, text=True)
    assert start.returncode != 0 and "Cannot set scheduler parameters" in start.stderr, start.stderr
    assert not dom.isActive()

    def rt_group_check():
        checks = (d.status().get("host") or {}).get("checks", [])
        c = next((c for c in checks if c["name"] == "rt_group_sched"), None)
        return c if c and not c["ok"] and name in c["detail"] else None

    c = wait_for(rt_group_check, 15, "rt_group_sched warning in status")
    assert c["severity"] == "warning" and _fixes(c["detail"])

    capsys.readouterr()
    assert main(["check", "--json", "--config", str(d.config), name]) == 1
    out = json.loads(capsys.readouterr().out)
    (dom_json,) = out["domains"]
    (v,) = [v for v in dom_json["violations"] if v["check"] == "vcpusched_refused"]
    assert _fixes(v["detail"])
    host = {c["name"]: c for c in out["host"]["checks"]}
    assert not host["rt_group_sched"]["ok"] and name in host["rt_group_sched"]["detail"]
