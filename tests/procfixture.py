"""Build fake ``/proc`` trees for parser tests.

    tree = ProcTree(tmp_path)
    tree.add_process(
        4242, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "guest=g1", "-uuid", U],
        threads=[
            FakeThread(4243, "call_rcu"),
            FakeThread(4245, "CPU 0/KVM", cpus="2", policy="fifo", priority=1),
        ],
        vm_lck_kb=65536, memlock=(8 << 20, 8 << 20),
    )
    tree.add_kthread(4250, "kvm-pit/4242")
    observe_process(4242, tree.kernel())

Files are written in the kernel's formats (full 52-field ``stat`` lines,
``status`` with tab-separated keys, NUL-separated ``cmdline``, the
``limits`` table), so parsers see what they see on a host.  The main thread
(tid == pid) is added automatically unless ``threads`` has one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtagent.cpulist import format_cpulist, format_hexmask, parse_cpulist
from rtagent.kernel import Kernel

__all__ = ["FakeThread", "ProcTree", "stat_line", "POLICY_NUMBERS", "PF_KTHREAD", "PF_USER_WORKER"]

POLICY_NUMBERS = {"other": 0, "fifo": 1, "rr": 2, "batch": 3, "idle": 5, "deadline": 6}
PF_USER_WORKER = 0x00004000
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000
# What ordinary user threads and kthreads show on this kernel (PF_* bits).
USER_FLAGS = 0x400040  # PF_FORKNOEXEC | PF_RANDOMIZE-ish, as seen for QEMU threads
KTHREAD_FLAGS = 0x208040  # PF_KTHREAD | PF_NOFREEZE | PF_FORKNOEXEC (kvm-pit)


@dataclass
class FakeThread:
    """One task.  ``cpus`` is a CPU list string or an iterable of CPUs;
    ``policy`` a name ("fifo") or a number; ``cgroup`` the cpu controller path
    (written as a cgroup v1 ``cpu`` line plus the ``0::`` line) or ``None``
    for no cgroup file, or the literal file text via ``cgroup_text``."""

    tid: int
    comm: str
    policy: str | int = "other"
    priority: int = 0
    cpus: str | Iterable[int] = "0-1"
    flags: int = USER_FLAGS
    state: str = "S"
    ppid: int = 1
    cgroup: str | None = "/machine/qemu-1-g.libvirt-qemu/emulator"
    cgroup_text: str | None = None
    schedstat: tuple[int, int, int] | None = (1000, 20, 3)
    voluntary: int = 10
    nonvoluntary: int = 1
    blkio_ticks: int = 0
    starttime: int = 8118  # stat field 22, clock ticks since boot

    def cpus_list(self) -> str:
        if isinstance(self.cpus, str):
            return format_cpulist(parse_cpulist(self.cpus, allow_empty=True))
        return format_cpulist(self.cpus)

    def policy_number(self) -> int:
        return self.policy if isinstance(self.policy, int) else POLICY_NUMBERS[self.policy]


def stat_line(pid: int, comm: str, *, state: str = "S", ppid: int = 1, flags: int = USER_FLAGS,
              priority: int = 0, policy: int = 0, blkio_ticks: int = 0, num_threads: int = 1,
              starttime: int = 8118) -> str:
    """A ``/proc/<pid>/stat`` line with all 52 fields of proc(5)."""
    kprio = -1 - priority if policy in (1, 2) else 20
    fields = [
        str(pid), f"({comm})", state, str(ppid), str(pid), str(pid), "0", "-1", str(flags),  # 1-9
        "100", "0", "0", "0", "3", "4", "0", "0",  # 10-17 minflt..cstime
        str(kprio), "0", str(num_threads), "0", str(starttime),  # 18-22 priority nice num_threads itreal starttime
        "439754752", "10291", "18446744073709551615",  # 23-25 vsize rss rsslim
        "0", "0", "0", "0", "0",  # 26-30
        "0", "0", "4096", "16963", "1", "0", "0", "17", "0",  # 31-39 signal..processor
        str(priority), str(policy), str(blkio_ticks),  # 40-42
        "0", "0", "0", "0", "0", "0", "0", "0", "0", "0",  # 43-52
    ]
    assert len(fields) == 52
    return " ".join(fields) + "\n"


def _status(name: str, pid: int, tgid: int, ppid: int, state: str, cpus: str,
            voluntary: int, nonvoluntary: int, memory: dict[str, int] | None) -> str:
    lines = [
        f"Name:\t{name}",
        "Umask:\t0022",
        f"State:\t{state} ({'sleeping' if state == 'S' else 'running' if state == 'R' else 'zombie' if state == 'Z' else 'other'})",
        f"Tgid:\t{tgid}",
        "Ngid:\t0",
        f"Pid:\t{pid}",
        f"PPid:\t{ppid}",
        "TracerPid:\t0",
    ]
    if memory is not None:
        for key in ("VmPeak", "VmSize", "VmLck", "VmPin", "VmHWM", "VmRSS", "VmData", "VmStk",
                    "VmExe", "VmLib", "VmPTE", "VmSwap", "HugetlbPages"):
            lines.append(f"{key}:\t{memory.get(key, 0):8d} kB")
    lines += [
        "Threads:\t1",
        f"Cpus_allowed:\t{format_hexmask(parse_cpulist(cpus, allow_empty=True))}",
        f"Cpus_allowed_list:\t{cpus}",
        "Mems_allowed_list:\t0",
        f"voluntary_ctxt_switches:\t{voluntary}",
        f"nonvoluntary_ctxt_switches:\t{nonvoluntary}",
    ]
    return "\n".join(lines) + "\n"


def _limits(memlock: tuple[int | None, int | None]) -> str:
    def show(v: int | None) -> str:
        return "unlimited" if v is None else str(v)

    rows = [
        ("Max cpu time", "unlimited", "unlimited", "seconds"),
        ("Max stack size", "8388608", "unlimited", "bytes"),
        ("Max processes", "96365", "96365", "processes"),
        ("Max locked memory", show(memlock[0]), show(memlock[1]), "bytes"),
        ("Max address space", "unlimited", "unlimited", "bytes"),
        ("Max realtime priority", "0", "0", ""),
        ("Max realtime timeout", "unlimited", "unlimited", "us"),
    ]
    out = [f"{'Limit':<26}{'Soft Limit':<21}{'Hard Limit':<21}{'Units':<10}"]
    out += [f"{a:<26}{b:<21}{c:<21}{d:<10}" for a, b, c, d in rows]
    return "\n".join(out) + "\n"


@dataclass
class ProcTree:
    """A fake ``/proc`` under ``base/proc`` (and a libvirt run dir under
    ``base/run``); :meth:`kernel` is the floor's root object over it."""

    base: Path
    _threads: dict[int, dict[int, FakeThread]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        (self.base / "proc").mkdir(parents=True, exist_ok=True)

    @property
    def proc(self) -> str:
        return str(self.base / "proc")

    @property
    def run(self) -> str:
        path = self.base / "run" / "libvirt" / "qemu"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    @property
    def sys(self) -> str:
        path = self.base / "sys"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def kernel(self) -> Kernel:
        """The floor's root object over this tree."""
        return Kernel(proc=self.proc, sys=self.sys, run=self.run, etc=str(self.base / "etc"))

    def path(self, *parts: object) -> Path:
        return self.base.joinpath("proc", *(str(p) for p in parts))

    # -- cgroupfs -----------------------------------------------------------

    def mount_cgroups(self, version: str = "v1", *, rt: bool = True) -> Path:
        """A cgroup hierarchy under ``base/cgroup`` and the ``self/mounts``
        line naming it: v1 with the ``cpu,cpuacct`` controllers, or v2
        (``cgroup2``).  ``rt`` writes the root's RT budget files (RT group
        scheduling on).  Returns the mount point."""
        mount = self.base / "cgroup" / ("cpu,cpuacct" if version == "v1" else "unified")
        mount.mkdir(parents=True, exist_ok=True)
        if version == "v1":
            line = f"cgroup {mount} cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0\n"
        else:
            line = f"cgroup2 {mount} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
        selfdir = self.path("self")
        selfdir.mkdir(parents=True, exist_ok=True)
        with open(selfdir / "mounts", "a") as fh:
            fh.write("proc /proc proc rw 0 0\n" + line)
        if rt:
            (mount / "cpu.rt_runtime_us").write_text("950000\n")
            (mount / "cpu.rt_period_us").write_text("1000000\n")
        return mount

    def add_cgroup(self, mount: Path, group: str, *, runtime: int | None = 0, tasks: str = "",
                   version: str = "v1") -> Path:
        """A group (``/machine/qemu-1-g.libvirt-qemu/vcpu0``) with its RT
        budget files (``runtime=None``: none) and its task list."""
        d = Path(mount, group.lstrip("/"))
        d.mkdir(parents=True, exist_ok=True)
        if runtime is not None:
            (d / "cpu.rt_runtime_us").write_text(f"{runtime}\n")
            (d / "cpu.rt_period_us").write_text("1000000\n")
        (d / ("tasks" if version == "v1" else "cgroup.threads")).write_text(tasks)
        return d

    # -- building -----------------------------------------------------------

    def add_process(
        self,
        pid: int,
        comm: str,
        cmdline: Sequence[str] = (),
        threads: Iterable[FakeThread] = (),
        *,
        ppid: int = 1,
        state: str = "S",
        flags: int = USER_FLAGS,
        cpus: str | Iterable[int] = "0-1",
        cgroup: str | None = "/machine/qemu-1-g.libvirt-qemu/emulator",
        vm_lck_kb: int = 0,
        vm_rss_kb: int = 41168,
        hugetlb_kb: int = 0,
        swap_kb: int = 0,
        memlock: tuple[int | None, int | None] = (8 << 20, 8 << 20),
        memory: bool = True,
    ) -> ProcTree:
        """A process with its main thread and ``threads``.  ``memory=False``
        writes a status without Vm* lines, as for kernel threads."""
        tasks = {t.tid: t for t in threads}
        if pid not in tasks:
            tasks[pid] = FakeThread(pid, comm, cpus=cpus, flags=flags, state=state, ppid=ppid, cgroup=cgroup)
        main = tasks[pid]
        mem = None
        if memory:
            mem = {"VmLck": vm_lck_kb, "VmRSS": vm_rss_kb, "HugetlbPages": hugetlb_kb, "VmSwap": swap_kb,
                   "VmSize": 429448, "VmPeak": 431752}
        d = self.path(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "comm").write_text(main.comm + "\n")
        (d / "stat").write_text(self._stat(pid, main, len(tasks)))
        (d / "status").write_text(_status(main.comm, pid, pid, main.ppid, main.state, main.cpus_list(),
                                          main.voluntary, main.nonvoluntary, mem))
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
        (d / "limits").write_text(_limits(memlock))
        self._threads[pid] = {}
        for t in tasks.values():
            self.add_thread(pid, t)
        return self

    def add_thread(self, pid: int, t: FakeThread) -> ProcTree:
        self._threads.setdefault(pid, {})[t.tid] = t
        d = self.path(pid, "task", t.tid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "comm").write_text(t.comm + "\n")
        (d / "stat").write_text(self._stat(pid, t, len(self._threads[pid])))
        (d / "status").write_text(_status(t.comm, t.tid, pid, t.ppid, t.state, t.cpus_list(),
                                          t.voluntary, t.nonvoluntary, None))
        if t.schedstat is not None:
            (d / "schedstat").write_text(" ".join(str(x) for x in t.schedstat) + "\n")
        if t.cgroup_text is not None:
            (d / "cgroup").write_text(t.cgroup_text)
        elif t.cgroup is not None:
            (d / "cgroup").write_text(
                f"9:name=systemd:/\n4:memory:/machine\n3:cpuset:{t.cgroup}\n2:cpuacct:/\n"
                f"1:cpu:{t.cgroup}\n0::{t.cgroup}\n"
            )
        self._recount(pid)
        return self

    def _recount(self, pid: int) -> None:
        """Every thread's stat with the process's thread count now (stat
        field 20 is the process's, in every thread's line, as the kernel has it)."""
        threads = self._threads.get(pid, {})
        for tid, t in threads.items():
            stat = self.path(pid, "task", tid, "stat")
            if stat.exists():
                stat.write_text(self._stat(pid, t, len(threads)))

    def add_kthread(self, pid: int, comm: str, *, flags: int = KTHREAD_FLAGS, ppid: int = 2,
                    cpus: str | Iterable[int] = "0-1", policy: str | int = "other",
                    priority: int = 0) -> ProcTree:
        """A kernel thread (child of kthreadd, PF_KTHREAD, no cmdline, no Vm* lines)."""
        t = FakeThread(pid, comm, flags=flags, ppid=ppid, cpus=cpus, policy=policy,
                       priority=priority, cgroup="/")
        return self.add_process(pid, comm, (), [t], ppid=ppid, flags=flags, memory=False,
                                memlock=(65536, 65536))

    def write_pidfile(self, name: str, pid: int | str) -> str:
        path = Path(self.run) / f"{name}.pid"
        path.write_text(f"{pid}")
        return str(path)

    # -- breaking -----------------------------------------------------------

    def vanish_thread(self, pid: int, tid: int, *, keep_dir: bool = True) -> None:
        """Make a thread vanish the way a race looks: its directory is still
        listed (``keep_dir``) but its files are gone, or it is gone entirely."""
        d = self.path(pid, "task", tid)
        if keep_dir:
            for f in d.iterdir():
                f.unlink()
        else:
            shutil.rmtree(d)
        self._threads.get(pid, {}).pop(tid, None)
        self._recount(pid)

    def remove_process(self, pid: int) -> None:
        shutil.rmtree(self.path(pid))
        self._threads.pop(pid, None)

    def remove_file(self, pid: int, *parts: object) -> None:
        self.path(pid, *parts).unlink()

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _stat(pid: int, t: FakeThread, nthreads: int) -> str:
        return stat_line(t.tid, t.comm, state=t.state, ppid=t.ppid, flags=t.flags, priority=t.priority,
                         policy=t.policy_number(), blkio_ticks=t.blkio_ticks, num_threads=nthreads,
                         starttime=t.starttime)
