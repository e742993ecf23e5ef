"""observe_process and verify_memory against real processes and threads.

The helper's threads only sleep; the one thread made SCHED_FIFO is pinned
first (to CPU 0, the housekeeping CPU) and put back to SCHED_OTHER before the
helper is stopped.
"""

from __future__ import annotations

import os
import uuid as uuidlib

import pytest

from rtagent.kernel import Kernel
from rtagent.model import MemorySpec
from rtagent.tuning.guest.memory import verify_memory
from rtagent.tuning.guest.observe import (
    ProcessGone,
    observe_process,
    read_thread,
)

pytestmark = pytest.mark.threads

KERNEL = Kernel()

MiB = 1 << 20

POLICY = {
    os.SCHED_OTHER: "other",
    os.SCHED_FIFO: "fifo",
    os.SCHED_RR: "rr",
    os.SCHED_BATCH: "batch",
    os.SCHED_IDLE: "idle",
}


def kernel_view(tid: int) -> tuple[str, int, frozenset[int]]:
    return (
        POLICY[os.sched_getscheduler(tid)],
        os.sched_getparam(tid).sched_priority,
        frozenset(os.sched_getaffinity(tid)),
    )


def test_classification_of_qemu_like_threads(qemu_like):
    h = qemu_like("--vcpus", "3", "--thread", "worker")
    o = observe_process(h.pid, KERNEL)

    assert o.pid == h.pid
    assert {i: t.tid for i, t in o.vcpu_threads.items()} == h.vcpu_tids == {
        0: h.threads["CPU 0/KVM"], 1: h.threads["CPU 1/KVM"], 2: h.threads["CPU 2/KVM"]}
    kinds = {t.tid: t.kind for t in o.emulator_threads}
    assert kinds[h.pid] == "main"
    assert kinds[h.threads["call_rcu"]] == "call_rcu"
    assert kinds[h.threads["IO mon_iothread"]] == "iothread"
    assert kinds[h.threads["worker"]] == "worker"
    # every thread the helper reported is there, and nothing is a kthread
    assert {t.tid for t in o.threads} >= set(h.all_tids)
    assert all(t.role != "kthread" for t in o.threads)
    assert o.kthreads == ()


def test_tcg_names(qemu_like):
    h = qemu_like("--tcg", "--vcpus", "2", "--no-default-threads")
    o = observe_process(h.pid, KERNEL)
    assert sorted(o.vcpu_threads) == [0, 1]
    assert o.vcpu_threads[1].name == "CPU 1/TCG"


def test_policy_affinity_and_stats_match_the_kernel(qemu_like):
    h = qemu_like()
    o = observe_process(h.pid, KERNEL)
    for t in o.threads:
        assert (t.policy, t.priority, t.cpus) == kernel_view(t.tid), t.name
        assert t.run_time_ns is not None and t.timeslices is not None and t.timeslices >= 1
        assert t.voluntary_ctxt_switches >= 0
    with open(f"/proc/{h.pid}/cgroup") as f:
        own = [line.split(":", 2) for line in f.read().splitlines()]
    cpu_path = next((p for _, c, p in own if "cpu" in c.split(",")), None)
    expected = cpu_path if cpu_path is not None else next(p for h_, c, p in own if h_ == "0")
    assert o.vcpu_threads[0].cgroup_cpu == expected


def test_fifo_thread_reads_back(qemu_like):
    h = qemu_like()
    tid = h.threads["CPU 1/KVM"]
    # affinity first, then policy: a FIFO thread never lands on a realtime CPU by accident
    os.sched_setaffinity(tid, {0})
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError as e:  # pragma: no cover - host not prepared
        pytest.fail(f"SCHED_FIFO refused ({e}): RT group scheduling gives this cgroup no rt_runtime_us")
    try:
        o = observe_process(h.pid, KERNEL)
        t = o.vcpu_threads[1]
        assert (t.policy, t.priority, t.cpus) == ("fifo", 1, frozenset({0}))
        assert t.realtime
        assert (t.policy, t.priority, t.cpus) == kernel_view(tid)
        # the others are untouched
        assert o.vcpu_threads[0].policy == "other"
        # a single-thread read agrees
        assert read_thread(KERNEL, h.pid, tid).policy == "fifo"
    finally:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def test_rr_and_batch_read_back(qemu_like):
    h = qemu_like("--vcpus", "1")
    rr, batch = h.threads["CPU 0/KVM"], h.threads["call_rcu"]
    os.sched_setaffinity(rr, {0})
    os.sched_setscheduler(rr, os.SCHED_RR, os.sched_param(2))
    try:
        os.sched_setscheduler(batch, os.SCHED_BATCH, os.sched_param(0))
        o = observe_process(h.pid, KERNEL)
        assert (o.thread(rr).policy, o.thread(rr).priority) == ("rr", 2)
        assert (o.thread(batch).policy, o.thread(batch).priority) == ("batch", 0)
    finally:
        os.sched_setscheduler(rr, os.SCHED_OTHER, os.sched_param(0))


