"""One realtime vCPU per realtime pCPU, host-wide (issue 12, item 2).

Two real guests want CPU 1: the one that claimed it first keeps it, the
other is not made realtime there and gets a violation naming both guests,
the vCPUs and the pCPU, in ``status``, ``check`` and the metrics; when the
owner stops, the other takes over.  The same for a guest whose emulator is
pinned to CPU 1 before a realtime guest arrives.  The daemon manages only
this test's guests (selector), so other engineers' guests on the shared
host do not take part.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest

from rtagent.cli import main
from tests.conftest import unique_name
from tests.guests import domain_xml, pinned_cputune
from tests.system.conftest import wait_for

pytestmark = pytest.mark.system
HUGE = "<memoryBacking><hugepages/></memoryBacking>"
PREFIX = f"rgown{os.getpid()}"


def _fifo(tid: int) -> bool:
    try:
        return os.sched_getscheduler(tid) == os.SCHED_FIFO
    except ProcessLookupError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conflicts(d, name: str) -> list[dict]:
    entry = d.guest(name) or {}
    return [v for v in entry.get("violations", []) if v["check"] == "cpu_conflict"]


def _daemon(daemon_factory):
    port = _free_port()
    d = daemon_factory(resync=0.5, daemon=f'guest_names = ["{PREFIX}-*"]', metrics_port=port)
    return d, port


def test_second_realtime_guest_on_a_taken_pcpu_is_not_made_realtime(daemon_factory, guest_factory, capsys,
                                                                     tmp_path):
    d, port = _daemon(daemon_factory)
    a = guest_factory(name=unique_name(f"{PREFIX}-a"), memory_backing=HUGE)
    atid = a.vcpu_tids()[1]
    wait_for(lambda: _fifo(atid), 30, "first guest's vCPU 1 FIFO")
    b = guest_factory(name=unique_name(f"{PREFIX}-b"), memory_backing=HUGE)
    btid = b.vcpu_tids()[1]
    (v,) = wait_for(lambda: _conflicts(d, b.name), 15, "the conflict in status")
    for needle in (a.name, b.name, "pCPU 1", "realtime vCPU 1", "not made realtime"):
        assert needle in v["detail"], v
    # Several resyncs later: still not realtime, the owner still is.
    wait_for(lambda: (d.status().get("daemon") or {}).get("resyncs", 0) >= 4, 10, "a few resyncs")
    assert not _fifo(btid) and _fifo(atid)
    assert not _conflicts(d, a.name)
    entry = d.guest(b.name)
    assert entry["compliant"] is False and entry["conflicts"][0]["owner"] == a.name

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    series = [line for line in text.splitlines() if line.startswith("rtagent_cpu_conflict{")]
    assert len(series) == 1 and f'domain="{b.name}"' in series[0] and f'other="{a.name}"' in series[0] \
        and 'cpu="1"' in series[0] and series[0].endswith(" 1.0"), series

    # The plan of a third guest wanting CPU 1 says it now.
    xml = tmp_path / "third.xml"
    xml.write_text(b.xml())
    capsys.readouterr()
    assert main(["plan", "--json", "--running", "--config", str(d.config), "--xml", str(xml)]) == 1
    planned = json.loads(capsys.readouterr().out)
    assert planned["valid"] and [c["owner"] for c in planned["conflicts"]] == [a.name]

    capsys.readouterr()
    assert main(["check", "--json", "--config", str(d.config), b.name]) == 1
    out = json.loads(capsys.readouterr().out)
    (dom,) = out["domains"]
    assert [c["owner"] for c in dom["conflicts"]] == [a.name]
    assert "cpu_conflict" in {v["check"] for v in dom["violations"]}

    # The owner stops: the pCPU is free, the other guest takes it.
    a.dom.destroy()
    wait_for(lambda: _fifo(btid), 15, "second guest's vCPU 1 FIFO once the owner is gone")
    wait_for(lambda: not _conflicts(d, b.name), 10, "conflict gone from status")


def test_realtime_guest_after_another_guests_emulator_on_the_pcpu(daemon_factory, guest_factory):
    d, _ = _daemon(daemon_factory)
    plain = unique_name(f"{PREFIX}-c")
    guest_factory(domain_xml(plain, vcpus=1, cputune=pinned_cputune({0: "0"}, emulator="1")), name=plain)
    a = guest_factory(name=unique_name(f"{PREFIX}-a"), memory_backing=HUGE)
    atid = a.vcpu_tids()[1]
    (v,) = wait_for(lambda: _conflicts(d, a.name), 15, "the conflict in status")
    assert plain in v["detail"] and "emulator threads" in v["detail"] and "pCPU 1" in v["detail"]
    wait_for(lambda: (d.status().get("daemon") or {}).get("resyncs", 0) >= 4, 10, "a few resyncs")
    assert not _fifo(atid)
