"""The RT-budget ledger: which cgroups need realtime budget, and which
rtagent gave budget to.

The RT group budget is one pool for the whole host, so a grant for one guest
must count every realtime guest's vCPU cgroups.  The ledger is that host-wide
record, kept apart from inspection (looking at a guest changes nothing, not
even the ledger): whoever tunes a guest records its claim
(:meth:`BudgetLedger.claim`), a guest that stops or stops being realtime
withdraws it (:meth:`BudgetLedger.withdraw`).

Order matters to the kernel: a group's budget cannot go to 0 while a
realtime task is in it (EBUSY).  So budget is granted *before* threads go
realtime (:meth:`grant`) and released *after* they left it
(:meth:`release_unclaimed`), each release on its own: one that fails is kept
for the next round and never stands in the way of a grant for another guest.

A grant also raises the groups above the vCPU groups (libvirt's ``/machine``
and each guest's own group) to the sum of their children.  A guest that is
destroyed takes its groups with it, but ``/machine`` keeps what it was given:
after the last realtime guest it would hold the host's whole RT budget for
nobody.  So the groups rtagent raised are trimmed back to what their children
hold once no claimed group lies below them (:meth:`_trim_raised`).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

from ...kernel import Kernel
from ...kernel.cgroups import RtTree, ancestors
from ...sets import frozen
from . import rtgroup
from .grantgate import GrantGate

log = logging.getLogger(__name__)


@dataclass
class BudgetLedger:
    # The budget files of the hierarchy with RT group scheduling (the floor's
    # one answer), None when the kernel needs no budget (every method a no-op).
    hierarchy: RtTree | None
    # realtime.rt_budget_us: a fixed per-vCPU budget, None = equal share.
    fixed_us: int | None = None
    claims: dict[str, frozenset[str]] = field(default_factory=dict)  # guest uuid -> cgroups
    granted: set[str] = field(default_factory=set)
    # Groups above the leaves a grant planned (set to the sum of their
    # children's budgets): trimmed when nothing claimed lies below them.
    raised: set[str] = field(default_factory=set)
    # A trim the kernel refused (a removed child group is still counted
    # until the kernel frees it: EINVAL for a moment): retried at the next
    # steady resync (GuestSupervisor.check_steady; daemon/cadence.py keeps
    # the daemon off its idle cadence meanwhile).
    trim_failed: bool = False
    # Releases the kernel refused (EBUSY while a thread there is still
    # realtime): retried on the next grant or release.
    release_failed: dict[str, str] = field(default_factory=dict)
    # A refused grant is not re-planned until it could succeed.
    gate: GrantGate = field(default_factory=GrantGate)

    @classmethod
    def for_host(cls, rt_budget_us: int | str, kernel: Kernel) -> BudgetLedger:
        ledger = cls(kernel.cgroups.rt_tree())
        ledger.configure(rt_budget_us)
        return ledger

    def configure(self, rt_budget_us: int | str) -> None:
        """Follow a (re)loaded ``realtime.rt_budget_us``."""
        self.fixed_us = None if rt_budget_us == "auto" else int(rt_budget_us)

    # -- the record ------------------------------------------------------------

    def claim(self, uuid: str, cgroups: set[str] | frozenset[str]) -> None:
        self.claims[uuid] = frozen(c for c in cgroups if c != "/")  # mostly none: one shared empty set (sets.py)

    def withdraw(self, uuid: str) -> None:
        self.claims.pop(uuid, None)

    @property
    def claimed(self) -> set[str]:
        return set().union(*self.claims.values()) if self.claims else set()

    def _exists(self, path: str) -> bool:
        assert self.hierarchy is not None
        return self.hierarchy.exists(path)

    def inherit(self, cgroups: set[str] | frozenset[str]) -> None:
        """Groups the daemon before this one granted budget to (the realtime
        record): the groups above them are trimmed like this ledger's own
        once nothing claimed lies below them (a guest destroyed while no
        daemon ran left its budget on ``/machine``)."""
        for path in cgroups:
            self.raised.update(ancestors(path))

    # -- the kernel ------------------------------------------------------------

    def release_unclaimed(self) -> list[str]:
        """Take budget back from every group rtagent granted that no guest
        claims any more; one write plan per group, so one refusal blocks
        nothing else.  Returns the refusals (also kept in ``release_failed``)."""
        if self.hierarchy is None:
            return []
        self.granted = {p for p in self.granted if self._exists(p)}
        for gone in [p for p in self.release_failed if p not in self.granted]:
            del self.release_failed[gone]
        errors = []
        for path in sorted(self.granted - self.claimed):
            try:
                rtgroup.apply_budgets(self.hierarchy, set(), None, {path})
            except (rtgroup.BudgetError, OSError) as err:
                self.release_failed[path] = str(err)
                errors.append(str(err))
                log.warning("RT budget of %s not released yet: %s", path, err)
                continue
            self.granted.discard(path)
            self.release_failed.pop(path, None)
        return errors + self._trim_raised()

    def _trim_raised(self) -> list[str]:
        """Groups this ledger raised with nothing claimed below them any more
        (their guests are gone): back to what their children hold, deepest
        first so every write keeps the kernel's invariant.  Returns errors."""
        assert self.hierarchy is not None
        below = set()
        for path in self.granted | self.claimed:
            below.update(ancestors(path))
        errors = []
        for path in sorted(self.raised - below, key=lambda p: (-p.count("/"), p)):
            if not self._exists(path):
                self.raised.discard(path)
                continue
            try:
                held = self.hierarchy.children_hold(path)
                if self.hierarchy.runtime(path) > held:
                    self.hierarchy.set_runtime(path, held)
                    log.info("RT budget of %s trimmed to %d µs: no realtime guest below it any more", path, held)
            except OSError as err:
                errors.append(f"cannot trim the RT budget of {path} yet: {err}")
                (log.debug if err.errno == errno.EINVAL else log.warning)("%s", errors[-1])
                continue
            self.raised.discard(path)
        self.trim_failed = bool(errors)
        return errors

    def grant(self) -> rtgroup.BudgetPlan | None:
        """Grant budget to every claimed cgroup that exists (idempotent), after
        releasing what is no longer claimed and what dead guests left behind.
        Raises :class:`rtgroup.BudgetError` (or OSError) when the grant
        itself is refused; failed releases only shrink what is available.
        A refusal for want of budget is answered again without re-planning
        while nothing it depends on changed (grantgate.py)."""
        if self.hierarchy is None:
            return None
        leaves = {p for p in self.claimed if self._exists(p)}
        self.release_unclaimed()
        if not leaves:
            self.gate.open()
            return None
        if self.gate.closed and (err := self.gate.refusal(self._grant_key(leaves))) is not None:
            raise err
        # Deepest first: a group's budget cannot drop below its children's
        # (EINVAL), so vcpuN goes to 0 before its guest group does.
        for stale in sorted(rtgroup.stale_guest_groups(self.hierarchy, leaves), key=lambda p: (-p.count("/"), p)):
            try:
                rtgroup.apply_budgets(self.hierarchy, set(), None, {stale})
            except (rtgroup.BudgetError, OSError) as err:
                log.warning("RT budget held by dead guest group %s not released: %s", stale, err)
        try:
            plan = rtgroup.apply_budgets(self.hierarchy, leaves, self.fixed_us)
        except rtgroup.BudgetShort as err:
            self.gate.refused(self._grant_key(leaves), err)  # nothing was written: the state it was planned from
            raise
        self.gate.open()
        self.granted |= leaves
        # The plan set every group above the leaves to the sum of its
        # children (whatever it held before, a stopped daemon's leftover
        # included): they are this ledger's to trim.
        self.raised.update(a for leaf in leaves for a in ancestors(leaf))
        return plan

    def _grant_key(self, leaves: set[str]) -> tuple:
        assert self.hierarchy is not None
        return frozenset(leaves), self.fixed_us, rtgroup.budget_fingerprint(self.hierarchy, leaves)

    # -- a guest being started (daemon/startwatch.py) ---------------------------

    def reserve(self, uuid: str, guest_group: str) -> None:
        """Before libvirt makes a starting guest's vcpuN groups: its own group
        claimed as if it were a leaf, so that it holds a share the vcpuN
        groups can take at once (:meth:`place`).  Raises like :meth:`grant`."""
        self.claim(uuid, {guest_group})
        self.grant()

    def place(self, uuid: str, leaves: set[str], guest_group: str, leaf: str, ways: int) -> None:
        """vcpuN ``leaf`` exists: give it a part of the reserved group (fast),
        else plan in full.  From now on the guest claims its vcpuN groups;
        its own group is an ancestor again.  Raises like :meth:`grant`."""
        self.claim(uuid, leaves)
        if self.hierarchy is None:
            return
        got = None
        if guest_group in self.granted:
            try:
                got = rtgroup.share_from_parent(self.hierarchy, leaf, ways)
            except (rtgroup.BudgetError, OSError) as err:
                log.debug("fast RT budget for %s: %s", leaf, err)
        if got is None:
            self.granted.discard(guest_group)
            self.grant()
            return
        self.granted.add(leaf)
        if ways <= 1:
            self.granted.discard(guest_group)  # every realtime vCPU has its share: an ancestor now

    def settle(self, guest_group: str) -> None:
        """The start is over: the guest's own group is an ancestor like any
        other, and every group gets its planned share (the fast grants were
        only enough to let FIFO in).  Raises like :meth:`grant`."""
        self.granted.discard(guest_group)
        self.grant()
