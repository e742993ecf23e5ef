"""Shared fixtures: a real libvirtd and real guests for the system tier.

The session fixture starts ``virtlogd``/``libvirtd`` only when none answers,
and stops only what it started (by PID).  Guests are transient (``createXML``)
and destroyed at teardown even when the test fails; names carry this pytest
process's PID so that parallel runs on one host never touch each other's.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import guests
from tests.hostguard import Glance, give_back_machine_budget, machine_budget

URI = "qemu:///system"
_SOCK = "/run/libvirt/libvirt-sock"
_counter = itertools.count()


def _is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture(scope="session", autouse=True)
def _machine_rt_budget_given_back():
    """The RT budget the test daemons left on /machine goes back at the end.
    A host whose first guest the session starts has no /machine yet: it held
    nothing then, so it goes back to what its children hold (CI's fresh
    machine was left with 950000 µs before this)."""
    if not _is_root():
        yield
        return
    found = machine_budget()
    yield
    done = give_back_machine_budget(found[1] if found is not None else 0)
    if done:
        print(f"\n{done} (left by test daemons stopped before their guests)")


@pytest.fixture(autouse=True)
def _host_partition_untouched():
    """Every test leaves the host partition as it found it (tests/hostguard.py)."""
    before = Glance.now()
    yield
    after = Glance.now()
    changes = before.changes_to(after)
    if changes:
        errors = before.put_back(after)
        pytest.fail("this test changed the host partition and did not restore it (put back"
                    + (f", with errors: {errors}" if errors else "") + "): " + "; ".join(changes))


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root (threads/system tier)")
    for item in items:
        if ("threads" in item.keywords or "system" in item.keywords) and not _is_root():
            item.add_marker(skip_root)


def _libvirt_answers() -> bool:
    import libvirt

    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def _read_pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def libvirtd():
    """A running libvirtd; yields the connection URI."""
    if not _is_root():
        pytest.skip("system tier needs root")
    import libvirt  # noqa: F401  (fail early with a clear import error)

    started: list[int] = []
    if not _libvirt_answers():
        if _read_pid("/run/virtlogd.pid") is None or not Path(f"/proc/{_read_pid('/run/virtlogd.pid')}").exists():
            subprocess.run(["virtlogd", "-d"], check=True)
            _wait(lambda: _read_pid("/run/virtlogd.pid") is not None, 10, "virtlogd pid file")
            started.append(_read_pid("/run/virtlogd.pid"))
        subprocess.run(["libvirtd", "-d"], check=True)
        _wait(_libvirt_answers, 30, "libvirtd to answer on " + _SOCK)
        started.append(_read_pid("/run/libvirtd.pid"))
    yield URI
    for pid in reversed([p for p in started if p]):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def _conn_holder(libvirtd):
    import libvirt

    holder = {"conn": libvirt.open(libvirtd)}
    yield holder
    try:
        holder["conn"].close()
    except libvirt.libvirtError:
        pass


def _live(holder: dict, uri: str):
    """The held connection, reopened when a test restarted libvirtd."""
    import libvirt

    c = holder["conn"]
    try:
        # isAlive() only knows what the last RPC saw: make one.
        c.getLibVersion()
        alive = True
    except libvirt.libvirtError:
        alive = False
    if not alive:
        _wait(_libvirt_answers, 30, "libvirtd to answer")
        c = holder["conn"] = libvirt.open(uri)
    return c


@pytest.fixture
def conn(_conn_holder, libvirtd):
    return _live(_conn_holder, libvirtd)


@dataclass
class Guest:
    name: str
    dom: object  # libvirt.virDomain
    uuid_str: str = ""

    @property
    def uuid(self) -> str:
        return self.dom.UUIDString()

    @property
    def pid(self) -> int:
        return int(Path(f"/run/libvirt/qemu/{self.name}.pid").read_text().strip())

    def xml(self) -> str:
        return self.dom.XMLDesc(0)

    def thread_names(self) -> dict[int, str]:
        out = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                out[int(task.name)] = (task / "comm").read_text().strip()
            except OSError:
                continue
        return out

    def kvm_pit_tid(self) -> int | None:
        """The guest's ``kvm-pit/<qemu pid>`` kernel thread (KVM guests only)."""
        want = f"kvm-pit/{self.pid}"
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == want:
                        return int(entry.name)
                except OSError:
                    continue
        return None

    def vcpu_tids(self) -> dict[int, int]:
        """vCPU index → thread id, from libvirt's own view (QEMU's query-cpus)."""
        import re

        out = {}
        for tid, name in self.thread_names().items():
            m = re.fullmatch(r"CPU (\d+)/(KVM|TCG)", name)
            if m:
                out[int(m.group(1))] = tid
        return out


def unique_name(prefix: str = "rtt") -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


@pytest.fixture
def guest_factory(_conn_holder, libvirtd):
    """``guest_factory(xml_or_builder, ...)`` starts a transient guest.

    Pass a full XML string, or keyword arguments for
    :func:`tests.guests.rt_guest_xml` (``name`` optional).  Each guest is
    destroyed at teardown; a guest whose QEMU is already gone is fine.
    """
    import libvirt

    created: list[Guest] = []

    def start(xml: str | None = None, *, name: str | None = None, wait_vcpus: bool = True, flags: int = 0,
              **kw) -> Guest:
        """``flags``: createXML's (``VIR_DOMAIN_START_PAUSED``: the guest's CPUs
        stay stopped until resumed)."""
        name = name or unique_name()
        if xml is None:
            xml = guests.rt_guest_xml(name, **kw)
        dom = _live(_conn_holder, libvirtd).createXML(xml, flags)
        g = Guest(name=name, dom=dom, uuid_str=dom.UUIDString())
        created.append(g)
        if wait_vcpus:
            nvcpus = dom.maxVcpus() if dom.isActive() else 0
            _wait(lambda: len(g.vcpu_tids()) >= nvcpus, 30, f"vCPU threads of {name}")
        return g

    yield start
    for g in created:
        try:
            _live(_conn_holder, libvirtd).lookupByUUIDString(g.uuid_str).destroy()
        except libvirt.libvirtError:
            pass
    remove_left_groups([g.name for g in created])


def remove_left_groups(names: list[str], root: str = "/sys/fs/cgroup") -> list[str]:
    """The cgroup v1 directories libvirt left behind for these (stopped)
    guests: libvirt removes a guest's groups when it stops, but after a
    SIGKILLed QEMU its rmdir can meet threads still exiting (EBUSY), and the
    empty directories stay.  Only empty ones go (rmdir refuses the rest),
    deepest first; returns what was removed."""
    import glob

    removed = []
    for name in names:
        for top in glob.glob(f"{glob.escape(root)}/*/machine/qemu-*-{glob.escape(name)}.libvirt-qemu"):
            for d, _subdirs, _files in os.walk(top, topdown=False):
                try:
                    os.rmdir(d)
                    removed.append(d)
                except OSError:
                    pass
    return removed
