"""Host readiness checks on fixture /proc, /sys and /etc trees: the good and the
bad value of each check."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtagent.config import Partition
from rtagent.cpulist import parse_cpulist
from rtagent.kernel import Kernel
from rtagent.kernel.irqbalance import detect_irqbalance, parse_shell_vars
from rtagent.monitor import hostchecks
from rtagent.monitor.hostchecks import CHECK_NAMES, HostCheck, run_host_checks

pytestmark = pytest.mark.unit

PF_KTHREAD = 0x00200000


def part(online="0-3", realtime="2-3"):
    on = parse_cpulist(online)
    rt = parse_cpulist(realtime, allow_empty=True)
    return Partition(frozenset(on), frozenset(rt), frozenset(on - rt))


def _stat(pid, comm, flags):
    rest = ["0"] * 50
    rest[0], rest[1], rest[6] = "S", "1", str(flags)
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


class Host:
    """A fixture host whose every value is the good one; tests spoil one."""

    def __init__(self, root: Path):
        self.root = root
        self.proc = root / "proc"
        self.sys = root / "sys"
        self.etc = root / "etc"
        for d in (self.proc / "sys/kernel", self.sys, self.etc):
            d.mkdir(parents=True)
        self.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 isolcpus=managed_irq,domain,2-3 nohz_full=2-3 "
                     "rcu_nocbs=2-3 irqaffinity=0-1 quiet")
        self.sysctl("sched_rt_runtime_us", "-1")
        self.sysctl("sched_rt_period_us", "1000000")
        self.sysctl("task_delayacct", "0")
        self.sysctl("timer_migration", "0")
        self.write("sys/kernel/mm/transparent_hugepage/enabled", "always madvise [never]")
        self.write("sys/kernel/mm/ksm/run", "0")
        self.hugepages("2048kB", 0, 0)
        self.hugepages("1048576kB", 8, 4)
        self.write("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids")
        self.write("proc/self/mounts", f"cgroup2 {self.sys}/fs/cgroup cgroup2 rw,nosuid 0 0")
        self.process(1, "systemd", "0-1")
        self.process(300, "sshd", "0-1", threads=[(301, "sshd-worker", "0-1")])
        self.kthread(22, "ksoftirqd/2", "2")
        # tracefs with what the interference accounting needs (preflight check "tracefs")
        (self.sys / "kernel/tracing/instances").mkdir(parents=True)
        for event in ("sched/sched_switch", "irq/irq_handler_entry", "irq/irq_handler_exit",
                      "irq/softirq_entry", "irq/softirq_exit"):
            self.write(f"sys/kernel/tracing/events/{event}/format", "name: x\nID: 1\n")

    def write(self, rel, text):
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
        return p

    def cmdline(self, text):
        self.write("proc/cmdline", text)

    def sysctl(self, name, value):
        self.write(f"proc/sys/kernel/{name}", value)

    def hugepages(self, size, total, free):
        self.write(f"sys/kernel/mm/hugepages/hugepages-{size}/nr_hugepages", str(total))
        self.write(f"sys/kernel/mm/hugepages/hugepages-{size}/free_hugepages", str(free))

    def process(self, pid, comm, cpus, threads=(), flags=0, environ=None):
        d = self.proc / str(pid)
        d.mkdir()
        (d / "stat").write_text(_stat(pid, comm, flags))
        (d / "comm").write_text(comm + "\n")
        (d / "status").write_text(f"Name:\t{comm}\nCpus_allowed_list:\t{cpus}\n")
        if environ is not None:
            (d / "environ").write_bytes(environ)
        for tid, tcomm, tcpus in ((pid, comm, cpus), *threads):
            td = d / "task" / str(tid)
            td.mkdir(parents=True)
            (td / "status").write_text(f"Name:\t{tcomm}\nCpus_allowed_list:\t{tcpus}\n")
            (td / "comm").write_text(tcomm + "\n")

    def kthread(self, pid, comm, cpus):
        self.process(pid, comm, cpus, flags=PF_KTHREAD)

    def kernel(self) -> Kernel:
        return Kernel(str(self.proc), str(self.sys), etc=str(self.etc))

    def mount_cgroup_v1(self):
        """A v1 ``cpu,cpuacct`` hierarchy under sys/fs/cgroup/cpu, named in self/mounts."""
        self.write("proc/self/mounts", f"cgroup {self.sys}/fs/cgroup/cpu cgroup rw,cpu,cpuacct 0 0")

    def checks(self, partition=None, **kw) -> dict[str, HostCheck]:
        result = run_host_checks(partition or part(), self.kernel(), **kw)
        assert [c.name for c in result] == list(CHECK_NAMES)
        return {c.name: c for c in result}


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_good_host_passes_everything(host):
    checks = host.checks()
    bad = {n: c.detail for n, c in checks.items() if not c.ok}
    assert bad == {}
    for c in checks.values():
        assert c.severity == "info" and c.detail
        assert {"name", "ok", "detail", "severity"} <= set(c.to_json()) <= {"name", "ok", "detail", "severity", "value"}


@pytest.mark.parametrize("cmdline,name,fragment", [
    ("quiet nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1", "isolcpus", "isolcpus=managed_irq,domain,2-3"),
    ("isolcpus=2 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1", "isolcpus", "does not cover realtime CPU 3"),
    ("isolcpus=domain,2-3 nohz_full=2-3 irqaffinity=0-1", "isolcpus", "managed_irq"),
    ("isolcpus=managed_irq,2-3 rcu_nocbs=2-3 irqaffinity=0-1", "nohz_full", "nohz_full=2-3"),
    ("isolcpus=managed_irq,2-3 nohz_full=3 rcu_nocbs=2-3 irqaffinity=0-1", "nohz_full", "CPU 2"),
    ("isolcpus=managed_irq,2-3 irqaffinity=0-1", "rcu_nocbs", "rcu_nocbs=2-3"),
    ("isolcpus=managed_irq,2-3 nohz_full=2-3 rcu_nocbs=2-3", "irqaffinity", "irqaffinity=0-1"),
    ("isolcpus=managed_irq,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-3", "irqaffinity", "includes realtime"),
])
def test_cmdline_bad(host, cmdline, name, fragment):
    host.cmdline(cmdline)
    c = host.checks()[name]
    assert not c.ok and c.severity == "warning"
    assert fragment in c.detail


def test_cmdline_variants_good(host):
    # nohz_full implies rcu_nocbs; isolcpus with the nohz flag; "--" ends kernel params
    host.cmdline("isolcpus=nohz,domain,managed_irq,2-3 nohz_full=2-3 irqaffinity=0-1 -- isolcpus=0")
    checks = host.checks()
    assert checks["isolcpus"].ok and checks["rcu_nocbs"].ok
    assert "implies" in checks["rcu_nocbs"].detail
    host.cmdline("isolcpus=managed_irq,2-3 nohz_full=2-3 irqaffinity=0")
    checks = host.checks()
    assert checks["isolcpus"].ok and checks["nohz_full"].ok and checks["irqaffinity"].ok


def test_parse_isolcpus():
    assert hostchecks.parse_isolcpus("managed_irq,domain,2-3,6") == (frozenset({2, 3, 6}),
                                                                    frozenset({"managed_irq", "domain"}))
    assert hostchecks.parse_isolcpus("1") == (frozenset({1}), frozenset())


@pytest.mark.parametrize("runtime,period,ok,severity,fragment", [
    ("-1", "1000000", True, "info", "off"),
    ("1000000", "1000000", True, "info", "off"),
    ("950000", "1000000", False, "warning", "stopped for 50 ms"),
    ("0", "1000000", False, "error", "no SCHED_FIFO thread"),
])
def test_rt_throttling(host, runtime, period, ok, severity, fragment):
    host.sysctl("sched_rt_runtime_us", runtime)
    host.sysctl("sched_rt_period_us", period)
    c = host.checks()["rt_throttling"]
    assert (c.ok, c.severity) == (ok, severity)
    assert fragment in c.detail
    if not ok:
        assert "sched_rt_runtime_us = -1" in c.detail


def test_rt_group_sched(host):
    c = host.checks()["rt_group_sched"]
    assert c.ok and "cgroup v2" in c.detail
    host.mount_cgroup_v1()
    host.write("sys/fs/cgroup/cpu/cpu.rt_runtime_us", "950000")
    c = host.checks()["rt_group_sched"]
    assert c.ok and c.severity == "info"
    assert "cgroup v1" in c.detail and "budget" in c.detail and "rtagent grants" in c.detail
    host.write("sys/fs/cgroup/cpu/cpu.rt_runtime_us", "0")
    c = host.checks()["rt_group_sched"]
    assert not c.ok and c.severity == "error"


def test_rt_group_sched_warns_while_a_vcpusched_guest_is_defined(host):
    """Issue 12 item 9: libvirt would fail to start that guest here."""
    host.mount_cgroup_v1()
    host.write("sys/fs/cgroup/cpu/cpu.rt_runtime_us", "950000")
    host.sysctl("sched_rt_runtime_us", "950000")
    c = host.checks(vcpusched_guests=["nova-1", "nova-0"])["rt_group_sched"]
    assert not c.ok and c.severity == "warning"
    assert "nova-0, nova-1" in c.detail and "will be refused" in c.detail
    assert "kernel.sched_rt_runtime_us = -1" in c.detail and "urn:rtagent:realtime:1" in c.detail
    assert host.checks()["rt_group_sched"].ok  # no such guest: as before
    host.sysctl("sched_rt_runtime_us", "-1")  # the kernel's zero-budget check is lifted
    assert host.checks(vcpusched_guests=["nova-0"])["rt_group_sched"].ok


def test_rt_group_sched_on_the_unified_hierarchy(host):
    host.write("sys/fs/cgroup/cpu.rt_runtime_us", "950000")
    c = host.checks()["rt_group_sched"]
    assert c.ok and "cgroup v2" in c.detail and "rtagent grants" in c.detail


@pytest.mark.parametrize("value,ok", [("[always] madvise never", False), ("always [madvise] never", True),
                                      ("always madvise [never]", True)])
def test_thp(host, value, ok):
    host.write("sys/kernel/mm/transparent_hugepage/enabled", value)
    c = host.checks()["thp"]
    assert c.ok is ok
    if not ok:
        assert c.severity == "warning" and "madvise or never" in c.detail


@pytest.mark.parametrize("value,ok", [("1", False), ("0", True), ("2", True)])
def test_ksm(host, value, ok):
    host.write("sys/kernel/mm/ksm/run", value)
    c = host.checks()["ksm"]
    assert c.ok is ok
    if not ok:
        assert c.severity == "warning" and "nosharepages" in c.detail


@pytest.mark.parametrize("name,sysctl", [("delayacct", "task_delayacct"), ("timer_migration", "timer_migration")])
def test_sysctl_flags(host, name, sysctl):
    host.sysctl(sysctl, "1")
    c = host.checks()[name]
    assert not c.ok and c.severity == "warning" and f"kernel.{sysctl} = 0" in c.detail
    host.sysctl(sysctl, "0")
    assert host.checks()[name].ok


def test_hugepages(host):
    c = host.checks()["hugepages"]
    assert c.ok and "1048576kB: 4 free of 8" in c.detail and "2048kB: 0 free of 0" in c.detail
    host.hugepages("1048576kB", 8, 0)
    c = host.checks()["hugepages"]
    assert not c.ok and c.severity == "info" and "no free pages" in c.detail
    host.hugepages("1048576kB", 0, 0)
    c = host.checks()["hugepages"]
    assert not c.ok and c.severity == "info" and "no hugepages reserved" in c.detail


def test_intruders(host):
    assert host.checks()["intruders"].ok
    # a QEMU process on the realtime CPUs is excluded; a stray thread is not
    host.process(900, "qemu-system-x86", "0-3", threads=[(901, "CPU 0/KVM", "2")])
    host.process(950, "stress", "0-1", threads=[(951, "stress-worker", "0-3")])
    c = host.checks(exclude_pids={900})["intruders"]
    assert not c.ok and c.severity == "warning"
    assert c.detail.startswith("1 user threads in 1 processes") and "stress[950]" in c.detail
    c = host.checks()["intruders"]
    assert "3 user threads in 2 processes" in c.detail
    found = hostchecks.find_intruders(host.kernel(), frozenset({2, 3}), {900})
    assert found == [(950, 951, "stress-worker")]


def test_intruders_remedy_on_a_systemd_cgroup_v2_node_with_isolcpus(host):
    """Debian 12 node (tests/node): isolcpus=managed_irq,domain,1 on the command
    line, systemd as PID 1, cgroup v2.  Once libvirt enabled the cpuset
    controller for the first guest, systemd, cron, journald … were all
    allowed on CPU 1 again: "boot with isolcpus" is no advice there."""
    c = host.checks()["intruders"]  # the fixture: isolcpus covers 2-3, systemd[1] on 0-1 only
    assert c.ok
    host.process(400, "cron", "0-3")
    for f in ("1/status", "1/task/1/status"):
        (host.proc / f).write_text("Name:\tsystemd\nCpus_allowed_list:\t0-3\n")
    c = host.checks()["intruders"]
    assert not c.ok and "systemd[1]" in c.detail and "cron[400]" in c.detail
    assert "boot with isolcpus" not in c.detail
    assert "isolcpus= already covers 2-3" in c.detail
    assert "systemctl set-property system.slice AllowedCPUs=0-1" in c.detail
    # cgroup v1 (no cgroup2 mount): no AllowedCPUs= advice.
    host.write("proc/self/mounts", f"cgroup {host.sys}/fs/cgroup/cpuset cgroup rw,cpuset 0 0")
    c = host.checks()["intruders"]
    assert "AllowedCPUs" not in c.detail and "confine them to 0-1" in c.detail
    # Without isolcpus on the command line the first remedy is still isolcpus.
    host.cmdline("root=/dev/sda1 nohz_full=2-3")
    assert "boot with isolcpus=2-3" in host.checks()["intruders"].detail
    # isolcpus with only the nohz flag does not isolate the scheduler domain.
    host.cmdline("root=/dev/sda1 isolcpus=nohz,2-3")
    assert "boot with isolcpus=2-3" in host.checks()["intruders"].detail


def test_kernel_threads_are_not_intruders(host):
    host.kthread(60, "kworker/2:1", "2")
    assert host.checks()["intruders"].ok


def test_irqbalance(host):
    assert host.checks()["irqbalance"].ok
    host.process(700, "irqbalance", "0-3", environ=b"PATH=/usr/bin\0")
    c = host.checks()["irqbalance"]
    assert not c.ok and c.severity == "warning" and "IRQBALANCE_BANNED_CPULIST=2-3" in c.detail
    host.write("etc/default/irqbalance", '# comment\nIRQBALANCE_BANNED_CPULIST="2-3"\n')
    c = host.checks()["irqbalance"]
    assert c.ok and "/etc/default/irqbalance" in c.detail


def test_irqbalance_environ_wins_and_hex_mask(tmp_path):
    h = Host(tmp_path)
    h.write("etc/sysconfig/irqbalance", "IRQBALANCE_BANNED_CPUS=0000000c\n")
    h.process(700, "irqbalance", "0-3", environ=b"IRQBALANCE_BANNED_CPUS=00000008\0")
    info = detect_irqbalance(h.kernel())
    assert info.running and info.banned == frozenset({3}) and info.source == "/proc/700/environ"
    c = h.checks()["irqbalance"]
    assert not c.ok and "only 3" in c.detail
    # the cpulist variable beats the hex one
    (h.proc / "700/environ").write_bytes(b"IRQBALANCE_BANNED_CPUS=00000008\0IRQBALANCE_BANNED_CPULIST=2-3\0")
    assert h.checks()["irqbalance"].ok


def test_irqbalance_implicit_isolcpus_ban(tmp_path):
    h = Host(tmp_path)
    h.process(700, "irqbalance", "0-3", environ=b"")
    h.write("sys/devices/system/cpu/isolated", "2-3")
    c = h.checks()["irqbalance"]
    assert c.ok and "isolcpus" in c.detail


def test_parse_shell_vars():
    env = parse_shell_vars('A=1\n#B=2\nexport C="x y" # trailing\nnot a var\nD=\n')
    assert env == {"A": "1", "C": "x y", "D": ""}


def test_no_realtime_cpus(host):
    checks = host.checks(part("0-3", ""))
    for name in ("isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity", "intruders"):
        assert not checks[name].ok and checks[name].severity == "warning"
        assert "no realtime CPUs are configured" in checks[name].detail
    assert checks["thp"].ok


def test_missing_files_do_not_crash(tmp_path):
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    sys_.mkdir()
    result = run_host_checks(part(), Kernel(str(proc), str(sys_), etc=str(tmp_path / "etc")))
    assert [c.name for c in result] == list(CHECK_NAMES)
    assert all(c.detail and c.severity in hostchecks.SEVERITIES for c in result)


def test_one_proc_scan_serves_every_check_that_needs_processes(host, monkeypatch):
    """The intruders, irqbalance and vhost_worker checks share one listing of
    /proc per run (each used to list and read all of it itself), and each
    reports what it reports when it scans alone."""
    from rtagent.kernel import features as kf
    from rtagent.kernel.tasks import Tasks
    from rtagent.monitor import preflight

    host.write("proc/sys/kernel/osrelease", "6.8.0")
    host.process(700, "irqbalance", "0-3", environ=b"IRQBALANCE_BANNED_CPULIST=2-3\0")
    host.process(900, "qemu-system-x86", "0-3", threads=[(901, "CPU 0/KVM", "2"), (905, "vhost-900", "0-3")])
    host.process(950, "stress", "0-1", threads=[(951, "stress-worker", "0-3")])
    k = host.kernel()
    alone = {"intruders": hostchecks.find_intruders(k, frozenset({2, 3}), {900}),
             "irqbalance": detect_irqbalance(k), "vhost": kf.vhost_workers(k),
             "vhost_check": preflight.check_vhost_worker(k)}
    listings = []
    real = Tasks.pids
    monkeypatch.setattr(Tasks, "pids", lambda self: listings.append(1) or real(self))
    c = host.checks(exclude_pids={900})
    assert len(listings) == 1
    assert alone["intruders"] == [(700, 700, "irqbalance"), (950, 951, "stress-worker")]
    assert c["intruders"].value == 2 and "irqbalance[700], stress[950]" in c["intruders"].detail
    assert alone["irqbalance"].pids == (700,) and alone["irqbalance"].bans(frozenset({2, 3}))
    assert c["irqbalance"].ok and "(pid 700) bans realtime CPUs 2-3" in c["irqbalance"].detail
    assert alone["vhost"] == (0, 1)
    assert c["vhost_worker"] == alone["vhost_check"] and "(1 seen)" in c["vhost_worker"].detail
    # The standalone readers take a scan of their own, as before.
    listings.clear()
    assert hostchecks.find_intruders(k, frozenset({2, 3}), {900}) == alone["intruders"]
    assert detect_irqbalance(k) == alone["irqbalance"] and kf.vhost_workers(k) == alone["vhost"]
    assert len(listings) == 3


def test_the_scan_takes_a_managed_qemus_threads_from_the_daemon(host, monkeypatch):
    """``known_threads`` (the daemon's last observation of its guests): the
    scan reads only their QEMU's stat, not its task list or thread names,
    and every check reports what it reports after reading them."""
    from rtagent.kernel import fs

    host.write("proc/sys/kernel/osrelease", "6.8.0")
    host.process(900, "qemu-system-x86", "0-3", threads=[(901, "CPU 0/KVM", "2"), (905, "vhost-900", "0-3")])
    host.process(950, "stress", "0-1", threads=[(951, "stress-worker", "0-3")])
    k = host.kernel()
    read = hostchecks.run_host_checks(part(), k, exclude_pids={900})
    paths = []
    real = fs.read_text
    monkeypatch.setattr(fs, "read_text", lambda p: paths.append(p) or real(p))
    known = {900: {900: "qemu-system-x86", 901: "CPU 0/KVM", 905: "vhost-900"}}
    told = hostchecks.run_host_checks(part(), k, exclude_pids={900}, known_threads=known)
    assert told == read
    assert not [p for p in paths if "/900/task" in p]
    assert [p for p in paths if "/950/task/951" in p]  # everyone else's threads are still read
    # What the daemon knows is what the vhost check counts (a stale name shows).
    known[900][905] = "worker"
    c = {x.name: x for x in hostchecks.run_host_checks(part(), k, exclude_pids={900}, known_threads=known)}
    assert "(1 seen)" not in c["vhost_worker"].detail


def test_the_daemons_scans_read_a_threads_name_once_per_process_life(host, monkeypatch):
    """ThreadNames (the daemon keeps one across host-check runs): a later
    scan reads comm only for threads it has not seen in that process; a
    process restarted under the same PID (a new start time) is read anew,
    an exited one forgotten; every check reports what a fresh scan does."""
    from rtagent.kernel import fs
    from rtagent.kernel.procscan import ThreadNames

    host.write("proc/sys/kernel/osrelease", "6.8.0")
    host.process(900, "qemu-system-x86", "0-3", threads=[(901, "CPU 0/KVM", "2"), (905, "vhost-900", "0-3")])
    host.process(950, "stress", "0-1", threads=[(951, "stress-worker", "0-3")])
    k = host.kernel()
    comms: list[str] = []
    real = fs.read_text
    monkeypatch.setattr(fs, "read_text", lambda p: ("/task/" in p and p.endswith("/comm") and comms.append(p)) or real(p))
    names = ThreadNames()

    def run():
        comms.clear()
        return hostchecks.run_host_checks(part(), k, exclude_pids={900}, thread_names=names)

    first = run()
    every = sorted(str(t / "comm") for t in host.proc.glob("*/task/*") if t.name != t.parent.parent.name)
    assert sorted(comms) == every and str(host.proc / "950/task/951/comm") in every
    assert run() == first and comms == []
    # A new thread: only its name is read, and it counts.
    td = host.proc / "950/task/952"
    td.mkdir()
    (td / "status").write_text("Name:\tstress-worker\nCpus_allowed_list:\t0-3\n")
    (td / "comm").write_text("stress-worker\n")
    third = run()
    assert comms == [str(td / "comm")]
    assert third == hostchecks.run_host_checks(part(), k, exclude_pids={900})
    assert {c.name: c for c in third}["intruders"].value == 2  # 951 and the new 952
    # PID 950 is another process now (start time 5): every name read again.
    rest = _stat(950, "stress", 0).split(") ")[1].split()
    rest[19] = "5"  # field 22, starttime
    (host.proc / "950/stat").write_text("950 (stress) " + " ".join(rest) + "\n")
    run()
    assert sorted(comms) == [str(host.proc / f"950/task/{t}/comm") for t in (951, 952)]
    # An exited process is forgotten.
    import shutil

    before = len(names)
    shutil.rmtree(host.proc / "950")
    run()
    assert len(names) == before - 1
