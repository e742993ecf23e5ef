"""The /proc readers of the tuning engine, on fixture trees."""

from __future__ import annotations

import pytest

from rtagent.kernel import Kernel, fs
from rtagent.kernel.qemu import parse_qemu_name
from rtagent.kernel.tasks import parse_stat
from rtagent.tuning.guest.observe import (
    ProcessGone,
    ProcessMemory,
    classify,
    find_vm_kthreads,
    observe_process,
)
from tests.procfixture import (
    PF_KTHREAD,
    PF_USER_WORKER,
    FakeThread,
    ProcTree,
    stat_line,
)

pytestmark = pytest.mark.unit

UUID = "0bdad07f-2cc3-4281-a1af-d0ae12938d4e"
QPID = 3759
CG = "/machine/qemu-2-rtx1.libvirt-qemu"


def qemu_cmdline(name: str = "rtx1", uuid: str = UUID) -> list[str]:
    return [
        "/usr/bin/qemu-system-x86_64", "-name", f"guest={name},debug-threads=on", "-S",
        "-machine", "pc-i440fx-7.2,usb=off", "-accel", "kvm", "-m", "64",
        "-smp", "2,sockets=2,cores=1,threads=1", "-uuid", uuid, "-display", "none",
    ]


def add_rtx1(tree: ProcTree, pid: int = QPID, *, name: str = "rtx1", uuid: str = UUID, extra=(), **kw) -> None:
    """The thread set of a real libvirt 9 / QEMU 7.2 guest on kernel 6.18."""
    threads = [
        FakeThread(pid, "qemu-system-x86", cpus="0", cgroup=f"{CG}/emulator", schedstat=(71664852, 13652234, 1121),
                   voluntary=760, nonvoluntary=361),
        FakeThread(pid + 4, "call_rcu", cpus="0", cgroup=f"{CG}/emulator"),
        FakeThread(pid + 5, "IO mon_iothread", cpus="0", cgroup=f"{CG}/emulator"),
        FakeThread(pid + 6, "CPU 0/KVM", cpus="0", cgroup=f"{CG}/vcpu0", schedstat=(5188861109, 84402992, 4106),
                   voluntary=3926, nonvoluntary=180),
        FakeThread(pid + 7, "CPU 1/KVM", cpus="1", cgroup=f"{CG}/vcpu1", policy="fifo", priority=1),
        FakeThread(pid + 9, "kvm-nx-lpage-re", cpus="0", cgroup=f"{CG}/vcpu0", flags=0x84040C0),
        *extra,
    ]
    tree.add_process(pid, "qemu-system-x86", qemu_cmdline(name, uuid), threads, **kw)


@pytest.fixture
def tree(tmp_path) -> ProcTree:
    return ProcTree(tmp_path)


# -- stat parsing --------------------------------------------------------------


@pytest.mark.parametrize(
    "comm",
    ["CPU 0/KVM", "IO mon_iothread", "a) b (c", "))", "(", "x) S 2 3", "", "tab\there"],
)
def test_parse_stat_splits_at_last_paren(comm):
    line = stat_line(77, comm, state="R", ppid=2, flags=0x4000, priority=5, policy=1, blkio_ticks=9)
    st = parse_stat(line)
    assert st.comm == comm
    assert st.state == "R" and st.ppid == 2 and st.flags == 0x4000
    assert (st.rt_priority, st.policy, st.blkio_ticks) == (5, "fifo", 9)


def test_parse_stat_real_line():
    line = (
        "3766 (CPU 1/KVM) S 1 3758 3758 0 -1 138412224 6 0 0 0 0 0 0 0 -2 0 6 0 8125 439754752 10291 "
        "18446744073709551615 94093822111744 94093827972181 140731679869280 0 0 0 2147219511 4096 16963 1 0 0 "
        "-1 1 1 1 0 0 0 94093831084280 94093836288432 94094306459648 140731679877799 140731679878721 "
        "140731679878721 140731679879132 0\n"
    )
    st = parse_stat(line)
    assert st.comm == "CPU 1/KVM"
    assert (st.rt_priority, st.policy, st.starttime) == (1, "fifo", 8125)


def test_parse_stat_rejects_garbage():
    with pytest.raises(ValueError):
        parse_stat("123 no parens here")


# -- classification ------------------------------------------------------------


