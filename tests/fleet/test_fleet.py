"""A fleet of three rtagent nodes through real Prometheus and Alertmanager.

Three daemons run on this host, each in its own network namespace and each
managing only its own guest (``[daemon] guest_names``); Debian's
``prometheus`` scrapes them through file_sd with the shipped rules (``for:``
shortened, see tests/fleet/servers.py) and sends alerts to Debian's
``prometheus-alertmanager``, which posts them to a webhook receiver run by
the test.  Everything is asserted through the servers' own HTTP APIs.

Every test guest on this machine has a ``memlock`` violation (the guests
cannot have ``<locked/>``: RLIMIT_MEMLOCK is capped), so full compliance is
0 on every node and RtagentGuestNonCompliant fires for every guest; the
fleet view that can move here is tuning compliance
(``instance:rtagent_domains_tuned:ratio``, memory-backing checks aside),
and the per-vCPU alert RtagentVcpuNotTuned.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import Fleet
from tests.fleet.nodes import cpu_cgroup, vcpu_tid

pytestmark = pytest.mark.fleet

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
NODES = {"node-a", "node-b", "node-c"}


def _qemu_pid(guest: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{guest}.pid").read_text().strip())


def _webhook_alerts(fleet: Fleet, name: str, status: str, receiver: str | None = None, **labels: str) -> list[dict]:
    """Alerts named ``name`` with ``status`` (firing/resolved) that the
    webhook received (through ``receiver`` of config/alertmanager's example,
    if given), whose labels include ``labels``."""
    return [a for r, a in fleet.mon.webhook.notifications()
            if a["labels"].get("alertname") == name and a.get("status") == status
            and (receiver is None or r == receiver)
            and all(a["labels"].get(k) == v for k, v in labels.items())]


def _instances(alerts: list[dict]) -> set[str]:
    return {a["labels"].get("instance", "") for a in alerts}


def test_every_node_is_scraped_with_only_its_own_guests(fleet: Fleet):
    mon = fleet.mon
    fleet.wait(lambda: mon.values('up{job="rtagent"}') == {n: 1.0 for n in NODES}, 60, "all three nodes up")
    info = fleet.wait(lambda: (r := mon.query("rtagent_domain_info")) and len(r) >= 3 and r, 60,
                      "each node's guest in rtagent_domain_info")
    seen = {(r["metric"]["instance"], r["metric"]["domain"]) for r in info}
    assert seen == {(f"node-{k}", n.guests[0]) for k, n in fleet.nodes.items()}, seen
    flavors = {r["metric"]["domain"]: r["metric"].get("flavor", "") for r in info}
    assert flavors[fleet.nodes["b"].guests[0]] == "rt.small"  # from the Nova metadata
    assert flavors[fleet.nodes["a"].guests[0]] == ""

    fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio") == {n: 1.0 for n in NODES}, 60,
               "tuning compliance 1 on every node")
    # Rules of one group are evaluated one after the other: wait, do not race.
    expect = {
        ("cluster:rtagent_domains_tuned:ratio", "cluster"): {"": 1.0},
        ("instance:rtagent_vcpus_untuned:sum", "instance"): {n: 0.0 for n in NODES},
        ("instance:rtagent_vcpus_not_realtime:sum", "instance"): {n: 0.0 for n in NODES},
        # memlock (see the module docstring): full compliance is 0 everywhere.
        ("instance:rtagent_domains_compliant:ratio", "instance"): {n: 0.0 for n in NODES},
        ("cluster_flavor:rtagent_domains_realtime:sum", "flavor"): {"": 2.0, "rt.small": 1.0},
    }
    for (expr, label), want in expect.items():
        fleet.wait(lambda: mon.values(expr, label) == want, 30, f"{expr} == {want}")
    rules = mon.get(f"{mon.prom_url}/api/v1/rules")["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] == "err"]
    assert unhealthy == []


def _jail(tid: int, jail: Path) -> None:
    """A foreign tool demotes the vCPU and moves it into its own cgroup
    (no RT budget there), so rtagent can no longer make it realtime.  The
    daemon may re-FIFO the thread between the two steps (a FIFO thread cannot
    join a zero-budget group): then do it again."""
    for _ in range(50):
        subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True, capture_output=True)
        try:
            (jail / "tasks").write_text(str(tid))
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"could not move tid {tid} into {jail}")


def test_a_broken_guest_alerts_for_its_node_only_and_resolves(fleet: Fleet):
    mon, node = fleet.mon, fleet.nodes["a"]
    guest = node.guests[0]
    fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio") == {n: 1.0 for n in NODES}, 60,
               "tuning compliance 1 on every node before the break")
    tid = vcpu_tid(_qemu_pid(guest), 1)
    home = CPU_CGROUP / cpu_cgroup(tid).lstrip("/")
    jail = CPU_CGROUP / f"{fleet.prefix}-jail"
    jail.mkdir()
    try:
        _jail(tid, jail)

        # The recording rule drops for node-a only.
        fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio")
                   == {"node-a": 0.0, "node-b": 1.0, "node-c": 1.0}, 60, "tuning compliance 0 on node-a only")
        fleet.wait(lambda: mon.values("instance:rtagent_vcpus_untuned:sum")
                   == {"node-a": 1.0, "node-b": 0.0, "node-c": 0.0}, 30, "one untuned vCPU, on node-a")
        fleet.wait(lambda: mon.values("cluster:rtagent_domains_tuned:ratio", "cluster") == {"": pytest.approx(2 / 3)},
                   30, "cluster tuning compliance 2/3")

        # The alert fires in Prometheus, for that node, guest and vCPU only.
        firing = fleet.wait(lambda: mon.prom_alerts("RtagentVcpuNotTuned"), 60, "RtagentVcpuNotTuned firing")
        assert [(a["labels"]["instance"], a["labels"]["domain"], a["labels"]["vcpu"]) for a in firing] \
            == [("node-a", guest, "1")]
        assert f"node-a" in firing[0]["annotations"]["summary"] and guest in firing[0]["annotations"]["summary"]
        assert firing[0]["annotations"]["runbook_url"].endswith("/RtagentVcpuNotTuned.md")

        # ... reaches Alertmanager, with the external cluster label added ...
        am = fleet.wait(lambda: mon.am_alerts("RtagentVcpuNotTuned"), 60, "the alert in Alertmanager")
        assert [(a["labels"]["instance"], a["labels"]["domain"], a["labels"]["cluster"], a["status"]["state"])
                for a in am] == [("node-a", guest, "fleet-test", "active")]

        # ... and the webhook, with node and guest in its labels.
        sent = fleet.wait(lambda: _webhook_alerts(fleet, "RtagentVcpuNotTuned", "firing", "rtagent-tickets"), 60,
                          "the firing notification at the webhook (warning: the tickets receiver)")
        assert _instances(sent) == {"node-a"}
        assert {a["labels"]["domain"] for a in sent} == {guest}
        assert "description" in sent[0]["annotations"] and "vCPU 1" in sent[0]["annotations"]["description"]
        # Grouped by node, as the example config advises (not by guest).
        assert mon.webhook.group_labels("RtagentVcpuNotTuned")[0] == {
            "alertname": "RtagentVcpuNotTuned", "cluster": "fleet-test", "instance": "node-a"}
    finally:
        # The fix: the thread goes back into its vcpu1 cgroup.
        try:
            (home / "tasks").write_text(str(tid))
        except OSError:
            pass  # the guest is gone; teardown handles the rest
        jail.rmdir()

    fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio") == {n: 1.0 for n in NODES}, 60,
               "tuning compliance back to 1 on node-a")
    fleet.wait(lambda: not mon.prom_alerts("RtagentVcpuNotTuned")
               and not mon.prom_alerts("RtagentVcpuNotTuned", "pending"), 60, "the alert to end in Prometheus")
    resolved = fleet.wait(lambda: _webhook_alerts(fleet, "RtagentVcpuNotTuned", "resolved", instance="node-a",
                                                  domain=guest), 60, "the resolved notification")
    assert resolved[0]["endsAt"] > resolved[0]["startsAt"]
    fleet.wait(lambda: not [a for a in mon.am_alerts("RtagentVcpuNotTuned") if a["status"]["state"] == "active"],
               60, "Alertmanager to drop the alert")
    # Nothing fired for the other nodes meanwhile.
    assert _instances(_webhook_alerts(fleet, "RtagentVcpuNotTuned", "firing")) == {"node-a"}


def test_a_killed_daemon_raises_rtagent_down_for_its_node(fleet: Fleet):
    mon, node = fleet.mon, fleet.nodes["c"]
    fleet.wait(lambda: mon.values('up{job="rtagent"}') == {n: 1.0 for n in NODES}, 60, "all nodes up")
    node.kill_daemon()
    try:
        fleet.wait(lambda: mon.values('up{job="rtagent"}') == {"node-a": 1.0, "node-b": 1.0, "node-c": 0.0},
                   60, "up == 0 for node-c only")
        firing = fleet.wait(lambda: mon.prom_alerts("RtagentDown"), 60, "RtagentDown firing")
        assert _instances(firing) == {"node-c"}
        am = fleet.wait(lambda: mon.am_alerts("RtagentDown"), 60, "RtagentDown in Alertmanager")
        assert _instances(am) == {"node-c"} and am[0]["labels"]["severity"] == "critical"
        sent = fleet.wait(lambda: _webhook_alerts(fleet, "RtagentDown", "firing", "rtagent-pager"), 60,
                          "RtagentDown at the webhook (critical: the pager receiver)")
        assert _instances(sent) == {"node-c"}
        assert "node-c" in sent[0]["annotations"]["summary"]
        # The node's series went stale with it: the fleet view has no node-c.
        fleet.wait(lambda: "node-c" not in mon.values("instance:rtagent_domains_tuned:ratio"), 30,
                   "node-c to leave the fleet view")
        # While nobody guards node-c, a foreign tool demotes its realtime vCPU.
        tid = vcpu_tid(_qemu_pid(node.guests[0]), 1)
        subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True, capture_output=True)
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER
    finally:
        node.start_daemon(fleet.mon.ns)
    fleet.wait(lambda: _webhook_alerts(fleet, "RtagentDown", "resolved", instance="node-c"), 90,
               "RtagentDown resolved after the restart")
    # The restarted daemon put the vCPU back; the fleet view says so.
    fleet.wait(lambda: os.sched_getscheduler(tid) == os.SCHED_FIFO, 30, "node-c's vCPU FIFO again")
    fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio") == {n: 1.0 for n in NODES}, 60,
               "tuning compliance 1 on every node after the restart")


def test_a_node_leaving_service_discovery_raises_target_missing(fleet: Fleet):
    mon = fleet.mon
    fleet.wait(lambda: mon.values('up{job="rtagent"}') == {n: 1.0 for n in NODES}, 60, "all nodes up")
    fleet.write_sd(["a", "c"])
    try:
        fleet.wait(lambda: set(mon.values('up{job="rtagent"}')) == {"node-a", "node-c"}, 60,
                   "node-b gone from the targets")
        firing = fleet.wait(lambda: mon.prom_alerts("RtagentTargetMissing"), 60, "RtagentTargetMissing firing")
        assert _instances(firing) == {"node-b"}
        # Without an up series RtagentDown cannot say anything about node-b.
        assert "node-b" not in _instances(mon.prom_alerts("RtagentDown", "pending") + mon.prom_alerts("RtagentDown"))
        sent = fleet.wait(lambda: _webhook_alerts(fleet, "RtagentTargetMissing", "firing"), 60,
                          "RtagentTargetMissing at the webhook")
        assert _instances(sent) == {"node-b"}
    finally:
        fleet.write_sd()
    fleet.wait(lambda: _webhook_alerts(fleet, "RtagentTargetMissing", "resolved", instance="node-b"), 60,
               "RtagentTargetMissing resolved when node-b is back")


def test_a_cpu_conflict_on_one_node_alerts_for_that_node_and_resolves(fleet: Fleet):
    """A second guest on node-a pinned to the realtime pCPU that node-a's
    first guest owns: the first keeps it, the newcomer is not made realtime
    and node-a's tuning compliance drops to 1/2; the conflict alert names
    node, both guests and the pCPU, and resolves when the newcomer goes."""
    mon, node = fleet.mon, fleet.nodes["a"]
    owner = node.guests[0]
    fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio") == {n: 1.0 for n in NODES}, 60,
               "tuning compliance 1 on every node before the conflict")
    newcomer = fleet.start_guest("a")
    try:
        fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio")
                   == {"node-a": 0.5, "node-b": 1.0, "node-c": 1.0}, 60, "tuning compliance 1/2 on node-a only")
        conflict = fleet.wait(lambda: mon.query("rtagent_cpu_conflict > 0"), 30, "the conflict series")
        assert [(c["metric"]["instance"], c["metric"]["domain"], c["metric"]["other"], c["metric"]["cpu"])
                for c in conflict] == [("node-a", newcomer, owner, "1")]
        owner_tid = vcpu_tid(_qemu_pid(owner), 1)
        assert os.sched_getscheduler(owner_tid) == os.SCHED_FIFO  # the incumbent keeps its core

        firing = fleet.wait(lambda: mon.prom_alerts("RtagentRealtimeCpuConflict"), 60, "the conflict alert")
        assert {(a["labels"]["instance"], a["labels"]["domain"]) for a in firing} == {("node-a", newcomer)}
        sent = fleet.wait(lambda: _webhook_alerts(fleet, "RtagentRealtimeCpuConflict", "firing", "rtagent-pager"),
                          60, "the conflict alert at the webhook (critical: the pager receiver)")
        assert _instances(sent) == {"node-a"} and {a["labels"]["domain"] for a in sent} == {newcomer}
        assert owner in sent[0]["annotations"]["summary"] and newcomer in sent[0]["annotations"]["summary"]
    finally:
        fleet.destroy_guest(newcomer)
    fleet.wait(lambda: mon.values("instance:rtagent_domains_tuned:ratio") == {n: 1.0 for n in NODES}, 60,
               "tuning compliance back to 1 once the newcomer is gone")
    fleet.wait(lambda: _webhook_alerts(fleet, "RtagentRealtimeCpuConflict", "resolved", instance="node-a"), 60,
               "the conflict alert resolved")
