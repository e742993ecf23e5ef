"""The fleet: three rtagent nodes, Prometheus, Alertmanager and a webhook.

One fixture per test module builds it (it takes a while) and tears it all
down even when a test fails: daemons and servers by their PIDs, the guests,
the namespaces (and with them every veth and address).  Tests that break
something put it back themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from tests.conftest import _live
from tests.fleet.netns import Netns, remove_stale, veth
from tests.fleet.nodes import Node, guest_xml
from tests.fleet.servers import Monitoring, start_monitoring

PREFIX = "rtf"  # engineer F's prefix: netns, guests, cgroups
NODE_FLAVORS = {"a": None, "b": "rt.small", "c": None}


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="fleet tier needs root (namespaces, guests)")
        for item in items:
            if "fleet" in item.keywords:
                item.add_marker(skip)


@dataclass
class Fleet:
    prefix: str
    mon: Monitoring
    nodes: dict[str, Node]  # "a" → node-a
    sd_file: Path
    workdir: Path
    conn: Callable[[], object]  # a live libvirt connection
    guest_uuids: list[str] = field(default_factory=list)  # every guest started, destroyed at teardown

    def start_guest(self, key: str, flavor: str | None = None) -> str:
        """Another realtime guest on node ``key`` (vCPU 1 on CPU 1); returns its name."""
        node = self.nodes[key]
        name = f"{self.prefix}-{key}-{len(node.guests) + 1}"
        dom = self.conn().createXML(guest_xml(name, flavor), 0)
        self.guest_uuids.append(dom.UUIDString())
        node.guests.append(name)
        return name

    def destroy_guest(self, name: str) -> None:
        self.conn().lookupByName(name).destroy()

    def write_sd(self, names: list[str] | None = None) -> None:
        """file_sd targets, ``instance`` set to the node's name (docs/fleet.md);
        written to a temporary file and renamed, as Prometheus expects."""
        nodes = [self.nodes[n] for n in (names if names is not None else sorted(self.nodes))]
        tmp = self.sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [n.target], "labels": {"instance": n.name}} for n in nodes]))
        tmp.rename(self.sd_file)

    def diagnostics(self) -> str:
        parts = []
        for n in self.nodes.values():
            parts.append(f"--- {n.name} daemon log (tail)\n{n.log_tail(2000)}")
        for name, log in self.mon.logs.items():
            parts.append(f"--- {name} log (tail)\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.5):
        """Poll ``predicate`` until truthy; fail with the last value and logs."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.mon.check_alive()
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n{self.diagnostics()}")


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} not installed: the fleet tier uses the real server (scripts/setup-host.sh installs it)")


@pytest.fixture(scope="module")
def fleet(libvirtd, _conn_holder, tmp_path_factory):
    for binary in ("prometheus", "prometheus-alertmanager", "nsenter", "ip"):
        _need(binary)
    remove_stale(PREFIX)
    prefix = f"{PREFIX}{os.getpid()}"
    workdir = tmp_path_factory.mktemp("fleet")
    namespaces: list[Netns] = []
    nodes: dict[str, Node] = {}
    fl = Fleet(prefix, None, nodes, workdir / "targets.json", workdir,  # type: ignore[arg-type]
               lambda: _live(_conn_holder, libvirtd))
    mon: Monitoring | None = None
    try:
        mon_ns = Netns(f"{prefix}-mon").create()
        namespaces.append(mon_ns)
        for i, key in enumerate(NODE_FLAVORS, start=1):
            ns = Netns(f"{prefix}-{key}").create()
            namespaces.append(ns)
            veth(ns, "eth0", f"10.203.{i}.2/30", mon_ns, f"veth-{key}", f"10.203.{i}.1/30")
            nodes[key] = Node(name=f"node-{key}", ns=ns, address=f"10.203.{i}.2",
                              workdir=workdir / f"node-{key}", guest_glob=f"{prefix}-{key}-*",
                              trace_instance=f"{prefix}-{key}")
            nodes[key].workdir.mkdir()
        for key, flavor in NODE_FLAVORS.items():
            fl.start_guest(key, flavor)
        fl.write_sd()
        mon = fl.mon = start_monitoring(mon_ns, workdir / "monitoring", fl.sd_file)
        for node in nodes.values():
            node.start_daemon(mon_ns)
        yield fl
    finally:
        _teardown(nodes, mon, fl.guest_uuids, namespaces, fl.conn)


def _teardown(nodes: dict[str, Node], mon: Monitoring | None, doms: list[str], namespaces: list[Netns],
              conn) -> None:
    """Every step runs even when an earlier one fails (libvirtd restarted
    by another test, a server that will not die); the first error is raised
    at the end."""
    errors: list[BaseException] = []

    def step(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 (collected, raised below)
            errors.append(err)

    for node in nodes.values():
        step(node.stop_daemon)
        # A daemon that logged a traceback failed, whatever the tests checked.
        step(node.assert_no_traceback)
    if mon is not None:
        step(mon.close)
    for uuid in doms:
        step(_destroy, conn, uuid)
    for ns in reversed(namespaces):
        step(ns.delete)
    if errors:
        raise errors[0]


def _destroy(conn, uuid: str, attempts: int = 3) -> None:
    """Destroy a guest by UUID with a fresh lookup each time: a test
    elsewhere may restart libvirtd under us."""
    for attempt in range(attempts):
        try:
            conn().lookupByUUIDString(uuid).destroy()
            return
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            if attempt == attempts - 1:
                raise
            time.sleep(1)