@pytest.mark.parametrize(
    "name,tid,flags,expected",
    [
        ("CPU 0/KVM", 11, 0, ("vcpu", 0, "vcpu")),
        ("CPU 17/KVM", 11, 0, ("vcpu", 17, "vcpu")),
        ("CPU 3/TCG", 11, 0, ("vcpu", 3, "vcpu")),
        ("ALL CPUs/TCG", 11, 0, ("vcpu", None, "vcpu")),
        ("CPU 0/KVMX", 11, 0, ("emulator", None, "other")),
        ("CPU x/KVM", 11, 0, ("emulator", None, "other")),
        ("qemu-system-x86", 10, 0, ("emulator", None, "main")),
        ("anything", 10, 0, ("emulator", None, "main")),
        ("call_rcu", 11, 0, ("emulator", None, "call_rcu")),
        ("IO mon_iothread", 11, 0, ("emulator", None, "iothread")),
        ("IO iothread1", 11, 0, ("emulator", None, "iothread")),
        ("worker", 11, 0, ("emulator", None, "worker")),
        ("vnc_worker", 11, 0, ("emulator", None, "other")),
        ("vhost-10", 12, PF_USER_WORKER, ("kthread", None, "vhost")),
        ("vhost-10", 12, 0, ("kthread", None, "vhost")),  # name fallback
        ("vhost-", 12, 0, ("emulator", None, "other")),
        ("kvm-nx-lpage-re", 12, PF_USER_WORKER, ("kthread", None, "kvm-nx-lpage")),
        ("kvm-nx-lpage-re", 12, 0, ("kthread", None, "kvm-nx-lpage")),
        ("iou-wrk-10", 12, 0x10, ("kthread", None, "other")),  # io_uring worker (PF_IO_WORKER)
        ("odd-worker", 12, PF_USER_WORKER, ("kthread", None, "other")),
        ("kvm-pit/10", 12, PF_KTHREAD, ("kthread", None, "kvm-pit")),
    ],
)
def test_classify(name, tid, flags, expected):
    assert classify(name, tid, 10, flags) == expected


# -- observe_process ------------------------------------------------------------


def test_observe_real_guest_shape(tree):
    add_rtx1(tree, vm_lck_kb=0, memlock=(8 << 20, 8 << 20))
    tree.add_kthread(QPID + 8, f"kvm-pit/{QPID}", cpus="0-1")
    o = observe_process(QPID, tree.kernel())

    assert o.pid == QPID
    by_name = {t.name: t for t in o.threads}
    assert set(by_name) == {"qemu-system-x86", "call_rcu", "IO mon_iothread", "CPU 0/KVM", "CPU 1/KVM",
                            "kvm-nx-lpage-re"}
    assert [t.tid for t in o.threads] == sorted(t.tid for t in o.threads)

    main = by_name["qemu-system-x86"]
    assert (main.role, main.kind, main.vcpu) == ("emulator", "main", None)
    assert main.cpus == frozenset({0})
    assert main.cgroup_cpu == f"{CG}/emulator"
    assert (main.run_time_ns, main.run_delay_ns, main.timeslices) == (71664852, 13652234, 1121)
    assert (main.voluntary_ctxt_switches, main.nonvoluntary_ctxt_switches) == (760, 361)
    assert (main.policy, main.priority) == ("other", 0)

    v1 = by_name["CPU 1/KVM"]
    assert (v1.role, v1.kind, v1.vcpu, v1.policy, v1.priority) == ("vcpu", "vcpu", 1, "fifo", 1)
    assert v1.realtime and not main.realtime
    assert v1.cpus == frozenset({1})
    assert v1.cgroup_cpu == f"{CG}/vcpu1"

    nx = by_name["kvm-nx-lpage-re"]
    assert (nx.role, nx.kind) == ("kthread", "kvm-nx-lpage")
    assert nx.cgroup_cpu == f"{CG}/vcpu0"

    assert sorted(o.vcpu_threads) == [0, 1]
    assert o.vcpu_threads[0].name == "CPU 0/KVM"
    assert {t.kind for t in o.emulator_threads} == {"main", "call_rcu", "iothread"}

    assert len(o.kthreads) == 1
    pit = o.kthreads[0]
    assert (pit.tid, pit.name, pit.role, pit.kind, pit.vcpu) == (QPID + 8, f"kvm-pit/{QPID}", "kthread", "kvm-pit", None)
    assert pit.cpus == frozenset({0, 1})
    assert {t.kind for t in o.vm_kthreads} == {"kvm-nx-lpage", "kvm-pit"}
    assert o.thread(QPID + 8) is pit and o.thread(QPID + 7) is v1 and o.thread(1) is None

    assert o.memory == ProcessMemory(vm_lck_bytes=0, vm_rss_bytes=41168 * 1024, hugetlb_bytes=0,
                                     memlock_soft=8 << 20, memlock_hard=8 << 20, swap_bytes=0)


