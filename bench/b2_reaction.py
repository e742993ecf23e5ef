"""B2 — reaction and correction time, seen through the kernel.

(a) a guest starts → its realtime vCPU is SCHED_FIFO and pinned (polled with
    ``sched_getscheduler``/``sched_getaffinity`` every ~1 ms), timed from the
    STARTED/RESUMED lifecycle event this process receives; plus what the vCPU
    threads did *before* that (schedstat), to answer "did tuning land before
    the guest's vCPUs ran?".
(b) a foreign tool undoes the tuning (``chrt -o -p 0``; ``virsh vcpupin
    --live``) → corrected, at resync intervals of 1 s and 0.25 s.
(c) a new thread appears (``virsh iothreadadd --live``) → pinned to the
    emulator set, with the proc connector and a 60 s resync (so the resync is
    not what fixes it); the same with the daemon's cpuset watch off, and
    without a daemon, to see what libvirt does on its own.  The benchmark
    listens to the proc connector itself, so the placement is timed from the
    thread's FORK event: *placed* = the first poll (every 0.5 ms) from which
    the thread's affinity is the emulator set and stays so until ``STAY_S``
    after virsh returned (libvirt's placement is part of virsh's job).
(d) a live re-pin through libvirt (``virsh vcpupin/emulatorpin/iothreadpin
    --live``) → corrected, with a 60 s resync and full check: only the
    TUNABLE event can be what corrects it.

No assertions: numbers go to tables.  Guests are ``rtbench-b2-<pid>-…``.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time

from . import b2_startwindow, b2_watchcost
from .common import (
    EventClock,
    Guests,
    fifo_on,
    format_table,
    guest_xml,
    ms,
    on_housekeeping,
    qemu_pid,
    schedstat,
    start_daemon,
    summary,
    thread_names,
    vcpu_tid,
    wait_for,
)

RT_CPUS = {1}
EMU_CPUS = {0}
POLL_S = 0.001
STAY_S = 0.5  # "stays placed": still right this long after virsh returned
B2_BUDGET_US = 10_000  # fixed, small: leave the RT budget to whoever else runs realtime guests here


def _prefix() -> str:
    return f"rtbench-b2-{os.getpid()}-"


# ---------------------------------------------------------------------------
# (a) STARTED → FIFO


def _policy(tid: int) -> int | None:
    try:
        return os.sched_getscheduler(tid)
    except OSError:
        return None


def _start_trial(guests: Guests, clock: EventClock, daemon, name: str, timeout: float = 30.0) -> dict:
    samples: list[tuple[float, int | None, tuple | None, tuple | None]] = []  # t, policy, schedstat vcpu1, vcpu0
    out: dict = {"name": name}
    done = threading.Event()

    def poll() -> None:
        deadline = time.monotonic() + timeout
        pid = tid1 = tid0 = None
        while not done.is_set() and time.monotonic() < deadline:
            if pid is None:
                pid = qemu_pid(name)
                if pid is not None and not os.path.isdir(f"/proc/{pid}"):
                    pid = None
            if pid is not None and tid1 is None:
                tid1, tid0 = vcpu_tid(pid, 1), vcpu_tid(pid, 0)
                if tid1 is not None:
                    out["thread_seen_at"] = time.monotonic()
            if tid1 is not None:
                now = time.monotonic()
                tuned = fifo_on(tid1, RT_CPUS)
                samples.append((now, os.SCHED_FIFO if tuned else _policy(tid1), schedstat(pid, tid1),
                                schedstat(pid, tid0) if tid0 else None))
                if tuned:
                    out["fifo_at"] = now
                    return
            time.sleep(POLL_S)

    t = threading.Thread(target=poll, name="b2-poll", daemon=True)
    t.start()
    t0 = time.monotonic()
    guests.start(name)
    out["create_returned_s"] = time.monotonic() - t0
    t.join(timeout + 1)
    done.set()
    ev = wait_for(lambda: clock.get(name), 5, 0.01)
    out["event_at"] = ev
    fifo_at = out.get("fifo_at")
    if ev is not None and fifo_at is not None:
        out["event_to_fifo_s"] = fifo_at - ev
    if fifo_at is not None:
        out["create_to_fifo_s"] = fifo_at - t0
    # Did the daemon's first attempt fail (e.g. EPERM: another realtime user
    # holds the host's whole RT budget), leaving it to the next resync?
    out["tuning_refused"] = f"{name}: failed" in daemon.log_text()
    entry = wait_for(lambda: (g := daemon.guest(name)) and g.get("event_to_tuned_s") is not None and g, 5)
    out["daemon_event_to_tuned_s"] = entry["event_to_tuned_s"] if entry else None
    # What the vCPU threads did before the kernel showed FIFO.
    if samples and fifo_at is not None:
        first, last = samples[0], samples[-1]
        at_event = None
        if ev is not None:
            before_ev = [s for s in samples if s[0] <= ev]
            at_event = before_ev[-1] if before_ev else None
        out["policy_at_event"] = None if at_event is None else (
            "fifo" if at_event[1] == os.SCHED_FIFO else "other" if at_event[1] == os.SCHED_OTHER else at_event[1])
        if first[2] and last[2]:
            out["vcpu1_run_before_fifo_us"] = (last[2][0] - first[2][0]) / 1000
            out["vcpu1_slices_before_fifo"] = last[2][2] - first[2][2]
            out["vcpu1_run_total_at_fifo_us"] = last[2][0] / 1000
        if first[3] and last[3]:
            out["vcpu0_run_before_fifo_us"] = (last[3][0] - first[3][0]) / 1000
        if at_event is not None and at_event[2] and last[2]:
            out["vcpu1_run_event_to_fifo_us"] = (last[2][0] - at_event[2][0]) / 1000
            out["vcpu1_slices_event_to_fifo"] = last[2][2] - at_event[2][2]
        if at_event is not None and at_event[3] and last[3]:
            out["vcpu0_run_event_to_fifo_us"] = (last[3][0] - at_event[3][0]) / 1000
        out["samples"] = len(samples)
    return out


def run_start(n: int) -> dict:
    prefix = _prefix() + "start-"
    guests = Guests()
    clock = EventClock(prefix)
    daemon = start_daemon(prefix, resync=30.0, rt_budget_us=B2_BUDGET_US)
    trials = []
    try:
        for i in range(n):
            name = f"{prefix}{i}"
            try:
                trials.append(_start_trial(guests, clock, daemon, name))
            finally:
                guests.destroy(name)
            wait_for(lambda: daemon.guest(name) is None, 5)  # noqa: B023
            time.sleep(0.3)
        reconnects = daemon.status()["daemon"]["libvirt"]["reconnects"]
    finally:
        daemon.stop()
        guests.close()
        clock.close()
    return {"trials": trials,
            "event_to_fifo": summary([t["event_to_fifo_s"] for t in trials if "event_to_fifo_s" in t]),
            "event_to_fifo_first_try": summary([t["event_to_fifo_s"] for t in trials
                                                if "event_to_fifo_s" in t and not t["tuning_refused"]]),
            "refused": sum(1 for t in trials if t.get("tuning_refused")),
            "libvirt_reconnects": reconnects,
            "daemon_event_to_tuned": summary([t["daemon_event_to_tuned_s"] for t in trials
                                              if t.get("daemon_event_to_tuned_s") is not None]),
            "create_to_fifo": summary([t["create_to_fifo_s"] for t in trials if "create_to_fifo_s" in t]),
            "missed": sum(1 for t in trials if "fifo_at" not in t),
            "policy_at_event": [t.get("policy_at_event") for t in trials],
            "vcpu1_run_event_to_fifo_us": summary([t["vcpu1_run_event_to_fifo_us"] for t in trials
                                                   if "vcpu1_run_event_to_fifo_us" in t]),
            "vcpu1_slices_event_to_fifo": summary([t["vcpu1_slices_event_to_fifo"] for t in trials
                                                   if "vcpu1_slices_event_to_fifo" in t]),
            "vcpu0_run_event_to_fifo_us": summary([t["vcpu0_run_event_to_fifo_us"] for t in trials
                                                   if "vcpu0_run_event_to_fifo_us" in t]),
            "vcpu1_run_before_fifo_us": summary([t["vcpu1_run_before_fifo_us"] for t in trials
                                                 if "vcpu1_run_before_fifo_us" in t])}


# ---------------------------------------------------------------------------
# (b) foreign drift → corrected


def _drift_trial(cmd: list[str], tid: int, timeout: float, good=None) -> dict:
    """Run the foreign tool; time from the first poll that sees the drift to
    the first that sees the thread as planned again (``good()``; default
    FIFO on CPU 1)."""
    good = good or (lambda: fifo_on(tid, RT_CPUS))
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    drift_at = fixed_at = None
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        ok = good()
        if not ok and drift_at is None:
            drift_at = now
        elif ok and (drift_at is not None or p.poll() is not None):
            fixed_at = now
            break
        time.sleep(POLL_S)
    rc = p.wait()
    err = p.stderr.read().decode().strip() if p.stderr else ""
    out = {"rc": rc, "tool_error": err or None, "drift_seen": drift_at is not None}
    if drift_at is not None:
        out["drift_after_s"] = drift_at - t0  # from starting the tool
    if fixed_at is not None:
        # A drift no poll saw (undone, or never let through by the cgroup,
        # between two polls) counts as one poll interval: it lasted less.
        # (Timing it from starting the tool would count the tool's run time.)
        out["correct_s"] = fixed_at - drift_at if drift_at is not None else POLL_S
    return out


WATCHED_S = 60.0  # the steady resync while the drift watch runs, in B2b's watch row: not what corrects


def run_drift(n: int, intervals: tuple[float, ...] = (1.0, 0.25), watch: bool = True) -> dict:
    """Each resync interval with the drift watch off (polling), and at 1 s
    with the watch on (the timed resync then 60 s away: the syscall's own
    trace event is what corrects)."""
    results = {}
    variants = [(str(iv), iv, False) for iv in intervals] + ([("watch", 1.0, True)] if watch else [])
    for key, interval, watched in variants:
        prefix = _prefix() + f"drift{int(interval * 1000)}{'w' if watched else ''}-"
        name = prefix + "0"
        guests = Guests()
        daemon = None
        extra = (f'drift_watch = "on"\nwatched_resync_interval_s = {WATCHED_S}\n' if watched
                 else 'drift_watch = "off"\n')
        try:
            daemon = start_daemon(prefix, resync=interval, rt_budget_us=B2_BUDGET_US, daemon_extra=extra)
            guests.start(name)
            pid = wait_for(lambda: qemu_pid(name), 30)  # noqa: B023
            tid = wait_for(lambda: vcpu_tid(pid, 1), 30)  # noqa: B023
            if not wait_for(lambda: fifo_on(tid, RT_CPUS), 30):  # noqa: B023
                raise RuntimeError(f"{name}: vCPU 1 never became FIFO on CPU 1:\n{daemon.log_text()[-2000:]}")
            timeout = interval * 6 + 3
            kinds = {
                "chrt -o -p 0": ["chrt", "-o", "-p", "0", str(tid)],
                "virsh vcpupin --live": ["virsh", "-q", "-c", "qemu:///system", "vcpupin", name, "1", "0-1",
                                         "--live"],
            }
            goods = {kind: None for kind in kinds}
            pit = _kvm_pit(pid)
            if pit is not None and _widens(pit):
                # kvm-pit is the thread a taskset can move (the vCPU and emulator
                # threads sit in libvirt's cpuset cgroups, which clamp the mask).
                kinds["taskset kvm-pit"] = ["taskset", "-pc", "0-1", str(pit)]
                goods["taskset kvm-pit"] = lambda: _affinity(pit) == EMU_CPUS  # noqa: B023
            per_kind = {}
            for kind, cmd in kinds.items():
                good = goods[kind] or (lambda: fifo_on(tid, RT_CPUS))  # noqa: B023
                trials = []
                for _ in range(n):
                    time.sleep(random.uniform(0, interval))  # random phase against the resync timer
                    wait_for(good, timeout, 0.005)
                    trials.append(_drift_trial(cmd, tid, timeout, good))
                per_kind[kind] = {"trials": trials,
                                  "correct": summary([t["correct_s"] for t in trials if "correct_s" in t]),
                                  "missed": sum(1 for t in trials if "correct_s" not in t),
                                  "drift_unseen": sum(1 for t in trials if not t["drift_seen"])}
            counts = (daemon.guest(name) or {}).get("drift_corrections", {})
            st = daemon.status()["daemon"]
            results[key] = {"resync_s": interval, "kinds": per_kind, "daemon_counted": counts, "watch": watched,
                            "drift_watch": st.get("drift_watch"), "resyncs": st.get("resyncs"),
                            "libvirt_reconnects": st["libvirt"]["reconnects"]}
        finally:
            guests.close()
            if daemon is not None:
                daemon.stop()
    return results


def _affinity(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except OSError:
        return None


def _kvm_pit(qemu: int) -> int | None:
    want = f"kvm-pit/{qemu}"
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == want:
                        return int(d)
            except OSError:
                continue
    return None


def _widens(tid: int) -> bool:
    """Whether ``taskset -pc 0-1`` can widen this thread (its cpuset cgroup
    may clamp it); leaves the thread as it was."""
    before = _affinity(tid)
    try:
        os.sched_setaffinity(tid, {0, 1})
        widened = _affinity(tid) == {0, 1}
        os.sched_setaffinity(tid, before)
    except OSError:
        return False
    return widened


# ---------------------------------------------------------------------------
# (d) live re-pin through libvirt → corrected on the TUNABLE event


def run_tunable(n: int) -> dict:
    """``virsh vcpupin/emulatorpin/iothreadpin --live`` against a tuned guest,
    resync and full check 60 s: the TUNABLE event is the only trigger."""
    from tests.guests import pinned_cputune

    prefix = _prefix() + "tun-"
    name = prefix + "0"
    guests = Guests()
    daemon = None
    try:
        daemon = start_daemon(prefix, resync=60.0, rt_budget_us=B2_BUDGET_US,
                              daemon_extra="full_check_interval_s = 60.0\n")
        guests.start(name, xml=guest_xml(name, iothreads=1, cputune=pinned_cputune(
            {0: "0", 1: "1"}, extra="<iothreadpin iothread='1' cpuset='0'/>")))
        pid = wait_for(lambda: qemu_pid(name), 30)
        tid = wait_for(lambda: vcpu_tid(pid, 1), 30)
        if not wait_for(lambda: fifo_on(tid, RT_CPUS), 30):
            raise RuntimeError(f"{name}: vCPU 1 never became FIFO on CPU 1:\n{daemon.log_text()[-2000:]}")
        io = wait_for(lambda: next((t for t, nm in thread_names(pid).items() if nm == "IO iothread1"), None), 10)
        virsh = ["virsh", "-q", "-c", "qemu:///system"]
        kinds = {
            "virsh vcpupin --live": (virsh + ["vcpupin", name, "1", "0-1", "--live"], lambda: fifo_on(tid, RT_CPUS)),
            "virsh emulatorpin --live": (virsh + ["emulatorpin", name, "0-1", "--live"],
                                         lambda: _affinity(pid) == EMU_CPUS),
            "virsh iothreadpin --live": (virsh + ["iothreadpin", name, "1", "0-1", "--live"],
                                         lambda: io is not None and _affinity(io) == EMU_CPUS),
        }
        out = {}
        for kind, (cmd, good) in kinds.items():
            trials = []
            for _ in range(n):
                wait_for(good, 10, 0.005)
                time.sleep(random.uniform(0.05, 0.2))
                trials.append(_drift_trial(cmd, tid, 10.0, good))
            out[kind] = {"trials": trials, "correct": summary([t["correct_s"] for t in trials if "correct_s" in t]),
                         "seen": summary([t["correct_s"] for t in trials if "correct_s" in t and t["drift_seen"]]),
                         "unseen": sum(1 for t in trials if not t["drift_seen"]),
                         "missed": sum(1 for t in trials if "correct_s" not in t)}
        st = daemon.status()["daemon"]
        return {"kinds": out, "resyncs": st["resyncs"], "full_checks": st.get("full_checks"),
                "libvirt_events": st["events"].get("libvirt", 0)}
    finally:
        guests.close()
        if daemon is not None:
            daemon.stop()


# ---------------------------------------------------------------------------
# (c) new thread → tuned


class _ForkClock:
    """The benchmark's own proc connector subscription: when the kernel
    announced each new thread of ``pid`` (monotonic, at receipt)."""

    def __init__(self, pid: int):
        from rtagent.kernel.procconn import ProcConnector

        self.forks: dict[int, float] = {}
        self._pc = ProcConnector(self._on, lambda: None)
        self._pc.set_tracked({pid})
        self._pc.start()

    def _on(self, _pid: int, tid: int, what: str) -> None:
        if what == "fork":
            self.forks.setdefault(tid, time.monotonic())

    def close(self) -> None:
        self._pc.stop()


def _iothread_trial(name: str, pid: int, iothread: int, daemon_log=None, timeout: float = 5.0,
                    forks: _ForkClock | None = None) -> dict:
    before = set(thread_names(pid))
    want = f"IO iothread{iothread}"
    t0 = time.monotonic()
    p = subprocess.Popen(["virsh", "-q", "-c", "qemu:///system", "iothreadadd", name, str(iothread), "--live"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tid = born = wide = fixed = None
    virsh_done = None
    stable_since = None
    while time.monotonic() - t0 < timeout:
        now = time.monotonic()
        if virsh_done is None and p.poll() is not None:
            virsh_done = now
        if tid is None:
            for t, n in thread_names(pid).items():
                if t not in before and n == want:
                    tid, born = t, now
                    break
        if tid is not None:
            try:
                aff = os.sched_getaffinity(tid)
            except OSError:
                break
            if aff != EMU_CPUS:
                if wide is None:
                    wide = now
                fixed = stable_since = None
            else:
                if wide is not None and fixed is None:
                    fixed = now
                stable_since = stable_since or now
            # Done: virsh finished (libvirt's placement is part of its job) and
            # the thread has stayed in the emulator set for STAY_S after that.
            if virsh_done is not None and stable_since is not None and now - max(stable_since, virsh_done) >= STAY_S:
                break
            # Without a daemon nothing may ever fix it: 2 s after virsh is enough to say so.
            if daemon_log is None and virsh_done is not None and now - virsh_done > 2.0:
                break
        time.sleep(POLL_S / 2)
    p.wait()
    err = p.stderr.read().decode().strip() if p.stderr else ""
    out = {"iothread": iothread, "tid": tid, "virsh_rc": p.returncode, "virsh_error": err or None,
           "virsh_s": (virsh_done - t0) if virsh_done else None,
           "born_s": (born - t0) if born else None, "widened": wide is not None,
           "final_ok": stable_since is not None}
    if wide is not None and fixed is not None:
        out["exposed_s"] = fixed - wide  # time outside the emulator set
        out["fixed_after_add_s"] = fixed - t0
    elif tid is not None and wide is None:
        out["exposed_s"] = 0.0
        out["fixed_after_add_s"] = born - t0
    fork_at = forks.forks.get(tid) if forks is not None and tid is not None else None
    if fork_at is not None and stable_since is not None:
        # Placed = the first poll of the final run of polls that all saw the
        # plan (until STAY_S after virsh returned).  A thread right from the
        # first poll counts from that poll, not from its birth: an upper
        # bound that includes the benchmark finding the thread.
        out["event_to_placed_s"] = max(0.0, stable_since - fork_at)
        out["event_to_found_s"] = max(0.0, born - fork_at)
    if daemon_log is not None and tid is not None:
        text = daemon_log()
        out["fixed_by_daemon"] = f"(tid {tid}) affinity" in text
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", "iothreaddel", name, str(iothread), "--live"],
                   capture_output=True, check=False)
    if tid is not None:
        wait_for(lambda: tid not in thread_names(pid), 5)
    return out


MODE_WATCH = "rtagent (proc connector + cpuset watch, resync 60 s)"
MODE_NO_WATCH = "rtagent, cpuset watch off"


def run_iothreads(n: int, n_baseline: int) -> dict:
    from tests.guests import pinned_cputune

    prefix = _prefix() + "io-"
    results = {}
    for mode, count in ((MODE_WATCH, n), (MODE_NO_WATCH, n_baseline), ("no daemon (libvirt alone)", n_baseline)):
        if count <= 0:
            continue
        name = f"{prefix}{len(results)}"
        guests = Guests()
        daemon = None
        try:
            if mode.startswith("rtagent"):
                daemon = start_daemon(prefix, resync=60.0, rt_budget_us=B2_BUDGET_US,
                                      daemon_extra="" if mode == MODE_WATCH else "cpuset_watch = false\n")
            guests.start(name, xml=guest_xml(name, iothreads=1, cputune=pinned_cputune(
                {0: "0", 1: "1"}, extra="<iothreadpin iothread='1' cpuset='0'/>")))
            pid = wait_for(lambda: qemu_pid(name), 30)  # noqa: B023
            tid = wait_for(lambda: vcpu_tid(pid, 1), 30)  # noqa: B023
            if daemon is not None:
                wait_for(lambda: fifo_on(tid, RT_CPUS), 30)  # noqa: B023
            time.sleep(1.0)
            forks = _ForkClock(pid)
            try:
                trials = [_iothread_trial(name, pid, 10 + i, daemon.log_text if daemon else None, forks=forks)
                          for i in range(count)]
            finally:
                forks.close()
            results[mode] = {
                "trials": trials,
                "exposed": summary([t["exposed_s"] for t in trials if "exposed_s" in t]),
                "fixed_after_add": summary([t["fixed_after_add_s"] for t in trials if "fixed_after_add_s" in t]),
                "event_to_placed": summary([t["event_to_placed_s"] for t in trials if "event_to_placed_s" in t]),
                "event_to_found": summary([t["event_to_found_s"] for t in trials if "event_to_found_s" in t]),
                "virsh": summary([t["virsh_s"] for t in trials if t.get("virsh_s") is not None]),
                "fixed_by_daemon": sum(1 for t in trials if t.get("fixed_by_daemon")),
                "widened": sum(1 for t in trials if t["widened"]),
                "not_fixed": sum(1 for t in trials if not t["final_ok"]),
                "proc_events": (daemon.status()["daemon"]["events"].get("proc", 0) if daemon else None),
            }
        finally:
            guests.close()
            if daemon is not None:
                daemon.stop()
    return results


# ---------------------------------------------------------------------------


def run(quick: bool = True) -> dict:
    with on_housekeeping():
        t0 = time.monotonic()
        out = {
            "start": run_start(5 if quick else 20),
            "drift": run_drift(5 if quick else 20),
            "iothread": run_iothreads(5 if quick else 20, 3 if quick else 10),
            "tunable": run_tunable(5 if quick else 20),
            "watch_cost": b2_watchcost.run(),
            "start_window": b2_startwindow.run(10 if quick else 40),
        }
        out["elapsed_s"] = time.monotonic() - t0
    return out


GOAL_DRIFT_EXTRA_S = 0.020  # drift by taskset/chrt corrected within resync + 20 ms (p99)
GOAL_TUNABLE_S = 0.020  # live vcpupin/emulatorpin/iothreadpin corrected within 20 ms (p99)
GOAL_NEW_THREAD_S = 0.010  # a new thread placed within 10 ms of its proc connector event (p99)


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def goals_table(res: dict) -> str:
    """The reaction goals, measured through the kernel (the benchmark polls the
    threads; rtagent's own report is not used)."""
    rows = []
    for r in (res.get("drift") or {}).values():
        for kind, k in r["kinds"].items():
            if kind.startswith("virsh"):
                continue  # a libvirt re-pin: the TUNABLE rows below
            c, goal = k["correct"], r["resync_s"] + GOAL_DRIFT_EXTRA_S
            how = f"drift watch on, resync {r['resync_s']:g} s / {WATCHED_S:g} s watched" if r.get("watch") \
                else f"resync {r['resync_s']:g} s"
            rows.append([f"{kind} → corrected, {how} (p99, n={c['n']})",
                         ms(c["p99"]) + " ms" if c["n"] else "–", f"≤ {goal * 1000:.0f} ms",
                         _mark(c["p99"] <= goal if c["n"] and not k["missed"] else (False if k["missed"] else None))])
    for kind, k in ((res.get("tunable") or {}).get("kinds") or {}).items():
        c = k["correct"]
        unseen = f", {k['unseen']} never seen wide" if k.get("unseen") else ""
        rows.append([f"{kind} → corrected, event-driven, resync 60 s (p99, n={c['n']}{unseen})",
                     ms(c["p99"]) + " ms" if c["n"] else "–", f"≤ {GOAL_TUNABLE_S * 1000:.0f} ms",
                     _mark(c["p99"] <= GOAL_TUNABLE_S if c["n"] and not k["missed"] else
                           (False if k["missed"] else None))])
    for mode, r in (res.get("iothread") or {}).items():
        if not mode.startswith("rtagent"):
            continue
        e = r.get("event_to_placed") or {"n": 0}
        label = "new iothread placed and stays placed, from its FORK event" + (
            "" if mode == MODE_WATCH else " — cpuset watch off (reference)")
        rows.append([f"{label} (p99, n={e['n']}; widened {r['widened']}/{len(r['trials'])})",
                     ms(e["p99"]) + " ms" if e["n"] else "–", f"≤ {GOAL_NEW_THREAD_S * 1000:.0f} ms",
                     _mark(e["p99"] <= GOAL_NEW_THREAD_S if e["n"] and not r["not_fixed"] else
                           (False if r["not_fixed"] else None)) if mode == MODE_WATCH else "—"])
    if res.get("start_window"):
        rows.append(b2_startwindow.goal_row(res["start_window"]))
    return format_table(["B2 goal (measured through the kernel)", "measured", "goal", ""], rows)


def format(res: dict) -> str:
    parts = [goals_table(res)]
    s = res["start"]
    rows = []
    for label, key in (("STARTED event → FIFO+pinned (kernel, polled 1 ms)", "event_to_fifo"),
                       ("  same, trials where the first attempt was not refused", "event_to_fifo_first_try"),
                       ("daemon's own event_to_tuned_s", "daemon_event_to_tuned"),
                       ("createXML call → FIFO+pinned", "create_to_fifo")):
        x = s.get(key)
        if x is None or key == "event_to_fifo_first_try" and x["n"] == s["event_to_fifo"]["n"]:
            continue  # no refused trial among those measured: the same row again
        rows.append([label, x["n"], ms(x["p50"]), ms(x["p99"]), ms(x["max"])])
    parts.append(format_table(["B2a guest start (resync 30 s)", "n", "p50 ms", "p99 ms", "max ms"], rows))
    pol = [p for p in s["policy_at_event"] if p]
    v1, sl, v0 = s["vcpu1_run_event_to_fifo_us"], s["vcpu1_slices_event_to_fifo"], s["vcpu0_run_event_to_fifo_us"]
    parts.append(
        f"Before tuning landed: vCPU 1 policy at the STARTED event: {', '.join(sorted(set(pol))) or '?'} "
        f"({len(pol)} trials); between the event and FIFO the realtime vCPU 1 thread ran "
        f"p50 {v1['p50']:.0f} µs (max {v1['max']:.0f} µs) in p50 {sl['p50']:.0f} timeslices, and vCPU 0 "
        f"(the BSP, running firmware) p50 {v0['p50']:.0f} µs — the guest was already executing as SCHED_OTHER."
        + (f" Missed (no FIFO within 30 s): {s['missed']}." if s["missed"] else "")
        + (f" In {s['refused']} trial(s) the kernel refused FIFO at first (EPERM: the host's RT budget was "
           f"held by another realtime user) and the guest was tuned by the next resync." if s.get("refused") else "")
        + (f" libvirtd restarts seen by the daemon: {s['libvirt_reconnects']}." if s.get("libvirt_reconnects")
           else ""))
    rows = []
    for r in res["drift"].values():
        for kind, k in r["kinds"].items():
            c = k["correct"]
            rows.append([kind + (" (drift watch)" if r.get("watch") else ""), f"{r['resync_s']:g}", c["n"],
                         ms(c["p50"]), ms(c["p99"]), ms(c["max"]),
                         f"{c['p50'] / r['resync_s']:.2f}" if c["n"] else "–", k["missed"]])
    parts.append(format_table(["B2b foreign drift → corrected", "resync s", "n", "p50 ms", "p99 ms", "max ms",
                               "p50/resync", "missed"], rows))
    w = res["drift"].get("watch")
    if w:
        dw = w.get("drift_watch") or {}
        parts.append(f"Drift watch row: resync_interval_s {w['resync_s']:g} s, watched_resync_interval_s "
                     f"{WATCHED_S:g} s; the daemon ran {w.get('resyncs')} resyncs over the whole row (start-up "
                     f"included) and decoded {dw.get('events')} trace events ({dw.get('lost')} lost): the trace "
                     "event of the foreign tool's syscall is what corrected.")
    rc = {iv: r.get("libvirt_reconnects") for iv, r in res["drift"].items() if r.get("libvirt_reconnects")}
    if rc:
        parts.append(f"libvirtd restarts (by concurrent tests) seen during B2b, by resync interval: {rc}.")
    rows = []
    for mode, r in res["iothread"].items():
        e, f = r["exposed"], r["fixed_after_add"]
        rows.append([mode, e["n"], ms(e["p50"]), ms(e["p99"]), ms(f["p50"]), ms(f["p99"]), ms(r["virsh"]["p50"]),
                     f"{r['fixed_by_daemon']}/{len(r['trials'])}", r["not_fixed"]])
    parts.append(format_table(["B2c iothreadadd → IO thread in emulator set", "n", "exposed p50 ms",
                               "exposed p99 ms", "add→ok p50 ms", "add→ok p99 ms", "virsh p50 ms",
                               "fixed by rtagent", "never ok"], rows))
    rows = []
    for mode, r in res["iothread"].items():
        e = r.get("event_to_placed") or {"n": 0}
        if e["n"]:
            f = r.get("event_to_found") or {"n": 0}
            rows.append([mode, e["n"], ms(e["p50"]), ms(e["p99"]), ms(e["max"]), ms(f["p50"]) if f["n"] else "–",
                         f"{r['widened']}/{len(r['trials'])}"])
    if rows:
        parts.append(format_table(["B2c FORK event (benchmark's proc connector) → placed and stays placed", "n",
                                   "p50 ms", "p99 ms", "max ms", "found p50 ms", "widened (polled)"], rows))
        parts.append(f"placed = the first 0.5 ms poll from which the thread's affinity is the emulator set and stays "
                     f"so until {STAY_S:g} s after virsh returned; a thread right from its first poll counts from "
                     "that poll (found = FORK → the benchmark first sees the named thread).")
    t = res.get("tunable") or {}
    rows = []
    for kind, k in (t.get("kinds") or {}).items():
        c = k["correct"]
        seen = k.get("seen") or {"n": 0}
        rows.append([kind, c["n"], ms(c["p50"]), ms(c["p99"]), ms(c["max"]), k.get("unseen", "–"),
                     ms(seen["p99"]) if seen["n"] else "–", k["missed"]])
    if rows:
        parts.append(format_table(["B2d live re-pin through libvirt → corrected (resync 60 s)", "n", "p50 ms",
                                   "p99 ms", "max ms", "never seen wide", "p99 of the seen ms", "missed"], rows))
        parts.append(f"Resync and full check every 60 s: the daemon ran {t.get('resyncs')} resyncs "
                     f"({t.get('full_checks')} full) and got {t.get('libvirt_events')} libvirt events; "
                     "corrected = from the first poll (every 1 ms) that saw the re-pin to the first that saw the plan "
                     "again; a re-pin no poll saw (the cpuset watch put the group's CPUs back before libvirt's "
                     "affinity call landed, or undid it within a poll) counts as 1 ms.")
    if res.get("start_window"):
        parts.append(b2_startwindow.format(res["start_window"]))
    parts.append("exposed = time the new thread's affinity was outside the emulator set (CPU 0), from the first "
                 "poll that saw it widened to the first that saw it back; add→ok = from starting virsh.")
    if res.get("watch_cost"):
        parts.append(b2_watchcost.format(res["watch_cost"]))
    return "\n\n".join(parts)
