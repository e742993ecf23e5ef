"""The kernel floor over fixture trees: one stat parser, one task reader, one
errno policy, cgroup v1 and v2 layouts, IRQs, workqueues, CPUs, QEMU lookup."""

from __future__ import annotations

import errno
import os

import pytest

from rtagent.kernel import Kernel, fs, outcome_of
from rtagent.kernel import cgroups as cg
from rtagent.kernel.errors import describe, refusal_reason
from rtagent.kernel.irqbalance import detect_irqbalance
from rtagent.kernel.tasks import PF_KTHREAD, parse_stat, policy_name
from rtagent.vocab import Outcome, Policy
from tests.procfixture import FakeThread, ProcTree, stat_line

pytestmark = pytest.mark.unit

UUID = "5b2d4f7c-27cb-4f6e-8f57-5b53a0e7c1a1"


@pytest.fixture
def tree(tmp_path):
    return ProcTree(tmp_path)


# -- stat / status --------------------------------------------------------------


def test_stat_comm_with_spaces_and_parentheses():
    st = parse_stat(stat_line(77, "a) (b c)", ppid=5, flags=PF_KTHREAD, priority=3, policy=1))
    assert (st.pid, st.comm, st.ppid, st.policy, st.rt_priority) == (77, "a) (b c)", 5, Policy.FIFO, 3)
    assert st.kthread and st.starttime == 8118


def test_stat_malformed_and_short_lines_raise():
    with pytest.raises(ValueError):
        parse_stat("12 no parens here")
    with pytest.raises(ValueError):
        parse_stat("12 (x) S 1 2")


def test_one_spelling_for_unknown_policies():
    assert policy_name(1) == "fifo" and policy_name(7) == "ext"
    assert policy_name(4) == "unknown-4"


def test_task_read_over_fixture(tree):
    tree.add_process(4242, "qemu-system-x86", ["qemu", "-uuid", UUID],
                     threads=[FakeThread(4245, "CPU 0/KVM", cpus="1", policy="fifo", priority=2,
                                         cgroup="/machine/qemu-1-g.libvirt-qemu/vcpu0")])
    k = tree.kernel()
    t = k.tasks.read(4242, 4245)
    assert t.stat.comm == "CPU 0/KVM" and t.cpus == {1}
    assert t.sched.policy == "fifo" and t.sched.priority == 2 and t.sched.realtime
    assert t.cgroup_cpu == "/machine/qemu-1-g.libvirt-qemu/vcpu0"
    assert t.schedstat == (1000, 20, 3)
    assert t.status_int("nonvoluntary_ctxt_switches") == 1
    # Over a fixture tree the drift question reads the tree, not the host.
    assert not k.live
    assert k.tasks.sched(4245, 4242) == t.sched


def test_missing_schedstat_is_unknown_but_a_gone_task_raises(tree):
    tree.add_process(10, "qemu", threads=[FakeThread(11, "worker", schedstat=None)])
    k = tree.kernel()
    assert k.tasks.read(10, 11).schedstat is None
    tree.vanish_thread(10, 11, keep_dir=False)
    with pytest.raises(FileNotFoundError):
        k.tasks.read(10, 11)


def test_kthreads_scan_skips_user_processes_and_pid_1(tree):
    tree.add_process(1, "init")
    tree.add_process(300, "bash")
    tree.add_kthread(20, "ksoftirqd/1", cpus="1")
    tree.add_kthread(21, "rcuc/1", cpus="1", policy="fifo", priority=1)
    got = {t.pid: t for t in tree.kernel().tasks.kthreads()}
    assert sorted(got) == [20, 21]
    assert got[21].sched.policy == "fifo" and got[20].cpus == {1}


def test_memory_facts(tree):
    tree.add_process(50, "qemu", vm_lck_kb=1024, hugetlb_kb=2048, memlock=(None, 8 << 20))
    mem = tree.kernel().tasks.memory(50)
    assert (mem.vm_lck_bytes, mem.hugetlb_bytes) == (1 << 20, 2 << 20)
    assert mem.memlock_soft is None and mem.memlock_hard == 8 << 20