def test_observe_without_kthread_scan(tree):
    add_rtx1(tree)
    tree.add_kthread(QPID + 8, f"kvm-pit/{QPID}")
    assert observe_process(QPID, tree.kernel(), with_kthreads=False).kthreads == ()


def test_all_policies_and_unknown(tree):
    threads = [FakeThread(101 + i, f"t{i}", policy=p, priority=prio)
               for i, (p, prio) in enumerate([("other", 0), ("fifo", 50), ("rr", 3), ("batch", 0), ("idle", 0),
                                               ("deadline", 0), (7, 0), (4, 0)])]
    tree.add_process(100, "p", ["qemu"], threads)
    got = {t.name: (t.policy, t.priority) for t in observe_process(100, tree.kernel()).threads}
    assert got == {"p": ("other", 0), "t0": ("other", 0), "t1": ("fifo", 50), "t2": ("rr", 3), "t3": ("batch", 0),
                   "t4": ("idle", 0), "t5": ("deadline", 0), "t6": ("ext", 0), "t7": ("unknown-4", 0)}


def test_comm_with_spaces_and_parens(tree):
    tree.add_process(200, "weird) (name", ["qemu"], [
        FakeThread(201, "CPU 2/KVM"),
        FakeThread(202, ") S 1 2 3 ("),
        FakeThread(203, "a (b) c", policy="rr", priority=7),
    ])
    o = observe_process(200, tree.kernel())
    by_tid = {t.tid: t for t in o.threads}
    assert by_tid[200].name == "weird) (name" and by_tid[200].kind == "main"
    assert by_tid[201].vcpu == 2
    assert by_tid[202].name == ") S 1 2 3 (" and by_tid[202].kind == "other"
    assert (by_tid[203].name, by_tid[203].policy, by_tid[203].priority) == ("a (b) c", "rr", 7)


def test_tcg_vcpus(tree):
    tree.add_process(300, "qemu-system-x86", qemu_cmdline(), [
        FakeThread(301, "CPU 0/TCG"), FakeThread(302, "CPU 1/TCG"), FakeThread(303, "worker"),
    ])
    o = observe_process(300, tree.kernel())
    assert {i: t.tid for i, t in o.vcpu_threads.items()} == {0: 301, 1: 302}
    assert [t.kind for t in o.emulator_threads] == ["main", "worker"]


def test_single_threaded_tcg_has_no_indexed_vcpu(tree):
    tree.add_process(310, "qemu-system-x86", qemu_cmdline(), [FakeThread(311, "ALL CPUs/TCG")])
    o = observe_process(310, tree.kernel())
    assert o.vcpu_threads == {}
    assert [t.role for t in o.threads] == ["emulator", "vcpu"]


def test_vhost_task_thread_inside_qemu(tree):
    add_rtx1(tree, extra=[FakeThread(QPID + 20, f"vhost-{QPID}", flags=0x84040C0, cpus="0-1")])
    o = observe_process(QPID, tree.kernel())
    vh = o.thread(QPID + 20)
    assert (vh.role, vh.kind) == ("kthread", "vhost")
    assert vh not in o.emulator_threads and vh in o.vm_kthreads


def test_no_setaffinity_flag(tree):
    tree.add_process(320, "p", ["qemu"], [FakeThread(321, "iou-wrk-320", flags=0x04000010)])
    t = observe_process(320, tree.kernel()).thread(321)
    assert t.no_setaffinity and t.role == "kthread"
    assert not observe_process(320, tree.kernel()).thread(320).no_setaffinity


# -- cgroups, schedstat, missing bits ----------------------------------------------


def test_cgroup_v2_only(tree):
    tree.add_process(400, "p", ["qemu"], [FakeThread(401, "CPU 0/KVM", cgroup_text="0::/machine.slice/x/vcpu0\n")])
    assert observe_process(400, tree.kernel()).thread(401).cgroup_cpu == "/machine.slice/x/vcpu0"


