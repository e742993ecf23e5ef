"""RT group budget planning: the kernel's invariant holds after every write."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtagent.tuning.guest.rtgroup import BudgetError, plan_budgets

pytestmark = pytest.mark.unit


def tree(paths, runtime=None):
    """children map and runtime (default 0) for a set of cgroup paths."""
    runtime = dict(runtime or {})
    children: dict[str, list[str]] = {}
    allp = set()
    for p in paths:
        parts = p.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            allp.add("/" + "/".join(parts[:i]))
    for p in allp:
        parent = p.rsplit("/", 1)[0] or "/"
        children.setdefault(parent, []).append(p)
        runtime.setdefault(p, 0)
    runtime.setdefault("/", 950000)
    return runtime, children


def simulate(runtime, children, writes):
    """Apply writes one by one, checking the kernel's rule at each step:
    for every group, the sum of its children <= its own runtime."""
    rt = dict(runtime)
    for w in writes:
        rt[w.path] = w.after
        for node, kids in children.items():
            assert sum(rt[k] for k in kids) <= rt[node], f"after {w}: {node} over-committed"
    return rt


def test_single_guest_gets_the_root_budget():
    leaves = {"/machine/g1/vcpu1"}
    runtime, children = tree(leaves | {"/machine/g1/vcpu0", "/machine/g1/emulator"})
    plan = plan_budgets(leaves, runtime, children, 950000)
    assert plan.per_vcpu_us == 950000
    rt = simulate(runtime, children, plan.writes)
    assert rt["/machine"] == rt["/machine/g1"] == rt["/machine/g1/vcpu1"] == 950000
    assert rt["/machine/g1/vcpu0"] == 0
    # The writes go top-down for increases.
    assert [w.path for w in plan.writes] == ["/machine", "/machine/g1", "/machine/g1/vcpu1"]


def test_second_guest_shrinks_the_first_before_growing_itself():
    leaves1 = {"/machine/g1/vcpu1"}
    runtime, children = tree(leaves1 | {"/machine/g2/vcpu1"})
    rt = simulate(runtime, children, plan_budgets(leaves1, runtime, children, 950000).writes)
    leaves2 = leaves1 | {"/machine/g2/vcpu1"}
    plan = plan_budgets(leaves2, rt, children, 950000)
    assert plan.per_vcpu_us == 475000
    rt = simulate(rt, children, plan.writes)
    assert rt["/machine/g1/vcpu1"] == rt["/machine/g2/vcpu1"] == 475000
    assert rt["/machine"] == 950000


def test_unmanaged_budget_is_respected():
    leaves = {"/machine/g1/vcpu1"}
    runtime, children = tree(leaves | {"/other"}, {"/other": 200000})
    plan = plan_budgets(leaves, runtime, children, 950000)
    assert plan.per_vcpu_us == 750000
    rt = simulate(runtime, children, plan.writes)
    assert rt["/other"] == 200000


def test_fixed_budget_that_does_not_fit_names_the_key():
    leaves = {"/m/a/v1", "/m/b/v1"}
    runtime, children = tree(leaves)
    with pytest.raises(BudgetError, match="realtime.rt_budget_us = 500000"):
        plan_budgets(leaves, runtime, children, 950000, fixed_us=500000)
    plan = plan_budgets(leaves, runtime, children, 950000, fixed_us=100000)
    assert simulate(runtime, children, plan.writes)["/m"] == 200000


def test_idempotent():
    leaves = {"/machine/g1/vcpu1", "/machine/g1/vcpu2"}
    runtime, children = tree(leaves)
    rt = simulate(runtime, children, plan_budgets(leaves, runtime, children, 950000).writes)
    assert plan_budgets(leaves, rt, children, 950000).writes == []


def test_release_returns_budget_of_vcpus_no_longer_realtime():
    l1 = {"/machine/g1/vcpu1", "/machine/g1/vcpu2"}
    runtime, children = tree(l1)
    rt = simulate(runtime, children, plan_budgets(l1, runtime, children, 950000).writes)
    plan = plan_budgets({"/machine/g1/vcpu1"}, rt, children, 950000, release={"/machine/g1/vcpu2"})
    rt = simulate(rt, children, plan.writes)
    assert rt["/machine/g1/vcpu2"] == 0 and rt["/machine/g1/vcpu1"] == 950000


def test_no_budget_left():
    leaves = {"/machine/g1/vcpu1"}
    runtime, children = tree(leaves | {"/hog"}, {"/hog": 950000})
    with pytest.raises(BudgetError, match="no realtime budget left"):
        plan_budgets(leaves, runtime, children, 950000)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=8, unique=True),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=8, unique=True),
)
def test_any_rebalance_keeps_the_invariant_at_every_write(first, second):
    def leaves(pairs):
        return {f"/machine/g{g}/vcpu{v}" for g, v in pairs}

    l1, l2 = leaves(first), leaves(second)
    runtime, children = tree(l1 | l2)
    rt = simulate(runtime, children, plan_budgets(l1, runtime, children, 950000).writes)
    plan = plan_budgets(l2, rt, children, 950000, release=l1 - l2)
    rt = simulate(rt, children, plan.writes)
    assert all(rt[leaf] == plan.per_vcpu_us > 0 for leaf in l2)
    assert all(rt[leaf] == 0 for leaf in l1 - l2)


def test_stale_guest_groups_are_found_in_a_fixture_hierarchy(tmp_path):
    from rtagent.kernel.cgroups import RtTree
    from rtagent.tuning.guest.rtgroup import RUNTIME, stale_guest_groups

    def group(path, runtime, tasks=""):
        d = tmp_path / path
        d.mkdir(parents=True, exist_ok=True)
        (d / RUNTIME).write_text(f"{runtime}\n")
        (d / "tasks").write_text(tasks)

    group("machine", 950000)
    group("machine/qemu-1-live", 475000)
    group("machine/qemu-1-live/vcpu1", 475000, "123\n")
    group("machine/qemu-2-dead", 475000)  # libvirt left it behind, empty
    group("machine/qemu-2-dead/vcpu1", 475000)
    group("machine/qemu-3-busy", 0)
    group("machine/qemu-3-busy/vcpu0", 0, "456\n")
    group("machine/other-tool", 100000)  # not a libvirt guest group: never touched
    stale = stale_guest_groups(RtTree(str(tmp_path), "v1"), {"/machine/qemu-1-live/vcpu1"})
    assert stale == {"/machine/qemu-2-dead", "/machine/qemu-2-dead/vcpu1"}


def test_stale_guest_groups_on_the_v2_layout(tmp_path):
    """On the unified hierarchy libvirt nests the thread groups one level
    deeper (``…scope/libvirt/vcpuN``); the dead guest is still found."""
    from rtagent.kernel.cgroups import RtTree
    from rtagent.tuning.guest.rtgroup import stale_guest_groups
    from tests.procfixture import ProcTree

    tree = ProcTree(tmp_path)
    mount = tree.mount_cgroups("v2")
    live = "/machine.slice/machine-qemu\\x2d1\\x2dlive.scope/libvirt/vcpu1"
    dead = "/machine.slice/machine-qemu\\x2d2\\x2ddead.scope"
    tree.add_cgroup(mount, "/machine.slice", runtime=950000, version="v2")
    tree.add_cgroup(mount, live, runtime=475000, tasks="123\n", version="v2")
    tree.add_cgroup(mount, dead, runtime=475000, version="v2")
    tree.add_cgroup(mount, dead + "/libvirt/vcpu1", runtime=475000, version="v2")
    rt = tree.kernel().cgroups.rt_tree()
    assert isinstance(rt, RtTree) and rt.version == "v2"
    assert stale_guest_groups(rt, {live}) == {dead, dead + "/libvirt/vcpu1"}