def test_memlock_verified_on_a_locking_helper(qemu_like):
    h = qemu_like("--mlock", str(4 * MiB))
    assert h.mlocked == 4 * MiB
    mem = observe_process(h.pid, KERNEL).memory
    assert mem.vm_lck_bytes >= 4 * MiB
    assert mem.memlock_hard is None or mem.memlock_hard >= 4 * MiB
    vs = verify_memory(MemorySpec(size_bytes=4 * MiB, locked=True), mem)
    assert [v.check for v in vs] == ["hugepages"]  # locked, but not hugepage-backed


def test_memlock_violation_without_mlock(qemu_like):
    h = qemu_like()
    mem = observe_process(h.pid, KERNEL).memory
    assert mem.vm_lck_bytes == 0
    vs = verify_memory(MemorySpec(size_bytes=4 * MiB, locked=True), mem)
    memlock = [v for v in vs if v.check == "memlock"]
    assert len(memlock) == 1
    assert memlock[0].detail.startswith("VmLck 0 B < guest memory 4 MiB (RLIMIT_MEMLOCK ")


def test_find_qemu_pid_and_list(qemu_like, tmp_path):
    name = f"rtt-observe-{os.getpid()}"
    uuid = str(uuidlib.uuid4())
    h = qemu_like("--comm", "qemu-system-x86", "-name", f"guest={name},debug-threads=on", "-uuid", uuid)
    assert h.main == "qemu-system-x86"
    (tmp_path / f"{name}.pid").write_text(str(h.pid))
    k = Kernel(run=str(tmp_path))
    assert k.qemu.find(name, uuid) == h.pid
    assert k.qemu.find(name, None) == h.pid
    # no pid file: found by the -uuid scan
    assert Kernel(run=str(tmp_path / "none")).qemu.find(name, uuid) == h.pid
    assert KERNEL.qemu.all()[h.pid] == uuid
    # the main thread was renamed but is still the main thread
    assert observe_process(h.pid, KERNEL).thread(h.pid).kind == "main"


def test_process_gone_after_exit(qemu_like):
    h = qemu_like("--no-default-threads", "--vcpus", "1")
    h.stop()
    with pytest.raises(ProcessGone):
        observe_process(h.pid, KERNEL)


# -- the full check's marks (tuning/guest/marks.py) ------------------------------------


