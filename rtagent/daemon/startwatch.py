"""The start window: make a starting guest's realtime vCPUs realtime while
libvirt still holds its CPUs stopped, and measure what the guest ran before.

libvirt's STARTED event (and its ``started`` hook) come after ``cont``: a
guest tuned from rtagent's metadata or a config rule would run its first
instructions as SCHED_OTHER.  libvirt's order (``qemuProcessLaunch``): QEMU
runs with ``-S``; per vCPU ``qemuProcessSetupPid`` makes ``vcpuN``, sets its
cpuset, writes the thread into ``vcpuN/tasks`` (cpu hierarchy first), sets
its affinity (and ``<vcpusched>``); then iothreads, devices, and only then
``cont``.  :mod:`rtagent.kernel.cgwatch` reports those steps as they happen;
here, on the daemon loop (no race with reconciles):

* guest group created → the domain by its id (``lookupByID`` answers while
  the domain starts), its intent from the live XML, the selector;
* ``vcpuN`` created → the RT budget granted to it at once (the ledger), so
  FIFO never meets a zero budget;
* thread placed in ``vcpuN`` → the baseline (its time on CPU) and, once its
  affinity is libvirt's final single pCPU, SCHED_FIFO: the pure planner
  decides, the executor applies (syscalls only — libvirt's pin calls need a
  job the start holds).  Before that first write the guest is noted in the
  realtime record (record.py), as a reconcile would: a daemon stopped before
  the STARTED reconcile leaves its successor knowing whose FIFO it is.

Never before the placement: a realtime thread moved into a group without
budget fails with EINVAL, and libvirt would fail the start.  Every step is
guarded; whatever the early path misses, the STARTED reconcile does, and
:meth:`StartWatch.after_reconcile` records when FIFO landed there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..kernel import Kernel
from ..kernel.cgroups import vcpu_of
from ..intent import derive_spec
from ..kernel.cgwatch import CgroupWatcher, GuestDir, Signal, StartSignal, read_tasks, vcpu_dirs
from ..libvirt_host import Guest
from ..model import RealtimeSpec
from ..threadname import name_thread
from ..tuning.guest import rtgroup
from ..tuning.guest.apply import execute
from ..tuning.guest.claims import claims_of
from ..tuning.guest.observe import read_thread
from ..tuning.guest.plan import REALTIME, SetScheduler, ThreadPlan, Want, plan_actions
from ..tuning.guest.report import DomainReport
from ..vocab import ApplyOutcome, Role, ThreadKind
from . import startwindow
from .startwindow import Path, VcpuStart

log = logging.getLogger(__name__)

# Look again this soon after a placement whose affinity libvirt has not set
# yet (its next syscall), doubling; give up on the early path after GIVE_UP_S.
FIRST_RETRY_S = 0.001
GIVE_UP_S = 5.0


@dataclass
class _Start:
    """One guest start, from its cgroup's creation until it is tuned."""

    group: str
    guest_dir: GuestDir
    seen_at: float
    uuid: str = ""
    name: str = ""
    spec: RealtimeSpec | None = None
    pid: int | None = None
    vcpus: dict[int, VcpuStart] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)  # vcpuN groups given budget early
    started_seen: bool = False
    early_done: bool = False  # tuned early, or given up on (the reconcile takes over)
    retry_at: float | None = None
    retry_step: float = FIRST_RETRY_S
    kept_off: frozenset[int] = frozenset()  # pCPUs another guest's realtime vCPU owns


@dataclass(frozen=True)
class _Resolved:
    """The lookup thread's answer: the domain of a guest group, its live XML."""

    group: str
    guest: Guest | None
    xml: str | None
    error: str = ""