def test_live_sched_uses_the_syscalls():
    k = Kernel()
    assert k.live
    s = k.tasks.sched(os.getpid())
    assert s.cpus == frozenset(os.sched_getaffinity(0))
    assert s.policy == policy_name(os.sched_getscheduler(0))


# -- errno policy -----------------------------------------------------------------


@pytest.mark.parametrize("err,want", [
    (ProcessLookupError(errno.ESRCH, "x"), Outcome.VANISHED),
    (FileNotFoundError(errno.ENOENT, "x"), Outcome.VANISHED),
    (OSError(errno.EIO, "x"), Outcome.REFUSED),
    (OSError(errno.EINVAL, "x"), Outcome.REFUSED),
    (PermissionError(errno.EPERM, "x"), Outcome.REFUSED),
    (OSError(errno.ENOSPC, "x"), Outcome.ERROR),
])
def test_one_errno_policy(err, want):
    assert outcome_of(err) is want


def test_error_descriptions():
    assert describe(OSError(errno.EINVAL, "Invalid argument")) == "EINVAL: Invalid argument"
    assert "managed IRQ" in refusal_reason(OSError(errno.EIO, "Input/output error"))


# -- cgroups ------------------------------------------------------------------------

V1_VCPU = "/machine/qemu-1-g.libvirt-qemu/vcpu0"
V2_VCPU = "/machine.slice/machine-qemu\\x2d1\\x2dg.scope/libvirt/vcpu3"


def test_libvirt_layouts_v1_and_v2():
    assert cg.vcpu_of(V1_VCPU) == 0 and cg.vcpu_of(V2_VCPU) == 3
    assert cg.vcpu_of("/machine/qemu-1-g.libvirt-qemu/emulator") is None and cg.vcpu_of(None) is None
    assert cg.guest_group(V1_VCPU) == "/machine/qemu-1-g.libvirt-qemu"
    assert cg.guest_group(V2_VCPU) == "/machine.slice/machine-qemu\\x2d1\\x2dg.scope"
    assert cg.guests_parent(V1_VCPU) == "/machine"
    assert cg.guests_parent(V2_VCPU) == "/machine.slice"
    assert cg.ancestors(V1_VCPU) == ["/machine", "/machine/qemu-1-g.libvirt-qemu"]


def test_v2_task_cgroup_is_the_unified_path(tree):
    text = f"0::{V2_VCPU}\n"
    tree.add_process(60, "qemu", threads=[FakeThread(61, "CPU 3/KVM", cgroup_text=text)])
    assert tree.kernel().tasks.read(60, 61).cgroup_cpu == V2_VCPU


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_rt_tree_is_the_one_answer(tree, version):
    k = tree.kernel()
    assert k.cgroups.rt_tree() is None
    mount = tree.mount_cgroups(version, rt=False)
    assert k.cgroups.rt_tree() is None  # mounted, but no RT group scheduling
    (mount / "cpu.rt_runtime_us").write_text("950000\n")
    rt = k.cgroups.rt_tree()
    assert rt is not None and rt.version == version and rt.mount == str(mount)
    assert k.cgroups.unified() == (version == "v2")