def test_marks_of_a_live_process_match_its_observation_until_it_changes(qemu_like):
    """Live: the marks' affinity is a syscall, the observation's is status'
    Cpus_allowed_list — they must agree, or no guest would ever stand.  Then
    each change made by a means that sends no libvirt event (a re-pin,
    prlimit) makes the marks differ."""
    import resource

    from rtagent.tuning.guest.marks import marks_of, read_marks

    h = qemu_like("--vcpus", "2")
    assert read_marks(KERNEL, h.pid, (), live=True) == marks_of(observe_process(h.pid, KERNEL))
    rcu = h.threads["call_rcu"]

    os.sched_setaffinity(rcu, {0, 1})  # a sleeping SCHED_OTHER thread: harmless on CPU 1
    before = read_marks(KERNEL, h.pid, (), live=True)
    os.sched_setaffinity(rcu, {0})  # re-pinned behind our back
    pinned = read_marks(KERNEL, h.pid, (), live=True)
    assert pinned != before and pinned == marks_of(observe_process(h.pid, KERNEL))

    # (A rename is the thread's own prctl: only a unit test over a tree can make one.)
    soft, hard = resource.prlimit(h.pid, resource.RLIMIT_MEMLOCK)
    resource.prlimit(h.pid, resource.RLIMIT_MEMLOCK, (min(soft, hard, 1 << 20) // 2, hard))
    limited = read_marks(KERNEL, h.pid, (), live=True)
    assert limited != pinned and limited == marks_of(observe_process(h.pid, KERNEL))

    h.stop()
    assert read_marks(KERNEL, h.pid, (), live=True) is None


CPU_V1 = "/sys/fs/cgroup/cpu"


@pytest.mark.skipif(not os.path.exists(f"{CPU_V1}/tasks"), reason="no cgroup v1 cpu hierarchy")
def test_marks_through_real_group_task_lists_see_a_real_cgroup_move(qemu_like):
    """The full check's cgroup read from the groups' ``tasks`` files
    (kernel/members.py) over real cgroups: equal to the per-thread read
    while nothing moved, and a real move between groups (no event) is seen.
    The groups are this test's own; the thread is put back and they are removed."""
    from rtagent.kernel.members import GroupMembers
    from rtagent.tuning.guest.marks import marks_of, read_marks
    from tests.conftest import unique_name

    h = qemu_like("--vcpus", "1")
    rcu = h.threads["call_rcu"]
    with open(f"/proc/{h.pid}/task/{rcu}/cgroup") as f:
        home = next(ln.split(":", 2)[2] for ln in f.read().splitlines() if "cpu" in ln.split(":")[1].split(","))
    top = f"/{unique_name('rtf')}"
    a, b = f"{top}/a", f"{top}/b"
    for g in (top, a, b):
        os.mkdir(f"{CPU_V1}{g}")
    try:
        with open(f"{CPU_V1}{a}/tasks", "w") as f:
            f.write(str(rcu))
        with open(f"{CPU_V1}{b}/tasks", "w") as f:
            f.write(str(h.pid))  # b is one of the guest's groups too
        observed = observe_process(h.pid, KERNEL)
        members = GroupMembers(KERNEL)
        groups = members.read({t.cgroup_cpu for t in observed.threads})
        assert (groups.get(rcu), groups.get(h.pid)) == (a, b)
        assert read_marks(KERNEL, h.pid, (), live=True, groups=groups) == marks_of(observed)
        with open(f"{CPU_V1}{b}/tasks", "w") as f:
            f.write(str(rcu))  # moved behind our back: cgroupfs sends no event
        groups = members.read({t.cgroup_cpu for t in observed.threads})
        assert groups.get(rcu) == b  # found through b's task list, not its own file
        moved = read_marks(KERNEL, h.pid, (), live=True, groups=groups)
        assert moved != marks_of(observed)
        assert moved == marks_of(observe_process(h.pid, KERNEL))
    finally:
        for tid in (rcu, h.pid):
            with open(f"{CPU_V1}{home.rstrip('/')}/tasks", "w") as f:
                f.write(str(tid))
        for g in (a, b, top):
            os.rmdir(f"{CPU_V1}{g}")


def test_kept_marks_of_a_live_process_match_and_see_each_change(qemu_like):
    """kernel/kept.py against a real process: the kept read's marks are the
    by-path read's, a re-pin and a prlimit (no event either) are seen, the
    limit comes from prlimit (no ``limits`` file opened), and a stopped
    process has none."""
    import resource

    from rtagent.kernel.kept import KeptTasks
    from rtagent.tuning.guest.marks import read_marks, read_marks_kept

    h = qemu_like("--vcpus", "2")
    kept = KeptTasks(KERNEL, 64)  # room for every file it opens: each one read stays kept
    rcu = h.threads["call_rcu"]
    os.sched_setaffinity(rcu, {0, 1})  # a sleeping SCHED_OTHER thread: harmless on CPU 1
    expected = read_marks(KERNEL, h.pid, (), live=True)
    assert read_marks_kept(kept, "g", expected, live=True) == expected
    assert kept.open_fds == len(expected.threads) + 1  # each stat and the status: no limits file
    os.sched_setaffinity(rcu, {0})  # re-pinned behind our back
    assert read_marks_kept(kept, "g", expected, live=True) != expected
    os.sched_setaffinity(rcu, {0, 1})
    assert read_marks_kept(kept, "g", expected, live=True) == expected
    soft, hard = resource.prlimit(h.pid, resource.RLIMIT_MEMLOCK)
    resource.prlimit(h.pid, resource.RLIMIT_MEMLOCK, (min(soft, hard, 1 << 20) // 2, hard))
    assert read_marks_kept(kept, "g", expected, live=True) != expected
    h.stop()
    assert read_marks_kept(kept, "g", expected, live=True) is None


def test_a_kept_descriptor_names_the_task_not_the_number():
    """Once its thread has exited, a kept stat descriptor reads ESRCH (a
    reused TID can never pass for the old thread)."""
    import threading
    import time

    from rtagent.kernel.errors import GONE
    from rtagent.kernel.kept import KeptTasks

    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    kept = KeptTasks(KERNEL, 8)
    facts = kept.task("me", os.getpid(), t.native_id, True)
    assert facts.cpus == frozenset(os.sched_getaffinity(t.native_id)) and kept.open_fds == 1
    done.set()
    t.join()  # Python's side is done; the kernel reaps the task a moment later
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            kept.task("me", os.getpid(), t.native_id, True)
        except GONE:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the exited thread's kept descriptor still reads")
    assert kept.open_fds == 0  # the failed descriptor closed: the next read opens the path afresh