def test_cgroup_v1_combined_controllers(tree):
    text = "5:cpuset:/a\n3:cpu,cpuacct:/machine/g/vcpu0\n1:name=systemd:/\n0::/\n"
    tree.add_process(410, "p", ["qemu"], [FakeThread(411, "CPU 0/KVM", cgroup_text=text)])
    assert observe_process(410, tree.kernel()).thread(411).cgroup_cpu == "/machine/g/vcpu0"


def test_cpuacct_alone_is_not_cpu(tree):
    text = "2:cpuacct:/wrong\n0::/right\n"
    tree.add_process(420, "p", ["qemu"], [FakeThread(421, "x", cgroup_text=text)])
    assert observe_process(420, tree.kernel()).thread(421).cgroup_cpu == "/right"


def test_missing_cgroup_and_schedstat_are_unknown(tree):
    tree.add_process(430, "p", ["qemu"], [FakeThread(431, "CPU 0/KVM", cgroup=None, schedstat=None)])
    t = observe_process(430, tree.kernel()).thread(431)
    assert t.cgroup_cpu is None
    assert (t.run_time_ns, t.run_delay_ns, t.timeslices) == (None, None, None)


def test_blkio_ticks(tree):
    tree.add_process(440, "p", ["qemu"], [FakeThread(441, "CPU 0/KVM", blkio_ticks=42)])
    assert observe_process(440, tree.kernel()).thread(441).delayacct_blkio_ticks == 42


def test_empty_affinity_list(tree):
    tree.add_process(450, "p", ["qemu"], [FakeThread(451, "x", cpus="")])
    assert observe_process(450, tree.kernel()).thread(451).cpus == frozenset()


def test_short_stat_of_old_kernel(tree):
    tree.add_process(460, "p", ["qemu"])
    line = stat_line(460, "p").split()
    tree.path(460, "task", 460, "stat").write_text(" ".join(line[:39]) + "\n")  # up to field 39
    t = observe_process(460, tree.kernel()).thread(460)
    assert (t.policy, t.priority, t.delayacct_blkio_ticks) == ("other", 0, 0)


# -- races --------------------------------------------------------------------


@pytest.mark.parametrize("keep_dir", [True, False])
def test_vanished_thread_is_skipped(tree, keep_dir):
    add_rtx1(tree)
    tree.vanish_thread(QPID, QPID + 7, keep_dir=keep_dir)
    o = observe_process(QPID, tree.kernel())
    assert sorted(o.vcpu_threads) == [0]
    assert len(o.threads) == 5


@pytest.mark.parametrize("exc", [FileNotFoundError, ProcessLookupError])
@pytest.mark.parametrize("file", ["stat", "status", "cgroup", "schedstat"])
def test_thread_vanishing_mid_read_is_skipped(tree, monkeypatch, exc, file):
    add_rtx1(tree)
    victim = f"/task/{QPID + 6}/{file}"
    real = fs.read_text

    def racy(path):
        if path.endswith(victim):
            # the kernel removes the whole task when it exits
            tree.vanish_thread(QPID, QPID + 6, keep_dir=False)
            raise exc(2 if exc is FileNotFoundError else 3, "gone")
        return real(path)

    monkeypatch.setattr(fs, "read_text", racy)
    o = observe_process(QPID, tree.kernel())
    assert sorted(o.vcpu_threads) == [1]


def test_missing_process_raises_process_gone(tree):
    with pytest.raises(ProcessGone) as e:
        observe_process(999, tree.kernel())
    assert e.value.pid == 999 and "999" in str(e.value)


def test_process_vanishing_mid_read_raises_process_gone(tree, monkeypatch):
    add_rtx1(tree)
    real = fs.read_text

    def racy(path):
        if path.endswith(f"{QPID}/limits"):
            raise ProcessLookupError(3, "No such process")
        return real(path)

    monkeypatch.setattr(fs, "read_text", racy)
    with pytest.raises(ProcessGone):
        observe_process(QPID, tree.kernel())


def test_process_gone_when_task_dir_vanishes(tree):
    add_rtx1(tree)
    import shutil

    shutil.rmtree(tree.path(QPID, "task"))
    with pytest.raises(ProcessGone):
        observe_process(QPID, tree.kernel())


def test_zombie_process_is_gone(tree):
    tree.add_process(500, "qemu-system-x86", [], state="Z")
    with pytest.raises(ProcessGone, match="zombie"):
        observe_process(500, tree.kernel())


