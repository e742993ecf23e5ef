"""RT group scheduling budget (cgroup v1 ``cpu.rt_runtime_us``).

With ``CONFIG_RT_GROUP_SCHED`` a thread can only become SCHED_FIFO/RR if every
cgroup on its path in the ``cpu`` hierarchy has a realtime budget.  libvirt
creates its per-guest and per-vCPU cgroups with a budget of 0, which is why
libvirt's own ``<vcpusched>`` fails with "Cannot set scheduler parameters …
Operation not permitted" on such kernels.

Strategy ("equal share", see docs/rt-budget.md): the kernel requires, for
every group, that its children's runtime/period ratios sum to no more than
its own, and the root's ratio is fixed by ``kernel.sched_rt_runtime_us``.
This check is global, not per CPU, so realtime vCPUs on *different* cores
still compete for one budget.  rtagent therefore:

1. collects the cgroups of every realtime vCPU thread on the host (leaves);
2. computes what the root can give them: its runtime minus what unmanaged
   groups hanging off the managed paths already hold;
3. gives each leaf the same budget ``B`` (or the fixed ``rt_budget_us``), and
   every ancestor exactly the sum of its children;
4. writes decreases bottom-up first (releasing budget), then increases
   top-down, so that every single write satisfies the kernel's invariant.

Planning (:func:`plan_budgets`) is pure over a snapshot; :func:`apply_budgets`
does the writes.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

from ...kernel.cgroups import RUNTIME, RtTree, ancestors, guests_parent

log = logging.getLogger(__name__)

__all__ = ["RUNTIME", "BudgetError", "BudgetShort", "Write", "BudgetPlan", "plan_budgets", "snapshot",
           "apply_budgets", "share_from_parent", "stale_guest_groups", "budget_fingerprint", "chain_budget"]
# Budgets are rounded down to this granularity to keep numbers readable.
GRANULE_US = 1000


class BudgetError(Exception):
    """The realtime budget cannot be granted; the message says why."""


class BudgetShort(BudgetError):
    """Not enough budget is free for the plan (held by other groups, or the
    fixed ``rt_budget_us`` does not fit): asking again changes nothing until
    other groups give budget back (tuning/guest/grantgate.py).  ``repeat``:
    the same refusal again, not re-planned."""

    def __init__(self, message: str, repeat: bool = False):
        super().__init__(message)
        self.repeat = repeat


@dataclass(frozen=True)
class Write:
    path: str  # cgroup path relative to the hierarchy root, "/"-separated, leading "/"
    before: int
    after: int


@dataclass
class BudgetPlan:
    per_vcpu_us: int
    writes: list[Write] = field(default_factory=list)


def plan_budgets(
    leaves: set[str],
    runtime: dict[str, int],
    children: dict[str, list[str]],
    root_runtime: int,
    fixed_us: int | None = None,
    release: set[str] = frozenset(),
) -> BudgetPlan:
    """Plan the writes for ``leaves`` given a snapshot.

    ``runtime`` maps every path on the managed tree (root "/" included) and
    each of their children to its current ``cpu.rt_runtime_us``; ``children``
    maps each managed path (and "/") to its child paths.  ``release`` are
    groups rtagent granted budget to earlier that no longer need it (a vCPU
    that stopped being realtime): they go back to 0.  Pure.
    """
    release = {p for p in release if p in runtime and p not in leaves}
    if not leaves and not release:
        return BudgetPlan(per_vcpu_us=0)
    managed: set[str] = set()
    for leaf in leaves | release:
        managed.update(ancestors(leaf))
    # Budget held by groups we do not manage but which hang off our paths
    # (another guest's groups, another tool's realtime group) stays theirs.
    unmanaged = 0
    for node in managed | {"/"}:
        for child in children.get(node, []):
            if child not in managed and child not in leaves and child not in release:
                unmanaged += max(runtime.get(child, 0), 0)
    available = root_runtime - unmanaged
    if not leaves:
        per = 0
    elif fixed_us is not None:
        per = fixed_us
        if per * len(leaves) > available:
            raise BudgetShort(
                f"realtime.rt_budget_us = {fixed_us} for {len(leaves)} realtime vCPU cgroups needs "
                f"{per * len(leaves)} µs but only {available} µs of the root's {root_runtime} µs is free")
    else:
        per = (available // len(leaves)) // GRANULE_US * GRANULE_US
        if per <= 0:
            raise BudgetShort(f"no realtime budget left: the root group's {root_runtime} µs is held by "
                              f"other groups ({unmanaged} µs)")
    target: dict[str, int] = {leaf: per for leaf in leaves}
    target.update({p: 0 for p in release})
    # Ancestors: exactly the sum of their children's targets (unmanaged
    # children at their current value), deepest first.
    for node in sorted(managed, key=lambda p: p.count("/"), reverse=True):
        total = 0
        for child in children.get(node, []):
            total += target[child] if child in target else max(runtime.get(child, 0), 0)
        target[node] = total
    return BudgetPlan(per_vcpu_us=per, writes=_budget_writes(target, runtime))


def _budget_writes(target: dict[str, int], runtime: dict[str, int]) -> list[Write]:
    """Decreases bottom-up first (releasing budget), then increases top-down:
    every single write keeps the kernel's invariant."""
    writes = [Write(p, runtime.get(p, 0), v) for p, v in target.items() if runtime.get(p, 0) != v]
    decreases = sorted((w for w in writes if w.after < w.before), key=lambda w: w.path.count("/"), reverse=True)
    increases = sorted((w for w in writes if w.after > w.before), key=lambda w: w.path.count("/"))
    return decreases + increases


