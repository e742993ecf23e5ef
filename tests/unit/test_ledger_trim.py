"""The RT-budget ledger gives back what it raised above the vCPU groups once
their guests are gone: ``/machine`` does not keep the host's whole budget
after the last realtime guest was destroyed (it did, until this)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rtagent.kernel.cgroups import PERIOD, RUNTIME, RtTree
from rtagent.tuning.guest.ledger import BudgetLedger

pytestmark = pytest.mark.unit

A = "/machine/qemu-1-a/vcpu1"
B = "/machine/qemu-2-b/vcpu1"
OTHER = "/system/rt-service"  # another tool's realtime group, not ours


def _group(root: Path, path: str, runtime: int = 0) -> None:
    d = root / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / RUNTIME).write_text(f"{runtime}\n")
    (d / PERIOD).write_text("1000000\n")
    (d / "tasks").write_text("")


def _runtime(root: Path, path: str) -> int:
    return int((root / path.lstrip("/") / RUNTIME).read_text())


@pytest.fixture
def host(tmp_path):
    _group(tmp_path, "/", 950000)
    for path in ("/machine", "/machine/qemu-1-a", A, "/machine/qemu-2-b", B):
        _group(tmp_path, path)
    ledger = BudgetLedger(RtTree(str(tmp_path), "v1"))
    ledger.claim("a", {A})
    ledger.claim("b", {B})
    ledger.grant()
    assert _runtime(tmp_path, "/machine") == 950000 and _runtime(tmp_path, A) == 475000
    return tmp_path, ledger


def test_the_last_guest_destroyed_leaves_no_budget_on_machine(host):
    root, ledger = host
    shutil.rmtree(root / "machine" / "qemu-1-a")  # libvirt removed the destroyed guests' groups
    ledger.withdraw("a")
    assert ledger.release_unclaimed() == []
    assert _runtime(root, "/machine") == 950000  # b is still below it: the planner's business
    shutil.rmtree(root / "machine" / "qemu-2-b")
    ledger.withdraw("b")
    assert ledger.release_unclaimed() == []
    assert _runtime(root, "/machine") == 0 and not ledger.raised


def test_a_grant_after_the_trim_raises_machine_again(host):
    root, ledger = host
    for name, uuid in (("qemu-1-a", "a"), ("qemu-2-b", "b")):
        shutil.rmtree(root / "machine" / name)
        ledger.withdraw(uuid)
    ledger.release_unclaimed()
    _group(root, "/machine/qemu-3-c")
    _group(root, "/machine/qemu-3-c/vcpu0")
    ledger.claim("c", {"/machine/qemu-3-c/vcpu0"})
    ledger.grant()
    assert _runtime(root, "/machine") == 950000 and "/machine" in ledger.raised


def test_the_trim_keeps_what_other_groups_below_still_hold(host):
    root, ledger = host
    _group(root, "/machine/qemu-9-theirs", 0)  # another daemon's guest, granted after ours
    shutil.rmtree(root / "machine" / "qemu-1-a")
    ledger.withdraw("a")
    ledger.release_unclaimed()
    (root / "machine" / "qemu-9-theirs" / RUNTIME).write_text("200000\n")
    shutil.rmtree(root / "machine" / "qemu-2-b")
    ledger.withdraw("b")
    ledger.release_unclaimed()
    assert _runtime(root, "/machine") == 200000


def test_groups_the_ledger_never_raised_are_left_alone(tmp_path):
    _group(tmp_path, "/", 950000)
    _group(tmp_path, "/system", 300000)  # set by the operator or another tool
    _group(tmp_path, OTHER, 100000)
    ledger = BudgetLedger(RtTree(str(tmp_path), "v1"))
    assert ledger.release_unclaimed() == []
    assert _runtime(tmp_path, "/system") == 300000


def test_budget_a_previous_daemon_raised_is_trimmed_once_its_guests_are_gone(host):
    root, _old = host  # that daemon stopped; then its guests were destroyed
    for name in ("qemu-1-a", "qemu-2-b"):
        shutil.rmtree(root / "machine" / name)
    ledger = BudgetLedger(RtTree(str(root), "v1"))
    assert ledger.release_unclaimed() == [] and _runtime(root, "/machine") == 950000  # not known as ours
    ledger.inherit({A, B})  # the realtime record's cgroups
    assert ledger.release_unclaimed() == [] and _runtime(root, "/machine") == 0


def test_a_trim_the_kernel_refuses_for_a_moment_is_retried(host, monkeypatch):
    """A removed child group is counted until the kernel frees it: EINVAL."""
    import errno

    root, ledger = host
    for name, uuid in (("qemu-1-a", "a"), ("qemu-2-b", "b")):
        shutil.rmtree(root / "machine" / name)
        ledger.withdraw(uuid)
    real = RtTree.set_runtime
    monkeypatch.setattr(RtTree, "set_runtime", lambda self, g, us: (_ for _ in ()).throw(OSError(errno.EINVAL, "x")))
    assert ledger.release_unclaimed() and ledger.trim_failed
    monkeypatch.setattr(RtTree, "set_runtime", real)
    assert ledger.release_unclaimed() == [] and not ledger.trim_failed
    assert _runtime(root, "/machine") == 0


def test_a_leftover_on_machine_the_grant_found_is_trimmed_too(tmp_path):
    """/machine already held the budget (a stopped daemon's): the grant wrote
    nothing there, and it is still given back after the guest."""
    _group(tmp_path, "/", 950000)
    _group(tmp_path, "/machine", 950000)
    for path in ("/machine/qemu-1-a", A):
        _group(tmp_path, path)
    ledger = BudgetLedger(RtTree(str(tmp_path), "v1"))
    ledger.claim("a", {A})
    ledger.grant()
    assert _runtime(tmp_path, "/machine") == 950000
    shutil.rmtree(tmp_path / "machine" / "qemu-1-a")
    ledger.withdraw("a")
    assert ledger.release_unclaimed() == [] and _runtime(tmp_path, "/machine") == 0