class StartWatch:
    """Lives on the daemon loop; ``supervisor`` is the GuestSupervisor."""

    def __init__(self, supervisor, wake: Callable[[], None], *, clock: Callable[[], float] = time.monotonic):
        """``wake()`` (from the watcher thread) makes the loop call :meth:`run_due`."""
        self.sup = supervisor
        self._wake = wake
        self._inbox: queue.SimpleQueue[StartSignal | _Resolved] = queue.SimpleQueue()
        self._clock = clock
        self.watchers: dict[str, CgroupWatcher] = {}  # controller -> its hierarchy's watcher
        self.starts: dict[str, _Start] = {}  # guest group -> start
        supervisor.on_reconciled = self.after_reconcile
        self._lookups: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()

    @property
    def kernel(self) -> Kernel:
        return self.sup.tuner.kernel

    @property
    def early(self) -> bool:
        return self.sup.config.daemon.start_window_early

    def start(self) -> bool:
        """Watch the cgroup v1 ``cpu`` hierarchy; False (and a log line) where
        that cannot be done — guests are then tuned at STARTED only."""
        watching = self._start()
        self.sup.store.update(lambda s: setattr(s.daemon, "start_watch", watching))
        return watching

    def _start(self) -> bool:
        mounts = self.kernel.cgroups.v1_mounts()
        if "cpu" not in mounts:
            log.info("start window: no cgroup v1 cpu hierarchy; realtime vCPUs are tuned at STARTED")
            return False
        try:
            for controller in ("cpu", "cpuset"):
                if controller in mounts and (controller == "cpu" or mounts[controller] != mounts["cpu"]):
                    w = CgroupWatcher(mounts[controller], self._signal, controller)
                    w.start()
                    self.watchers[controller] = w
        except OSError as err:
            log.warning("start window: cannot watch cgroupfs (%s); realtime vCPUs are tuned at STARTED", err)
            self.stop()
            return False
        threading.Thread(target=self._resolve, name="start-lookup", daemon=True).start()
        return True

    def stop(self, timeout: float = 4.0) -> None:
        self._lookups.put(None)
        for w in self.watchers.values():
            w.stop(timeout / max(1, len(self.watchers)))
        self.watchers = {}

    def _signal(self, sig: StartSignal | _Resolved) -> None:
        """On the watcher thread: hand over, wake the loop."""
        self._inbox.put(sig)
        self._wake()

    # -- signals (daemon loop) ------------------------------------------------

    def handle(self, sig: StartSignal | _Resolved) -> None:
        if isinstance(sig, _Resolved):
            try:
                self._resolved(sig)
            except Exception:
                log.exception("start window: %s", sig.group)
            return
        log.debug("start window: %s %s vcpu %s (%s)", sig.signal.value, sig.group, sig.vcpu, sig.hierarchy)
        try:
            cpu = sig.hierarchy == "cpu"
            if sig.signal == Signal.GUEST and cpu:
                self._guest(sig)
            elif sig.signal == Signal.GONE and cpu:
                self._gone(sig.group)
            elif (rec := self.starts.get(sig.group)) is not None and sig.vcpu is not None:
                if sig.signal == Signal.VCPU and cpu and rec.spec is not None:
                    self._vcpu_group(rec, sig.vcpu)
                elif sig.signal == Signal.PLACED:
                    self._placed(rec, sig.vcpu)
        except Exception:  # never fail (or stop) anything on a start's behalf
            log.exception("start window: %s of %s", sig.signal.value, sig.group)

    def _drop(self, group: str) -> None:
        self.starts.pop(group, None)
        for w in self.watchers.values():
            w.forget(group)

    def _guest(self, sig: StartSignal) -> None:
        """A guest group appeared: which domain, asked of libvirt off the loop
        (libvirtd busy starting guests can take seconds to answer, and the
        loop must not wait: other guests' starts and drift go on)."""
        self.starts[sig.group] = _Start(sig.group, sig.guest, self._clock())
        self._lookups.put((sig.group, sig.guest.domain_id))

    def _resolve(self) -> None:
        """The lookup thread: ``lookupByID`` and the live XML (both answer
        while the domain starts); the answer goes back to the loop."""
        name_thread("start-lookup")
        while (item := self._lookups.get()) is not None:
            group, domain_id = item
            try:
                guest, xml = self.sup.host.starting(domain_id, self.sup.selector.matches_name)
                self._signal(_Resolved(group, guest, xml))
            except Exception as err:  # gone again, libvirt busy: the STARTED path remains
                self._signal(_Resolved(group, None, None, str(err)))

    def _resolved(self, res: _Resolved) -> None:
        rec = self.starts.get(res.group)
        if rec is None:
            return  # gone meanwhile
        guest = res.guest
        if guest is None or res.xml is None or not self.sup.selector.matches_name(guest.name):
            if res.error:
                log.debug("start window: domain id %d not looked up: %s", rec.guest_dir.domain_id, res.error)
            self._drop(res.group)
            return
        spec = derive_spec(res.xml, self.sup.config)
        if self.sup.selector.require_metadata and spec.source != "metadata":
            spec = None
        if spec is None or not (spec.realtime and spec.valid and spec.realtime_vcpus):
            self._drop(res.group)
            return
        if guest.uuid in self.sup.tracked:
            # libvirt answered after the start was over (a busy libvirtd):
            # the STARTED reconcile has tuned it (after_reconcile took the
            # figure, matched by QEMU pid, if we saw the placement).
            log.info("start window: %s known only after its start; tuned at STARTED", guest.name)
            self._drop(res.group)
            return
        rec.uuid, rec.name, rec.spec = guest.uuid, guest.name, spec
        log.debug("start window: %s starting (domain id %d)", guest.name, rec.guest_dir.domain_id)
        if self.early:
            # Usually long before the vcpuN groups (QEMU is hardly running):
            # the full budget plan now, with the guest's group as a leaf.
            self._budget(rec, rec.group, lambda: self.sup.tuner.ledger.reserve(rec.uuid, rec.group))
        self._catch_up(rec)

    def _catch_up(self, rec: _Start) -> None:
        """What libvirt did while we asked who the guest is."""
        cpu = self.watchers["cpu"]
        for vcpu in sorted(vcpu_dirs(cpu.mount, rec.group)):
            self._vcpu_group(rec, vcpu)
            self._placed(rec, vcpu)

    def _gone(self, group: str) -> None:
        """The guest's groups were removed: a start that failed leaves no claim."""
        rec = self.starts.pop(group, None)
        if rec is None or not rec.uuid or rec.uuid in self.sup.tracked:
            return
        self.sup.tuner.forget(rec.uuid)
        self.sup.tuner.ledger.release_unclaimed()
        self.sup.record.done(rec.uuid)  # noted before its first FIFO write, maybe
        self.sup.store.drop(rec.uuid)

    def _realtime_here(self, rec: _Start, vcpu: int) -> bool:
        assert rec.spec is not None
        v = rec.spec.vcpu(vcpu)
        partition = self.sup.config.partition
        return v is not None and v.realtime and bool(v.cpus) and v.cpus <= partition.realtime

    def _budget(self, rec: _Start, what: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
        except (rtgroup.BudgetError, OSError) as err:
            log.warning("start window: RT budget for %s (%s): %s; tuned at STARTED instead", rec.name, what, err)
            rec.early_done = True
            return False
        return True

    def _vcpu_group(self, rec: _Start, vcpu: int) -> None:
        """vcpuN exists: its budget now, from the share reserved for the guest
        (two reads and a write), so that the FIFO request right after the
        placement never meets a zero budget."""
        vgroup = f"{rec.group}/vcpu{vcpu}"
        if not self.early or rec.early_done or vgroup in rec.groups or not self._realtime_here(rec, vcpu):
            return
        assert rec.spec is not None
        rec.groups.add(vgroup)
        ways = 1 + sum(1 for v in rec.spec.realtime_vcpus
                       if self._realtime_here(rec, v.vcpu) and f"{rec.group}/vcpu{v.vcpu}" not in rec.groups)
        self._budget(rec, vgroup, lambda: self.sup.tuner.ledger.place(rec.uuid, set(rec.groups), rec.group,
                                                                      vgroup, ways))

    def _placed(self, rec: _Start, vcpu: int) -> None:
        """libvirt wrote the thread into vcpuN/tasks of one hierarchy (cpu
        first, then cpuset): take the baseline, and try to tune."""
        tids = read_tasks(self.watchers["cpu"].mount, f"{rec.group}/vcpu{vcpu}")
        if not tids or (rec.spec is not None and not self._realtime_here(rec, vcpu)):
            return  # only the cpuset group has it so far, or not a realtime vCPU
        tid = tids[0]
        if vcpu not in rec.vcpus or rec.vcpus[vcpu].tid != tid:
            rec.vcpus[vcpu] = startwindow.placed(vcpu, tid, self.kernel.tasks.run_time_ns(tid))
        if rec.spec is None:
            # libvirt has not told us who this is yet: the baseline is kept
            # (and the QEMU pid, to match the STARTED reconcile if libvirt
            # answers only after it).
            if rec.pid is None:
                rec.pid = self._tgid(tid)
            return
        if rec.pid is None and not self._process(rec, tid):
            return
        self._try_tune(rec)

    def _tgid(self, tid: int) -> int | None:
        try:
            return int(self.kernel.tasks.status(tid)["Tgid"])
        except (OSError, KeyError, ValueError):
            return None

    def _process(self, rec: _Start, tid: int) -> bool:
        """The QEMU process, and the pCPUs another guest's realtime vCPU owns."""
        assert rec.spec is not None
        rec.pid = self._tgid(tid)
        if rec.pid is None:
            return False
        try:
            started = self.kernel.tasks.stat(rec.pid).starttime / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return False
        claims = claims_of(rec.spec, started, relevant=self.sup.config.partition.realtime)
        rec.kept_off = self.sup.claims.ownership_for(claims).kept_off(rec.uuid)
        return True

    # -- the early tuning -----------------------------------------------------

    def _wanted(self, rec: _Start) -> set[int]:
        assert rec.spec is not None
        return {v.vcpu for v in rec.spec.realtime_vcpus
                if self._realtime_here(rec, v.vcpu) and not (v.cpus & rec.kept_off)}

    def _plan_vcpu(self, rec: _Start, vcpu: int) -> ThreadPlan | None:
        """The plan for one placed vCPU thread, if it can go realtime now: in
        its vcpuN group and with libvirt's final affinity (its single pCPU),
        so the only step of libvirt's left for it is ``<vcpusched>``."""
        assert rec.spec is not None and rec.pid is not None
        entry, v = rec.vcpus.get(vcpu), rec.spec.vcpu(vcpu)
        if entry is None or entry.landed or v is None:
            return None
        try:
            t = read_thread(self.kernel, rec.pid, entry.tid, role=Role.VCPU, kind=ThreadKind.VCPU)
        except (OSError, ValueError):
            return None
        t = dataclasses.replace(t, vcpu=vcpu)
        if vcpu_of(t.cgroup_cpu) != vcpu or t.cpus != v.cpus:
            return None
        return ThreadPlan(t, Want(policy=v.policy, priority=v.priority, cpus=v.cpus), "vcpu", pin_via="vcpu")

    def _try_tune(self, rec: _Start) -> None:
        if not self.early or rec.early_done or rec.pid is None:
            return
        wanted = self._wanted(rec)
        plans = [tp for v in sorted(wanted) if (tp := self._plan_vcpu(rec, v)) is not None]
        # Realtime already, not by us (the STARTED reconcile got there first,
        # or libvirt's own <vcpusched>): nothing to do, and no figure for it.
        done = {tp.thread.vcpu for tp in plans if tp.ok}
        ready = [tp for tp in plans if not tp.ok]
        for tp in ready:
            self._vcpu_group(rec, tp.thread.vcpu)  # its vcpuN signal was missed: budget first
        ready = [tp for tp in ready if tp.thread.cgroup_cpu in rec.groups]
        if ready and not rec.early_done:
            # Write-ahead, as the reconcile does: a daemon stopped after the
            # FIFO write below must leave its successor knowing that this
            # QEMU's vCPUs are rtagent's (record.py), budget groups included.
            self.sup.record.note_start(rec.uuid, rec.name, rec.pid, rec.groups)
            for r in execute(plan_actions(ready), None, kernel=self.kernel):
                self._note(rec, r, Path.EARLY)
        waiting = bool(wanted - set(self._landed(rec)) - done)
        now = self._clock()
        if waiting and not rec.early_done and now - rec.seen_at < GIVE_UP_S:
            rec.retry_at, rec.retry_step = now + rec.retry_step, min(rec.retry_step * 2, 0.25)
        else:
            rec.retry_at = None
            rec.early_done = True
            # The fast grants let FIFO in; now every group its planned share.
            self._budget(rec, "settling", lambda: self.sup.tuner.ledger.settle(rec.group))
            if waiting:
                log.info("start window: %s not tuned early (libvirt did not place every realtime vCPU "
                         "within %.0f s); tuned at STARTED", rec.name, GIVE_UP_S)
        self._publish(rec)

    @staticmethod
    def _landed(rec: _Start) -> list[int]:
        return [v for v, e in rec.vcpus.items() if e.landed]

    def _note(self, rec: _Start, r, path: Path) -> None:
        a = r.action
        if not isinstance(a, SetScheduler) or a.policy not in REALTIME:
            return
        vcpu = next((v for v, e in rec.vcpus.items() if e.tid == a.tid), None)
        if r.outcome != ApplyOutcome.CHANGED or r.run_time_ns is None:
            if path == Path.EARLY:
                log.info("start window: %s vCPU %s not made realtime early: %s %s", rec.name, vcpu,
                         r.outcome, r.detail)
                rec.early_done = True  # refused: leave it to the reconcile, which reports it
            return
        if vcpu is None and path == Path.EVENT:
            vcpu = self._vcpu_of_tid(rec, a.tid)
        log.debug("start window: %s tid %d realtime (%s), run time %d ns", rec.name, a.tid, path.value,
                  r.run_time_ns)
        if vcpu is not None:
            rec.vcpus[vcpu] = startwindow.landed(rec.vcpus.get(vcpu), vcpu, a.tid, r.run_time_ns, path,
                                                 not rec.started_seen)

    def _vcpu_of_tid(self, rec: _Start, tid: int) -> int | None:
        try:
            name = self.kernel.tasks.comm(tid)
        except OSError:
            return None
        # QEMU's vCPU threads: "CPU N/KVM", "CPU N/TCG".
        head = name.split("/", 1)[0]
        return int(head[4:]) if head.startswith("CPU ") and head[4:].isdigit() else None

    def _publish(self, rec: _Start) -> None:
        entries = {v: e for v, e in rec.vcpus.items() if rec.spec is not None and self._realtime_here(rec, v)}
        if entries and rec.uuid:
            self.sup.store.update(lambda s: s.guest(rec.uuid, rec.name).start_window.update(entries))

    # -- timers and the rest of the daemon -------------------------------------

    def next_deadline(self) -> float | None:
        due = [r.retry_at for r in self.starts.values() if r.retry_at is not None]
        return min(due) if due else None

    def run_due(self) -> None:
        """On the loop, after every batch and timer: the signals that came in,
        then the looks that are due."""
        while True:
            try:
                self.handle(self._inbox.get_nowait())
            except queue.Empty:
                break
        now = self._clock()
        for rec in list(self.starts.values()):
            if rec.retry_at is not None and now >= rec.retry_at:
                rec.retry_at = None
                try:
                    self._try_tune(rec)
                except Exception:
                    log.exception("start window: %s", rec.name)

    def _by_uuid(self, uuid: str) -> _Start | None:
        return next((r for r in self.starts.values() if r.uuid == uuid), None)

    def after_reconcile(self, uuid: str, report: DomainReport) -> None:
        """FIFO landed through the reconcile (the STARTED path, a retry)."""
        rec = self._by_uuid(uuid)
        if rec is None and report.pid is not None:
            # libvirt has not named the domain to us yet (busy): its QEMU.
            rec = next((r for r in self.starts.values() if not r.uuid and r.pid == report.pid), None)
            if rec is not None:
                rec.uuid, rec.name, rec.spec = uuid, report.name, report.spec
        if rec is None or rec.spec is None:
            return
        # A reconcile gets this far only once libvirt has finished the start
        # (it leaves a guest that is "starting up" alone).
        rec.started_seen = True
        for r in report.changes:
            self._note(rec, r, Path.EVENT)
        self._publish(rec)
        wanted = {v.vcpu for v in rec.spec.realtime_vcpus if self._realtime_here(rec, v.vcpu)}
        if rec.started_seen and wanted <= set(self._landed(rec)):
            self._drop(rec.group)  # this start is measured