def test_zombie_leader_with_live_threads_is_observed(tree):
    tree.add_process(510, "qemu-system-x86", qemu_cmdline(), [FakeThread(511, "CPU 0/KVM")], state="Z")
    assert sorted(observe_process(510, tree.kernel()).vcpu_threads) == [0]


def test_thread_id_is_not_a_process(tree):
    add_rtx1(tree)
    # /proc/<tid> exists for every thread (hidden from listings)
    tree.add_process(QPID + 6, "CPU 0/KVM", qemu_cmdline())
    status = tree.path(QPID + 6, "status")
    status.write_text(status.read_text().replace(f"Tgid:\t{QPID + 6}", f"Tgid:\t{QPID}"))
    with pytest.raises(ValueError, match="thread of process"):
        observe_process(QPID + 6, tree.kernel())


# -- memory -----------------------------------------------------------------------


def test_memory_values(tree):
    tree.add_process(600, "qemu", ["qemu"], vm_lck_kb=4096, vm_rss_kb=8192, hugetlb_kb=65536, swap_kb=12,
                     memlock=(None, None))
    m = observe_process(600, tree.kernel()).memory
    assert m == ProcessMemory(vm_lck_bytes=4 << 20, vm_rss_bytes=8 << 20, hugetlb_bytes=64 << 20,
                              memlock_soft=None, memlock_hard=None, swap_bytes=12 * 1024)


def test_memory_soft_below_hard(tree):
    tree.add_process(610, "qemu", ["qemu"], memlock=(65536, None))
    m = observe_process(610, tree.kernel()).memory
    assert (m.memlock_soft, m.memlock_hard) == (65536, None)


def test_memory_of_kernel_thread_is_zero(tree):
    tree.add_kthread(620, "kvm-pit/1")
    m = tree.kernel().tasks.memory(620)
    assert (m.vm_lck_bytes, m.vm_rss_bytes, m.hugetlb_bytes, m.swap_bytes) == (0, 0, 0, 0)


# -- per-VM kthreads ------------------------------------------------------------------


def test_find_kvm_pit_picks_only_this_vms_kthreads(tree):
    add_rtx1(tree)
    tree.add_kthread(50, f"kvm-pit/{QPID}", cpus="1", policy="fifo", priority=2)
    tree.add_kthread(51, "kvm-pit/4000")  # another VM
    tree.add_kthread(52, f"vhost-{QPID}")  # pre-6.4 vhost kthread of this VM
    tree.add_kthread(53, f"vhost-{QPID + 5}")  # owned by another thread of this VM
    tree.add_kthread(54, "vhost-4000")  # another VM
    tree.add_kthread(55, f"kvm-pit/{QPID}0")  # prefix, not equal
    tree.add_process(56, f"kvm-pit/{QPID}", ["/bin/fake"])  # a user process faking the name
    tree.add_kthread(57, "kworker/0:1")
    got = {t.tid: t for t in find_vm_kthreads(tree.kernel(), QPID, tids=[QPID, QPID + 5])}
    assert sorted(got) == [50, 52, 53]
    assert (got[50].kind, got[50].policy, got[50].priority, got[50].cpus) == ("kvm-pit", "fifo", 2, frozenset({1}))
    assert got[52].kind == got[53].kind == "vhost"
    assert all(t.role == "kthread" for t in got.values())
    # without the tid list only the main thread counts as vhost owner
    assert sorted(t.tid for t in find_vm_kthreads(tree.kernel(), QPID)) == [50, 52]
    # observe_process passes the QEMU's tids
    assert sorted(t.tid for t in observe_process(QPID, tree.kernel()).kthreads) == [50, 52, 53]


def test_find_kvm_pit_by_ppid_without_flag(tree):
    tree.add_kthread(60, "kvm-pit/700", flags=0)
    assert [t.tid for t in find_vm_kthreads(tree.kernel(), 700)] == [60]


def test_find_kvm_pit_vanishing(tree, monkeypatch):
    tree.add_kthread(60, "kvm-pit/700")
    tree.add_kthread(61, "kvm-pit/700")
    real = fs.read_text

    def racy(path):
        if "/61/" in path and path.endswith("status"):
            raise FileNotFoundError(2, "gone")
        return real(path)

    monkeypatch.setattr(fs, "read_text", racy)
    assert [t.tid for t in find_vm_kthreads(tree.kernel(), 700)] == [60]


def test_find_kvm_pit_no_proc(tmp_path):
    assert find_vm_kthreads(Kernel(str(tmp_path / "nope")), 1) == []