def snapshot(tree: RtTree, leaves: set[str]) -> tuple[dict[str, int], dict[str, list[str]], int]:
    """Read what :func:`plan_budgets` needs; ``leaves`` is every group of
    interest (to grant and to release)."""
    root_period = tree.period("/")
    runtime: dict[str, int] = {"/": tree.runtime("/")}
    children: dict[str, list[str]] = {}
    nodes = {"/"}
    for leaf in leaves:
        nodes.update(ancestors(leaf))
    for node in nodes:
        kids = tree.children(node)
        for kid in kids:
            runtime[kid] = tree.runtime(kid)
            period = tree.period(kid)
            if period != root_period:
                raise BudgetError(f"{tree.file(kid, 'cpu.rt_period_us')} is {period} µs, the root's is "
                                  f"{root_period} µs: rtagent only balances budgets with one period")
        children[node] = kids
    for leaf in leaves:
        if leaf not in runtime:
            raise FileNotFoundError(errno.ENOENT, "cgroup vanished", leaf)
    root_runtime = runtime["/"]
    if root_runtime < 0:  # -1: RT throttling disabled, the whole period is available
        root_runtime = root_period
    return runtime, children, root_runtime


def apply_budgets(tree: RtTree, leaves: set[str], fixed_us: int | None = None,
                  release: set[str] = frozenset()) -> BudgetPlan:
    """Grant realtime budget to ``leaves`` (and their ancestors), take it back
    from ``release``.  Idempotent: no write happens when every group already
    has its target."""
    release = {p for p in release if tree.exists(p)}
    runtime, children, root_runtime = snapshot(tree, leaves | release)
    plan = plan_budgets(leaves, runtime, children, root_runtime, fixed_us, release)
    for w in plan.writes:
        try:
            tree.set_runtime(w.path, w.after)
        except OSError as err:
            if err.errno == errno.ENOENT:
                log.debug("cgroup %s vanished while granting budget", w.path)
                continue
            raise BudgetError(f"cannot set {tree.file(w.path)} from {w.before} to {w.after}: "
                              f"{os.strerror(err.errno or 0)}") from None
        log.debug("rt budget %s: %d -> %d", w.path, w.before, w.after)
    return plan


def share_from_parent(tree: RtTree, leaf: str, ways: int) -> int | None:
    """Give ``leaf`` (a new, empty group) its part of what its parent holds
    beyond its children: ``(parent − Σ children) // ways``, in whole
    :data:`GRANULE_US`.  One read per sibling and one write: the start
    window's fast grant, against a parent budget reserved beforehand (the
    full :func:`apply_budgets` reads every guest's group, milliseconds on a
    busy host).  None when nothing is free there (the caller plans in full)."""
    parent = ancestors(leaf)[-1] if ancestors(leaf) else "/"
    free = tree.runtime(parent) - tree.children_hold(parent, besides=leaf)
    us = free // max(ways, 1) // GRANULE_US * GRANULE_US
    if us <= 0:
        return None
    try:
        tree.set_runtime(leaf, us)
    except OSError as err:
        raise BudgetError(f"cannot set {tree.file(leaf)} to {us}: {os.strerror(err.errno or 0)}") from None
    return us


def _holding_if_idle(tree: RtTree, guest: str) -> set[str]:
    """Groups in ``guest``'s subtree holding budget, if no task runs there."""
    holding = set()
    for group, busy, runtime in tree.subtree(guest):
        if busy:
            return set()
        if runtime is not None and runtime > 0:
            holding.add(group)
    return holding


def stale_guest_groups(tree: RtTree, leaves: set[str]) -> set[str]:
    """Budget held by dead guests: libvirt guest cgroups (``qemu-…``,
    ``machine-qemu…``) next to our guests' cgroups that contain no task at
    all yet hold realtime budget.  libvirt sometimes fails to remove a
    stopped guest's cgroup; without this its budget would be lost until
    reboot.  Returns every budget-holding group in such subtrees."""
    parents = {p for leaf in leaves if (p := guests_parent(leaf)) is not None}
    out: set[str] = set()
    for group in parents:
        for guest in tree.guest_groups(group):
            if any(leaf == guest or leaf.startswith(guest + "/") for leaf in leaves):
                continue
            # The kernel keeps every group's children within its own budget:
            # a guest group holding 0 holds 0 all the way down, no walk needed
            # (libvirt's leftover groups are many on a busy host; each walk
            # reads every group's tasks).
            if tree.held(guest) == 0:
                continue
            out |= _holding_if_idle(tree, guest)
    return out


def budget_fingerprint(tree: RtTree, leaves: set[str]) -> tuple:
    """What a refused grant for ``leaves`` depends on that can change without
    rtagent: the root's budget, and every guest group next to ours that holds
    budget, with how much (a guest that stops or gives its budget back
    changes it; groups holding none come and go with every other guest's
    start and stop and free nothing).  One listing and one read per guest
    group, against a full plan's walk of every group."""
    parents = sorted({p for leaf in leaves if (p := guests_parent(leaf)) is not None})
    held = ((g, tree.held(g)) for parent in parents for g in tree.guest_groups(parent))
    return tree.held("/"), tuple((g, us) for g, us in held if us)


def chain_budget(tree: RtTree, path: str) -> list[tuple[str, int]]:
    """``(path, rt_runtime_us)`` from the root to ``path``: a zero anywhere
    means a thread there cannot be realtime."""
    out = []
    for p in ["/", *ancestors(path), path] if path != "/" else ["/"]:
        try:
            out.append((p, tree.runtime(p)))
        except FileNotFoundError:
            out.append((p, 0))
    return out
