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
from pathlib import Path

log = logging.getLogger(__name__)

RUNTIME = "cpu.rt_runtime_us"
PERIOD = "cpu.rt_period_us"
# Budgets are rounded down to this granularity to keep numbers readable.
GRANULE_US = 1000


class BudgetError(Exception):
    """The realtime budget cannot be granted; the message says why."""


@dataclass(frozen=True)
class Write:
    path: str  # cgroup path relative to the hierarchy root, "/"-separated, leading "/"
    before: int
    after: int


@dataclass
class BudgetPlan:
    per_vcpu_us: int
    writes: list[Write] = field(default_factory=list)


def find_cpu_hierarchy(proc_root: str = "/proc") -> str | None:
    """Mount point of the cgroup v1 hierarchy that has the ``cpu`` controller
    and RT group scheduling files, or None (cgroup v2, or no RT group sched)."""
    try:
        mounts = Path(proc_root, "self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) < 4 or parts[2] != "cgroup":
            continue
        if "cpu" in parts[3].split(",") and Path(parts[1], RUNTIME).exists():
            return parts[1]
    return None


def rt_group_mode(proc_root: str = "/proc", sys_root: str = "/sys") -> str:
    """"v1": budgets needed and grantable; "v2": RT group scheduling on the
    unified hierarchy (operator action needed); "none": no RT group
    scheduling, FIFO needs no budget."""
    if find_cpu_hierarchy(proc_root):
        return "v1"
    if Path(sys_root, "fs/cgroup", RUNTIME).exists() or Path(sys_root, "fs/cgroup/unified", RUNTIME).exists():
        return "v2"
    return "none"


def _parent(path: str) -> str:
    parent = path.rsplit("/", 1)[0]
    return parent or "/"


def _ancestors(path: str) -> list[str]:
    """Ancestors of a cgroup path, excluding the root, nearest last."""
    out = []
    p = _parent(path)
    while p != "/":
        out.append(p)
        p = _parent(p)
    return list(reversed(out))


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
        managed.update(_ancestors(leaf))
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
            raise BudgetError(
                f"realtime.rt_budget_us = {fixed_us} for {len(leaves)} realtime vCPU cgroups needs "
                f"{per * len(leaves)} µs but only {available} µs of the root's {root_runtime} µs is free")
    else:
        per = (available // len(leaves)) // GRANULE_US * GRANULE_US
        if per <= 0:
            raise BudgetError(f"no realtime budget left: the root group's {root_runtime} µs is held by "
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
    writes = [Write(p, runtime.get(p, 0), v) for p, v in target.items() if runtime.get(p, 0) != v]
    decreases = sorted((w for w in writes if w.after < w.before), key=lambda w: w.path.count("/"), reverse=True)
    increases = sorted((w for w in writes if w.after > w.before), key=lambda w: w.path.count("/"))
    return BudgetPlan(per_vcpu_us=per, writes=decreases + increases)


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def snapshot(hierarchy: str, leaves: set[str]) -> tuple[dict[str, int], dict[str, list[str]], int]:
    """``leaves`` here is every group of interest (to grant and to release)."""
    """Read what :func:`plan_budgets` needs from the mounted hierarchy."""
    root = Path(hierarchy)
    root_period = _read_int(root / PERIOD)
    runtime: dict[str, int] = {"/": _read_int(root / RUNTIME)}
    children: dict[str, list[str]] = {}
    nodes = {"/"}
    for leaf in leaves:
        nodes.update(_ancestors(leaf))
    for node in nodes:
        d = root / node.lstrip("/")
        kids = []
        for entry in d.iterdir() if d.is_dir() else ():
            if entry.is_dir() and (entry / RUNTIME).exists():
                rel = "/" + str(entry.relative_to(root))
                kids.append(rel)
                runtime[rel] = _read_int(entry / RUNTIME)
                period = _read_int(entry / PERIOD)
                if period != root_period:
                    raise BudgetError(f"{entry / PERIOD} is {period} µs, the root's is {root_period} µs: "
                                      "rtagent only balances budgets with one period")
        children[node] = kids
    for leaf in leaves:
        if leaf not in runtime:
            raise FileNotFoundError(errno.ENOENT, "cgroup vanished", leaf)
    root_runtime = runtime["/"]
    if root_runtime < 0:  # -1: RT throttling disabled, the whole period is available
        root_runtime = root_period
    return runtime, children, root_runtime


def apply_budgets(hierarchy: str, leaves: set[str], fixed_us: int | None = None,
                  release: set[str] = frozenset()) -> BudgetPlan:
    """Grant realtime budget to ``leaves`` (and their ancestors), take it back
    from ``release``.  Idempotent: no write happens when every group already
    has its target."""
    release = {p for p in release if Path(hierarchy, p.lstrip("/"), RUNTIME).exists()}
    runtime, children, root_runtime = snapshot(hierarchy, leaves | release)
    plan = plan_budgets(leaves, runtime, children, root_runtime, fixed_us, release)
    for w in plan.writes:
        target = Path(hierarchy, w.path.lstrip("/"), RUNTIME)
        try:
            target.write_text(str(w.after))
        except OSError as err:
            if err.errno == errno.ENOENT:
                log.debug("cgroup %s vanished while granting budget", w.path)
                continue
            raise BudgetError(f"cannot set {target} from {w.before} to {w.after}: "
                              f"{os.strerror(err.errno or 0)}") from None
        log.debug("rt budget %s: %d -> %d", w.path, w.before, w.after)
    return plan


def stale_guest_groups(hierarchy: str, leaves: set[str]) -> set[str]:
    """Budget held by dead guests: libvirt guest cgroups (``qemu-…``,
    ``machine-qemu…``) next to our guests' cgroups that contain no task at
    all yet hold realtime budget.  libvirt sometimes fails to remove a
    stopped guest's cgroup; without this its budget would be lost until
    reboot.  Returns every budget-holding group in such subtrees."""
    parents = {_parent(_parent(leaf)) for leaf in leaves if leaf.count("/") >= 2}
    out: set[str] = set()
    for parent in parents:
        base = Path(hierarchy, parent.lstrip("/"))
        try:
            siblings = [e for e in base.iterdir() if e.is_dir() and "qemu" in e.name]
        except OSError:
            continue
        for guest in siblings:
            rel = "/" + str(guest.relative_to(hierarchy))
            if any(leaf == rel or leaf.startswith(rel + "/") for leaf in leaves):
                continue
            holding, busy = [], False
            for d, _dirs, _files in os.walk(guest):
                try:
                    if Path(d, "tasks").read_text().strip():
                        busy = True
                        break
                    if _read_int(Path(d, RUNTIME)) > 0:
                        holding.append("/" + str(Path(d).relative_to(hierarchy)))
                except (OSError, ValueError):
                    continue
            if not busy:
                out.update(holding)
    return out


def chain_budget(hierarchy: str, path: str) -> list[tuple[str, int]]:
    """``(path, rt_runtime_us)`` from the root to ``path``: a zero anywhere
    means a thread there cannot be realtime."""
    out = []
    for p in ["/", *_ancestors(path), path] if path != "/" else ["/"]:
        try:
            out.append((p, _read_int(Path(hierarchy, p.lstrip("/"), RUNTIME))))
        except FileNotFoundError:
            out.append((p, 0))
    return out