@pytest.mark.parametrize("version,vcpu", [("v1", V1_VCPU), ("v2", V2_VCPU)])
def test_rt_budget_files(tree, version, vcpu):
    mount = tree.mount_cgroups(version)
    guest = cg.guest_group(vcpu)
    for group in cg.ancestors(vcpu) + [vcpu]:
        tree.add_cgroup(mount, group, runtime=0, version=version)
    tree.add_cgroup(mount, cg.parent(vcpu) + "/emulator", runtime=0, tasks="42\n", version=version)
    rt = tree.kernel().cgroups.rt_tree()
    assert rt.runtime("/") == 950000 and rt.period(vcpu) == 1000000
    rt.set_runtime(vcpu, 5000)
    assert rt.runtime(vcpu) == 5000
    assert vcpu in rt.children(cg.parent(vcpu))
    assert rt.guest_groups(cg.guests_parent(vcpu)) == [guest]
    rows = {g: (busy, runtime) for g, busy, runtime in rt.subtree(guest)}
    assert rows[vcpu] == (False, 5000)
    assert rows[cg.parent(vcpu) + "/emulator"] == (True, 0)
    with pytest.raises(FileNotFoundError):
        rt.runtime(vcpu + "-gone")


def test_join_groups_of_writes_every_v1_controller(tree):
    mount = tree.mount_cgroups("v1")
    emulator = "/machine/qemu-1-g.libvirt-qemu/emulator"
    tree.add_cgroup(mount, emulator)
    tree.add_process(70, "qemu", cgroup=emulator)
    tree.kernel().cgroups.join_groups_of(70, 75)
    assert (mount / emulator.lstrip("/") / "tasks").read_text() == "75"


# -- IRQs, workqueues, CPUs ---------------------------------------------------------------


def _irq(tree, n, cpus, *actions):
    d = tree.path("irq", n)
    d.mkdir(parents=True)
    (d / "smp_affinity_list").write_text(cpus + "\n")
    for a in actions:
        (d / a).mkdir()


def test_irqs(tree):
    _irq(tree, 24, "0-1", "virtio0-input.0")
    _irq(tree, 3, "1")
    tree.path("irq", "default_smp_affinity").write_text("3\n")
    k = tree.kernel()
    irqs = k.irqs.all()
    assert [i.irq for i in irqs] == [3, 24]
    assert irqs[1].label == "irq 24 (virtio0-input.0)" and irqs[1].affinity == {0, 1}
    assert k.irqs.default_affinity() == ("3", frozenset({0, 1}))
    k.irqs.set_affinity(24, frozenset({0}))
    assert tree.path("irq", "24", "smp_affinity_list").read_text() == "0\n"
    k.irqs.set_default_affinity(frozenset({0}))
    assert tree.path("irq", "default_smp_affinity").read_text() == "1\n"
    with pytest.raises(FileNotFoundError):
        k.irqs.set_affinity(99, frozenset({0}))


def test_workqueues(tree):
    k = tree.kernel()
    base = os.path.join(k.sys_root, "devices/virtual/workqueue")
    os.makedirs(os.path.join(base, "writeback"))
    os.makedirs(os.path.join(base, "percpu"))
    fs_write = lambda p, t, mode=0o644: (open(p, "w").write(t), os.chmod(p, mode))  # noqa: E731
    fs_write(os.path.join(base, "cpumask"), "3\n")
    fs_write(os.path.join(base, "writeback", "cpumask"), "3\n")
    fs_write(os.path.join(base, "percpu", "cpumask"), "3\n", 0o444)
    masks = k.workqueues.all()
    assert [m.name for m in masks] == ["", "writeback"]
    assert masks[0].cpus == {0, 1} and masks[1].label == "workqueue writeback cpumask"
    assert k.workqueues.name_of(masks[1].path) == "writeback" and k.workqueues.name_of(masks[0].path) == ""
    with pytest.raises(ValueError):
        k.workqueues.name_of("/etc/shadow")
    k.workqueues.set_mask_text("writeback", "1")
    assert k.workqueues.read("writeback").cpus == {0}