# -- finding QEMU --------------------------------------------------------------------


def test_parse_qemu_name():
    assert parse_qemu_name(["q", "-name", "guest=rtx1,debug-threads=on"]) == "rtx1"
    assert parse_qemu_name(["q", "-name", "debug-threads=on,guest=a"]) == "a"
    assert parse_qemu_name(["q", "-name", "guest=a,,b,debug-threads=on"]) == "a,b"
    assert parse_qemu_name(["q", "-name", "plain"]) == "plain"
    assert parse_qemu_name(["q", "-name", "plain,process=x"]) == "plain"
    assert parse_qemu_name(["q", "-name", "process=x"]) is None
    assert parse_qemu_name(["q", "-name"]) is None
    assert parse_qemu_name(["q"]) is None


def test_find_by_pidfile(tree):
    add_rtx1(tree)
    tree.write_pidfile("rtx1", QPID)
    assert tree.kernel().qemu.find("rtx1", UUID) == QPID
    assert tree.kernel().qemu.find("rtx1", None) == QPID


def test_find_by_pidfile_uuid_alone_matches(tree):
    add_rtx1(tree, name="renamed")
    tree.write_pidfile("rtx1", QPID)
    assert tree.kernel().qemu.find("rtx1", UUID.upper()) == QPID
    assert tree.kernel().qemu.find("rtx1", None) is None


def test_stale_pidfile_with_reused_pid_falls_back_to_uuid_scan(tree):
    tree.add_process(QPID, "bash", ["/bin/bash", "-name", "guest=rtx1", "-uuid", UUID])  # reused pid, not QEMU
    add_rtx1(tree, pid=5000)
    tree.write_pidfile("rtx1", QPID)
    assert tree.kernel().qemu.find("rtx1", UUID) == 5000
    assert tree.kernel().qemu.find("rtx1", None) is None


def test_pidfile_of_other_guest_is_rejected(tree):
    add_rtx1(tree, name="other", uuid="11111111-2222-3333-4444-555555555555")
    tree.write_pidfile("rtx1", QPID)
    assert tree.kernel().qemu.find("rtx1", UUID) is None


@pytest.mark.parametrize("content", ["", "garbage", "-1", "99999"])
def test_bad_or_dead_pidfile_falls_back(tree, content):
    add_rtx1(tree, pid=5000)
    tree.write_pidfile("rtx1", content)
    assert tree.kernel().qemu.find("rtx1", UUID) == 5000
    assert tree.kernel().qemu.find("rtx1", None) is None


def test_no_pidfile_no_process(tree):
    assert tree.kernel().qemu.find("rtx1", UUID) is None


def test_qemu_recognised_by_comm_when_argv0_is_a_wrapper(tree):
    tree.add_process(700, "qemu-system-x86", ["/usr/local/bin/vm-wrapper", "-uuid", UUID])
    tree.write_pidfile("x", 700)
    assert tree.kernel().qemu.find("x", UUID) == 700


def test_list_qemu_processes(tree):
    add_rtx1(tree)
    add_rtx1(tree, pid=5000, name="b", uuid="AAAAAAAA-0000-0000-0000-000000000001")
    tree.add_process(800, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "noid"])  # no -uuid
    tree.add_process(801, "bash", ["/bin/bash", "-c", "x", "-uuid", UUID])  # not QEMU
    tree.add_process(802, "qemu-kvm", ["/usr/libexec/qemu-kvm", "-uuid", "u-802"])
    tree.add_process(803, "kvm", ["/usr/bin/kvm", "-uuid", "u-803"])
    tree.add_kthread(804, "kvm-pit/3759")
    tree.add_process(805, "qemu-img", ["qemu-img", "-uuid"])  # -uuid without a value
    assert tree.kernel().qemu.all() == {
        QPID: UUID, 5000: "aaaaaaaa-0000-0000-0000-000000000001", 802: "u-802", 803: "u-803",
    }


def test_list_qemu_processes_skips_vanished(tree, monkeypatch):
    add_rtx1(tree)
    add_rtx1(tree, pid=5000, uuid="u2")
    real = fs.read_bytes

    def racy(path):
        if path.endswith("/5000/cmdline"):
            raise ProcessLookupError(3, "gone")
        return real(path)

    monkeypatch.setattr(fs, "read_bytes", racy)
    assert tree.kernel().qemu.all() == {QPID: UUID}
