"""B1 — guest-observed latency under host noise (issue 9).

One guest is booted per run.  Inside it a SCHED_FIFO thread bound to guest
CPU 1 sleeps to absolute timer deadlines and records wake-up minus deadline
(``bench/guest/rtprobe.c``, a kernel thread, because PVM cannot run guest
user space; ``--mode cyclictest`` uses real cyclictest in an initramfs on
hardware KVM).  It measures in numbered phases separated by gaps, printing a
``RTPROBE phase=N …`` line on the serial console (a file).  The harness
watches that file and, in each gap, switches the host to the scenario of the
next phase, interleaved, ≥ 3 repeats each:

  A  untuned, noise: ``stress-ng --cpu 1 --taskset 1`` (SCHED_OTHER) on the
     realtime CPU; rtagent stopped and the vCPU thread put back to
     SCHED_OTHER (rtagent leaves guests tuned when it stops, by design)
  C  rtagent running (the daemon, not hand-set), same noise
  D  rtagent running, quiet
  Q  untuned, quiet

Guest: 2 vCPUs, vCPU 0 + emulator on CPU 0, vCPU 1 on CPU 1; realtime intent
vCPU 1 FIFO 1 (Nova mask ``^0``), by default from a config rule matching the
guest's name rather than from ``<rt:realtime>`` metadata in its XML
(``--intent metadata``): on this shared host the system tests' own rtagent
daemons manage every guest that carries the metadata, and re-tuned this one
in the middle of "untuned" phases.  The daemon runs with the host partition
(kthreads, IRQs, workqueues) off: it would re-partition the whole shared host
under the other tests running on it.  It is the real ``rtagent run`` limited
to this guest's name prefix by its guest selector (``[daemon] guest_names``),
so it does not touch the guests of concurrent tests.

A phase counts only if the vCPU thread's policy, sampled every 0.25 s while
the phase ran, was what the scenario says the whole time (another rtagent
daemon on this host could otherwise tune the guest in an "untuned" phase).

    python -m bench.b1_latency [--quick] [--mode probe|cyclictest] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import common
from bench.guest import build

SCENARIOS = {
    "A": {"noise": True, "daemon": False, "label": "untuned + noise"},
    "C": {"noise": True, "daemon": True, "label": "rtagent + noise"},
    "D": {"noise": False, "daemon": True, "label": "rtagent, quiet"},
    "Q": {"noise": False, "daemon": False, "label": "untuned, quiet"},
    # --interference: the same daemon with the interference accounting on
    # (its tracefs instance on CPU 1), to compare with C and D
    "I": {"noise": True, "daemon": True, "interference": True, "label": "rtagent + accounting + noise"},
    "J": {"noise": False, "daemon": True, "interference": True, "label": "rtagent + accounting, quiet"},
    "W": {"noise": False, "daemon": False, "label": "warm-up (discarded)"},
}
ORDER = "ACDQ"
ORDER_INTERFERENCE = "ACDQIJ"
RT_CPU = 1
GUEST_CPU = 1
PROBE_PRIO = 50
# Kernel options that keep a non-enlightened guest kernel on instructions
# PVM's emulator can run (found by trial, see docs/benchmarks-latency.md),
# plus the local APIC timer frequency (KVM's APIC bus: 1 GHz).
KERNEL_ARGS = ("console=ttyS0 noxsave nofsgsbase nopcid hpet=disable "
               "clearcpuid=smap,smep,pku,ospke,xsave,popcnt,cx16,rdrand,rdseed,invpcid,rdpid,umip,la57 "
               "rtprobe_lapic_hz=1000000000")
RESULT_RE = re.compile(r"RTPROBE phase=(\d+) n=(\d+)(.*)")
KV_RE = re.compile(r"(\w+)=(-?\d+)")


@dataclass
class Params:
    repeats: int
    phase_s: int
    gap_s: int
    interval_us: int
    mode: str = "probe"
    order: str = ORDER

    @property
    def schedule(self) -> list[str]:
        """Phase 1 is a warm-up; then rounds of A, C, D, Q (and I, J with
        --interference) rotated by one each round so every scenario follows
        every other."""
        out = ["W"]
        for r in range(self.repeats):
            k = r % len(self.order)
            out += list(self.order[k:] + self.order[:k])
        return out


QUICK = Params(repeats=3, phase_s=15, gap_s=10, interval_us=20000)
FULL = Params(repeats=5, phase_s=40, gap_s=12, interval_us=20000)


@dataclass
class Phase:
    phase: int
    scenario: str
    stats: dict = field(default_factory=dict)
    switch_s: float | None = None  # host time to reach the scenario after the gap line
    policy_samples: int = 0
    policy_wrong: int = 0
    rq_wait_ms: float | None = None  # vCPU 1 thread's run-queue wait during the phase (host schedstat)
    rt_budget_us: int | None = None  # cpu.rt_runtime_us of vCPU 1's cgroup (per 1 s) when the phase began
    note: str = ""

    @property
    def valid(self) -> bool:
        return bool(self.stats) and self.stats.get("n", 0) > 0 and self.policy_samples > 0 \
            and self.policy_wrong == 0 and self.scenario != "W" and not self.note


# ---------------------------------------------------------------------------
# host side: noise, daemon, vCPU policy


class Noise:
    """``stress-ng --cpu 1 --taskset 1``, SCHED_OTHER (inherited from us),
    in its own session so its workers are stopped with it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def on(self) -> None:
        if self.proc and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            ["stress-ng", "--cpu", "1", "--taskset", str(RT_CPU), "--sched", "other", "--timeout", "0",
             "--quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0)))

    def off(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)  # the session we created for it
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        # workers left behind in its process group (stress-ng forks them)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Daemon:
    def __init__(self, prefix: str, workdir: Path):
        self.prefix = prefix
        self.workdir = workdir
        self.dp: common.DaemonProc | None = None
        self.starts = 0
        self.interference = False

    def on(self, interference: bool = False) -> None:
        if self.dp and self.dp.proc.poll() is None:
            if self.interference == interference:
                return
            self.off()   # the other configuration: restart (the guest stays tuned meanwhile)
        self.starts += 1
        d = self.workdir / f"daemon-{self.starts}"
        d.mkdir(parents=True, exist_ok=True)
        self.interference = interference
        self.dp = common.start_daemon(self.prefix, resync=1.0, workdir=d, interference=interference)

    def off(self) -> None:
        dp, self.dp = self.dp, None
        if dp is not None:
            dp.stop()

    @property
    def running(self) -> bool:
        return self.dp is not None and self.dp.proc.poll() is None


def policy(tid: int) -> str | None:
    try:
        pol = os.sched_getscheduler(tid)
    except OSError:
        return None
    return "fifo" if pol == os.SCHED_FIFO else "rr" if pol == os.SCHED_RR else "other"


def untune(tid: int) -> None:
    """Put the vCPU thread back to SCHED_OTHER (pinning stays: it comes from
    libvirt's <vcpupin> in both worlds)."""
    with contextlib.suppress(ProcessLookupError):
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def rt_budget_us(pid: int, tid: int) -> int | None:
    """RT group scheduling budget of the thread's cpu cgroup (cgroup v1), None if not applicable."""
    try:
        for line in Path(f"/proc/{pid}/task/{tid}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if "cpu" in ctrls.split(","):
                for mnt in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
                    f = Path(mnt + path) / "cpu.rt_runtime_us"
                    if f.exists():
                        return int(f.read_text())
    except (OSError, ValueError):
        pass
    return None


# ---------------------------------------------------------------------------
# the guest


def guest_xml(name: str, kernel: Path, cmdline: str, serial: Path, initrd: Path | None,
              metadata: bool = False) -> str:
    rt = "<rt:realtime xmlns:rt='urn:rtagent:realtime:1' mask='^0' priority='1' policy='fifo'/>" if metadata else ""
    cpu = ("<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model>"
           "<feature policy='disable' name='svm'/><feature policy='disable' name='cx16'/></cpu>")
    virt = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    initrd_el = f"<initrd>{initrd}</initrd>" if initrd else ""
    return f"""<domain type='{virt}'>
  <name>{name}</name>
  <metadata>{rt}</metadata>
  <memory unit='MiB'>128</memory>
  <vcpu placement='static'>2</vcpu>
  <cputune><vcpupin vcpu='0' cpuset='0'/><vcpupin vcpu='1' cpuset='{RT_CPU}'/><emulatorpin cpuset='0'/></cputune>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel>{initrd_el}<cmdline>{cmdline}</cmdline></os>
  {cpu}
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'><source path='{serial}'/></serial>
  </devices>
</domain>"""


def kernel_cmdline(p: Params) -> str:
    n = len(p.schedule)
    if p.mode == "probe":
        return (f"{KERNEL_ARGS} rtprobe.cpu={GUEST_CPU} rtprobe.prio={PROBE_PRIO} rtprobe.interval_us={p.interval_us} "
                f"rtprobe.phases={n} rtprobe.phase_ms={p.phase_s * 1000} rtprobe.gap_ms={p.gap_s * 1000}")
    return (f"{KERNEL_ARGS} rtprobe.mode=off rdinit=/init rtb.cpu={GUEST_CPU} rtb.prio={PROBE_PRIO} "
            f"rtb.interval_us={p.interval_us} rtb.phases={n} rtb.phase_s={p.phase_s} rtb.gap_s={p.gap_s}")


class SerialLog:
    """Follows the serial console file line by line."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = 0
        self.buf = ""
        self.lines: list[str] = []

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        self.buf += data.decode(errors="replace").replace("\r", "")
        *complete, self.buf = self.buf.split("\n")
        self.lines += complete
        return complete


def parse_result(line: str) -> tuple[int, dict] | None:
    m = RESULT_RE.search(line)
    if not m:
        return None
    stats = {k: int(v) for k, v in KV_RE.findall(m.group(3))}
    stats["n"] = int(m.group(2))
    return int(m.group(1)), stats


# ---------------------------------------------------------------------------
# the run


def run(quick: bool = False, *, mode: str = "probe", params: Params | None = None, log=print,
        workdir: str | None = None, intent: str = "rule", boot_timeout_s: int = 900) -> dict:
    p = params or (QUICK if quick else FULL)
    p.mode = mode
    if mode == "cyclictest" and common.machine_info().get("kvm", "").startswith("PVM"):
        raise RuntimeError("cyclictest mode needs guest user space, which PVM cannot run; use --mode probe")
    schedule = p.schedule
    kernel = build.build_kernel(log=log)
    initrd = build.build_initramfs(log=log) if mode == "cyclictest" else None
    tmp = Path(workdir or tempfile.mkdtemp(prefix="rtbench-b1-"))
    tmp.mkdir(parents=True, exist_ok=True)
    prefix = f"rtbench-b1-{os.getpid()}-"
    name = prefix + "guest"
    serial = tmp / "serial.log"
    cmdline = kernel_cmdline(p)
    guests = common.Guests()
    noise = Noise()
    daemon = Daemon(prefix, tmp)
    phases = {i + 1: Phase(i + 1, s) for i, s in enumerate(schedule)}
    state = {"tid": None, "phase": None}
    stop = threading.Event()
    lock = threading.Lock()

    def sampler() -> None:
        # vCPU 1's policy while a phase runs, every 0.25 s
        while not stop.wait(0.25):
            with lock:
                ph, tid = state["phase"], state["tid"]
            if ph is None or tid is None:
                continue
            want = "fifo" if SCENARIOS[ph.scenario]["daemon"] else "other"
            got = policy(tid)
            ph.policy_samples += 1
            if got != want:
                ph.policy_wrong += 1

    def switch(sc: str, tid: int) -> None:
        cfg = SCENARIOS[sc]
        if cfg["noise"]:
            noise.on()
        else:
            noise.off()
        if cfg["daemon"]:
            daemon.on(interference=cfg.get("interference", False))
            if not common.wait_for(lambda: policy(tid) == "fifo", timeout=p.gap_s):
                log(f"  warning: vCPU 1 not FIFO {p.gap_s}s after the daemon started")
        else:
            daemon.off()
            untune(tid)

    total_s = len(schedule) * (p.phase_s + p.gap_s)
    log(f"B1: {len(schedule)} phases ({' '.join(schedule)}), {p.phase_s}s each, {p.gap_s}s gaps, "
        f"interval {p.interval_us}us, mode {mode}; ≈{total_s // 60 + 2} min after boot")
    started = time.monotonic()
    th = threading.Thread(target=sampler, daemon=True)
    result: dict = {"params": asdict(p), "schedule": schedule, "kernel": str(kernel), "cmdline": cmdline,
                    "guest": name, "workdir": str(tmp), "intent": intent}
    with common.on_housekeeping():
        try:
            th.start()
            guests.start(name, guest_xml(name, kernel, cmdline, serial, initrd, metadata=intent == "metadata"))
            qpid = common.wait_for(lambda: common.qemu_pid(name), timeout=30)
            tid = common.wait_for(lambda: common.vcpu_tid(qpid, 1), timeout=30) if qpid else None
            if not tid:
                raise RuntimeError("guest started but its vCPU 1 thread was not found")
            state["tid"] = tid
            untune(tid)  # untuned until a scenario says otherwise
            sl = SerialLog(serial)
            boot_deadline = time.monotonic() + boot_timeout_s
            deadline = None
            rq0 = None
            done = False
            while not done:
                now = time.monotonic()
                if deadline is None and now > boot_deadline:
                    t0 = common.vcpu_tid(qpid, 0)
                    st = common.schedstat(qpid, t0) if t0 else None
                    why = (f"vCPU 0 ran {st[0] / 1e9:.1f} s and waited {st[1] / 1e9:.0f} s for host CPU 0"
                           if st else "vCPU 0 gone")
                    raise RuntimeError(f"no RTPROBE start line after {boot_timeout_s} s ({why}; an overloaded "
                                       f"host CPU 0 starves the boot); serial log: {serial}")
                if deadline is not None and now > deadline:
                    raise RuntimeError(f"guest stopped reporting; serial log: {serial}")
                for line in sl.poll():
                    if "RTPROBE" not in line:
                        if "Kernel panic" in line or "emulation failure" in line:
                            raise RuntimeError(f"guest: {line.strip()}")
                        continue
                    if "RTPROBE start" in line:
                        log(f"  guest up after {now - started:.0f}s: {line.split('RTPROBE ', 1)[1]}")
                        deadline = now + total_s * 2 + 120
                    elif m := re.search(r"RTPROBE gap phase=(\d+)", line):
                        ph = phases[int(m.group(1))]
                        t0 = time.monotonic()
                        switch(ph.scenario, tid)
                        ph.switch_s = time.monotonic() - t0
                        if ph.switch_s > p.gap_s * 0.8:
                            ph.note = f"switch took {ph.switch_s:.1f}s"
                    elif m := re.search(r"RTPROBE begin phase=(\d+)", line):
                        ph = phases[int(m.group(1))]
                        rq0 = common.schedstat(qpid, tid)
                        ph.rt_budget_us = rt_budget_us(qpid, tid)
                        with lock:
                            state["phase"] = ph
                    elif r := parse_result(line):
                        with lock:
                            state["phase"] = None
                        ph = phases[r[0]]
                        ph.stats = r[1]
                        rq1 = common.schedstat(qpid, tid)
                        if rq0 and rq1:
                            ph.rq_wait_ms = (rq1[1] - rq0[1]) / 1e6
                        log("  " + phase_line(ph))
                    elif "RTPROBE done" in line:
                        done = True
                    elif "RTPROBE error" in line or "RTPROBE stderr" in line:
                        raise RuntimeError(f"guest: {line.strip()}")
                if (p.mode == "probe" and not done and guests.started
                        and not _domain_running(guests, name)):
                    raise RuntimeError(f"guest is no longer running ({_qemu_error(name)}); serial log: "
                                       f"{serial}; see /var/log/libvirt/qemu/{name}.log")
                time.sleep(0.2)
        finally:
            stop.set()
            noise.off()
            daemon.off()
            guests.close()
            th.join(timeout=2)
    result["elapsed_s"] = round(time.monotonic() - started)
    result["phases"] = [dict(asdict(ph), valid=ph.valid) for ph in phases.values()]
    result["scenarios"] = aggregate(list(phases.values()))
    result["ratios_A_over_C"] = ratios(result["scenarios"])
    if "I" in p.order or "J" in p.order:
        # accounting on / off, same noise (I/C) and quiet (J/D): > 1 is worse
        result["ratios_accounting_on_over_off"] = {"I/C": ratios(result["scenarios"], "I", "C"),
                                                   "J/D": ratios(result["scenarios"], "J", "D")}
    result["machine"] = common.machine_info()
    result["halt_poll_ns"] = _read("/sys/module/kvm/parameters/halt_poll_ns")
    result["sched_rt_runtime_us"] = _read("/proc/sys/kernel/sched_rt_runtime_us")
    return result


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def _qemu_error(name: str) -> str:
    """PVM's complaint, e.g. 'emulation failure … Code=… <9b> …' (the byte in <> is the instruction)."""
    try:
        lines = Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return "no qemu log"
    err = [ln for ln in lines if "emulation failure" in ln or ln.startswith(("RIP=", "Code="))]
    return " ".join(err[-3:]) or "no emulation failure logged"


def _domain_running(guests: common.Guests, name: str) -> bool:
    import libvirt

    try:
        # an emulation failure leaves the guest paused (KVM internal error)
        return guests.lookup(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    except libvirt.libvirtError:
        return True  # libvirtd restarting (a concurrent test): assume still there
    except KeyError:
        return False


# ---------------------------------------------------------------------------
# numbers


def aggregate(phases: list[Phase]) -> dict:
    out = {}
    for sc in [k for k in SCENARIOS if k != "W" and any(ph.scenario == k for ph in phases)]:
        ok = [ph for ph in phases if ph.scenario == sc and ph.valid]
        all_ = [ph for ph in phases if ph.scenario == sc]
        if not ok:
            out[sc] = {"label": SCENARIOS[sc]["label"], "phases": 0, "rejected": len(all_)}
            continue
        n = sum(ph.stats["n"] for ph in ok)
        p99s = [ph.stats["p99_ns"] for ph in ok]
        out[sc] = {
            "label": SCENARIOS[sc]["label"],
            "phases": len(ok),
            "rejected": len(all_) - len(ok),
            "samples": n,
            "avg_ns": round(sum(ph.stats["avg_ns"] * ph.stats["n"] for ph in ok) / n),
            "p50_ns": round(common.median([ph.stats["p50_ns"] for ph in ok])),
            "p99_ns": round(common.median(p99s)),  # median over phases of each phase's p99
            "p99_worst_ns": max(p99s),
            "max_ns": max(ph.stats["max_ns"] for ph in ok),
            "min_ns": min(ph.stats["min_ns"] for ph in ok),
            "overruns": sum(ph.stats.get("overruns", 0) for ph in ok),
            "rq_wait_ms_per_phase": round(common.median([ph.rq_wait_ms for ph in ok if ph.rq_wait_ms is not None]
                                                        or [float("nan")]), 1),
        }
    return out


def ratios(sc: dict, num: str = "A", den: str = "C") -> dict:
    a, c = sc.get(num, {}), sc.get(den, {})
    out = {}
    for k in ("avg_ns", "p99_ns", "max_ns"):
        if a.get(k) and c.get(k):
            out[k.replace("_ns", "")] = round(a[k] / c[k], 2)
    return out


def us(ns) -> str:
    return "–" if ns is None else f"{ns / 1000:.0f}"


def phase_line(ph: Phase) -> str:
    s = ph.stats
    flag = "" if ph.valid or ph.scenario == "W" else \
        f"  REJECTED ({ph.note or f'policy wrong in {ph.policy_wrong}/{ph.policy_samples} samples'})"
    return (f"phase {ph.phase:2d} {ph.scenario}: n={s.get('n')} avg={us(s.get('avg_ns'))} "
            f"p99={us(s.get('p99_ns'))} max={us(s.get('max_ns'))} µs, overruns={s.get('overruns')}, "
            f"vCPU rq-wait {ph.rq_wait_ms if ph.rq_wait_ms is None else round(ph.rq_wait_ms)} ms, "
            f"RT budget {ph.rt_budget_us} µs/s{flag}")


def tables(res: dict) -> str:
    rows = []
    for sc in res["scenarios"]:
        v = res["scenarios"].get(sc, {})
        if not v.get("phases"):
            rows.append([sc, SCENARIOS[sc]["label"], 0, v.get("rejected", 0), "–", "–", "–", "–", "–", "–"])
            continue
        rows.append([sc, v["label"], v["phases"], v["rejected"], v["samples"], us(v["min_ns"]), us(v["avg_ns"]),
                     us(v["p99_ns"]), us(v["max_ns"]), v["rq_wait_ms_per_phase"]])
    t1 = common.format_table(
        ["", "scenario", "phases", "rejected", "samples", "min µs", "avg µs", "p99 µs", "max µs",
         "vCPU rq-wait ms/phase"], rows,
        title="B1 guest-observed timer latency (wake-up − deadline), per scenario")
    r = res["ratios_A_over_C"]
    rrows = [["A/C (untuned/rtagent, same noise)", *(f"{r[k]}×" if k in r else "–" for k in ("avg", "p99", "max"))]]
    for pair, q in res.get("ratios_accounting_on_over_off", {}).items():
        rrows.append([f"{pair} (accounting on/off)", *(f"{q[k]}×" if k in q else "–" for k in ("avg", "p99", "max"))])
    t2 = common.format_table(["", "avg", "p99", "max"], rrows)
    prow = []
    for ph in res["phases"]:
        s = ph["stats"]
        prow.append([ph["phase"], ph["scenario"], s.get("n", "–"), us(s.get("avg_ns")), us(s.get("p99_ns")),
                     us(s.get("max_ns")), s.get("overruns", "–"),
                     "–" if ph["rq_wait_ms"] is None else round(ph["rq_wait_ms"]),
                     "–" if ph["rt_budget_us"] is None else ph["rt_budget_us"] // 1000,
                     "yes" if ph["valid"] else ("warm-up" if ph["scenario"] == "W" else "no")])
    t3 = common.format_table(["phase", "sc", "n", "avg µs", "p99 µs", "max µs", "overruns", "rq-wait ms",
                              "RT budget ms/s", "counted"],
                             prow, title="per phase, in run order")
    return "\n\n".join([t1, t2, t3])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.b1_latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats × 15 s phases (≈ 6 min + boot) instead of 5 × 40 s (≈ 19 min + boot)")
    ap.add_argument("--mode", choices=("probe", "cyclictest"), default="probe",
                    help="probe: in-kernel measuring thread (works on PVM); cyclictest: userspace "
                         "cyclictest in an initramfs (hardware KVM only)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--phase-s", type=int)
    ap.add_argument("--gap-s", type=int)
    ap.add_argument("--interval-us", type=int)
    ap.add_argument("--intent", choices=("rule", "metadata"), default="rule",
                    help="where the realtime intent comes from: a config rule matching the guest name "
                         "(default; immune to other rtagent daemons on a shared host) or <rt:realtime> metadata")
    ap.add_argument("--interference", action="store_true",
                    help="also scenarios I and J: C and D with the daemon's interference accounting on")
    ap.add_argument("--order", help="the scenarios of a round, e.g. DJ (default ACDQ, ACDQIJ with --interference)")
    ap.add_argument("--json", help="write the full result here")
    ap.add_argument("--build-only", action="store_true", help="build (or find cached) guest kernel/initramfs and exit")
    args = ap.parse_args(argv)
    # Stop cleanly (stress-ng, daemon, guest: the finally in run()) on SIGTERM,
    # and on SIGINT even when started in the background by a shell.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base = QUICK if args.quick else FULL
    p = Params(repeats=args.repeats or base.repeats, phase_s=args.phase_s or base.phase_s,
               gap_s=args.gap_s or base.gap_s, interval_us=args.interval_us or base.interval_us,
               order=args.order or (ORDER_INTERFERENCE if args.interference else ORDER))
    if set(p.order) - set(SCENARIOS) - {"W"} or not p.order:
        ap.error(f"--order {p.order!r}: scenarios are {', '.join(k for k in SCENARIOS if k != 'W')}")
    if args.build_only:
        print(build.build_kernel())
        if args.mode == "cyclictest":
            print(build.build_initramfs())
        return 0
    res = run(args.quick, mode=args.mode, params=p, intent=args.intent)
    print()
    print(tables(res))
    print(f"\nhalt_poll_ns={res['halt_poll_ns']} sched_rt_runtime_us={res['sched_rt_runtime_us']} "
          f"elapsed {res['elapsed_s']} s; {res['machine'].get('date')}")
    common.dump_json(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