def test_cpus_and_knobs(tree):
    k = tree.kernel()
    cpu = os.path.join(k.sys_root, "devices/system/cpu")
    os.makedirs(cpu)
    for name, text in (("online", "0-3\n"), ("isolated", "2\n"), ("nohz_full", "(null)\n")):
        with open(os.path.join(cpu, name), "w") as fh:
            fh.write(text)
    os.makedirs(tree.path("sys", "kernel"))
    tree.path("sys", "kernel", "sched_rt_runtime_us").write_text("-1\n")
    tree.path("cmdline").write_text("BOOT_IMAGE=/vmlinuz isolcpus=2\n")
    assert k.cpus.online() == {0, 1, 2, 3} and k.cpus.isolated() == {2} and k.cpus.nohz_full() == frozenset()
    assert k.cpus.kernel_isolated() == {2}
    assert k.cpus.sysctl("kernel.sched_rt_runtime_us") == -1 and k.cpus.sysctl("kernel.nope") is None
    assert "isolcpus=2" in k.cpus.cmdline()
    assert k.cpus.hugepage_pools() is None and k.cpus.thp_enabled() is None


# -- QEMU processes, per-VM kthreads, irqbalance ------------------------------------------


def test_qemu_lookup_by_pidfile_and_uuid(tree):
    tree.add_process(4242, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "guest=g1,debug-threads=on",
                                                "-uuid", UUID])
    tree.add_process(4300, "bash", ["bash"])
    k = tree.kernel()
    tree.write_pidfile("g1", 4300)  # stale: a reused pid
    assert k.qemu.find("g1", UUID) == 4242
    assert k.qemu.find("g1", None) is None
    tree.write_pidfile("g1", 4242)
    assert k.qemu.find("g1", None) == 4242
    assert k.qemu.all() == {4242: UUID}


def test_kthreads_matching_only_kernel_threads(tree):
    tree.add_process(4242, "qemu", ["qemu"], threads=[FakeThread(4243, "CPU 0/KVM")])
    tree.add_kthread(500, "kvm-pit/4242")
    tree.add_kthread(501, "kvm-pit/9999")
    tree.add_kthread(502, "vhost-4243")
    tree.add_process(503, "vhost-4242", ["fake"])  # a user process with a vhost-like name
    def kind_of(comm):
        return {"kvm-pit/4242": "kvm-pit", "vhost-4243": "vhost", "vhost-4242": "vhost"}.get(comm)

    assert sorted(tree.kernel().qemu.kthreads_matching(kind_of)) == [(500, "kvm-pit"), (502, "vhost")]


def test_irqbalance_detection(tree):
    k = tree.kernel()
    assert not detect_irqbalance(k).running
    tree.add_process(900, "irqbalance", ["/usr/sbin/irqbalance"])
    tree.path(900, "environ").write_bytes(b"PATH=/bin\0IRQBALANCE_BANNED_CPULIST=1\0")
    info = detect_irqbalance(k)
    assert info.running and info.pids == (900,) and info.bans(frozenset({1}))
    assert info.source == "/proc/900/environ"


def test_a_racy_read_is_one_monkeypatch(tree, monkeypatch):
    tree.add_process(10, "qemu", threads=[FakeThread(11, "worker")])
    real = fs.read_text

    def racy(path):
        if path.endswith("/11/status"):
            raise ProcessLookupError(errno.ESRCH, "gone")
        return real(path)

    monkeypatch.setattr(fs, "read_text", racy)
    with pytest.raises(ProcessLookupError):
        tree.kernel().tasks.read(10, 11)


def test_pick_status_gives_the_values_the_full_parse_gives():
    from rtagent.kernel.tasks import TASK_STATUS_KEYS, parse_status, pick_status

    real = open(f"/proc/self/task/{os.getpid()}/status").read()
    for text in (real, "Cpus_allowed_list:\t0-1\nName:\tx\n", "Name:\tx\nvoluntary_ctxt_switches:  7",
                 "Name:\tx\n"):
        full = parse_status(text)
        assert pick_status(text) == {k: full[k] for k in TASK_STATUS_KEYS if k in full}
    # A key must start its line: "nonvoluntary_..." is not "voluntary_...".
    assert pick_status("nonvoluntary_ctxt_switches:\t3\n") == {"nonvoluntary_ctxt_switches": "3"}
