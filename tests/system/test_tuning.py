"""The tuning engine on real guests, verified through the kernel.

Every assertion about a thread's state reads the kernel (sched_getscheduler,
sched_getaffinity, /proc), never rtagent's own report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import libvirt
import pytest

from rtagent.cli import main
from tests import guests

pytestmark = pytest.mark.system

HUGE = "<memoryBacking><hugepages/></memoryBacking>"


@pytest.fixture
def rt_config(tmp_path):
    """CPU 0 housekeeping, CPU 1 realtime (docs/design.md, "Testing against the real thing")."""
    p = tmp_path / "rtagent.toml"
    # Only this run's guests compete for CPU 1 (a realtime pCPU has one owner
    # host-wide; other runs on a shared host pin their guests there too).
    p.write_text(f'[host]\nrealtime_cpus = "1"\n[daemon]\nguest_names = ["rtt-{os.getpid()}-*"]\n'
                 '[metrics]\nenabled = false\n')
    return str(p)


def _sched(tid: int) -> tuple[int, int]:
    return os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority


def _run_json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main(argv + ["--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_apply_tunes_guest_and_check_reports_only_memlock(guest_factory, rt_config, capsys):
    g = guest_factory(memory_backing=HUGE)
    vcpu = g.vcpu_tids()
    # libvirt pinned, but nothing is realtime after start.
    assert _sched(vcpu[1]) == (os.SCHED_OTHER, 0)

    code, before = _run_json(capsys, ["check", "--config", rt_config, g.name])
    assert code == 1
    checks = {v["check"] for v in before["domains"][0]["violations"]}
    assert "vcpu_policy" in checks and "memlock" in checks

    code = main(["apply", "--config", rt_config, g.name])
    out = capsys.readouterr().out
    assert "CPU 1/KVM" in out and "fifo:1" in out
    assert code == 1  # still non-compliant: memlock cannot be fixed from outside

    # Kernel truth: realtime vCPU FIFO 1 on CPU 1, the other vCPU ordinary on CPU 0.
    assert _sched(vcpu[1]) == (os.SCHED_FIFO, 1)
    assert os.sched_getaffinity(vcpu[1]) == {1}
    assert _sched(vcpu[0])[0] == os.SCHED_OTHER
    assert os.sched_getaffinity(vcpu[0]) == {0}
    # Every non-vCPU thread of QEMU on the emulator set (CPU 0), none realtime.
    for tid, name in g.thread_names().items():
        if tid in vcpu.values():
            continue
        assert os.sched_getaffinity(tid) == {0}, name
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER, name
    if guests.kvm_usable():
        pit = g.kvm_pit_tid()
        assert pit is not None
        assert _sched(pit) == (os.SCHED_FIFO, 2)  # one above the vCPUs (KubeVirt)
        assert os.sched_getaffinity(pit) == {0}  # the first non-realtime vCPU's CPU

    code, after = _run_json(capsys, ["check", "--config", rt_config, g.name])
    dom = after["domains"][0]
    assert [v["check"] for v in dom["violations"]] == ["memlock"]
    assert dom["realtime"] and dom["valid"] and not dom["compliant"]
    row = next(t for t in dom["threads"] if t["vcpu"] == 1)
    assert row["policy"] == "fifo" and row["cpus"] == "1" and row["ok"]

    # A second apply changes nothing.
    code, again = _run_json(capsys, ["apply", "--config", rt_config, g.name])
    assert again["domains"][0]["changes"] == []


def test_two_realtime_guests_on_one_pcpu_one_gets_fifo_and_its_budget(guest_factory, rt_config, capsys):
    """Both want CPU 1: the one whose QEMU started first owns it (FIFO, RT
    group budget granted), the other is not made realtime and says why."""
    a = guest_factory(memory_backing=HUGE)
    b = guest_factory(memory_backing=HUGE)
    assert main(["apply", "--config", rt_config, a.name, b.name]) == 1
    capsys.readouterr()
    assert _sched(a.vcpu_tids()[1]) == (os.SCHED_FIFO, 1), a.name
    assert _sched(b.vcpu_tids()[1]) == (os.SCHED_OTHER, 0), b.name
    code, out = _run_json(capsys, ["check", "--config", rt_config, b.name])
    assert code == 1 and [c["owner"] for c in out["domains"][0]["conflicts"]] == [a.name]
    # Budgets: the realtime vCPU cgroup non-zero, every parent >= sum of children.
    root = Path("/sys/fs/cgroup/cpu")
    if (root / "cpu.rt_runtime_us").exists():
        cg = Path(f"/proc/{a.vcpu_tids()[1]}/cgroup").read_text()
        path = next(line.split(":", 2)[2] for line in cg.splitlines() if line.split(":")[1] == "cpu")
        d = root / path.lstrip("/")
        assert int((d / "cpu.rt_runtime_us").read_text()) > 0
        while d != root:
            kids = sum(int((k / "cpu.rt_runtime_us").read_text()) for k in d.iterdir()
                       if k.is_dir() and (k / "cpu.rt_runtime_us").exists())
            assert int((d / "cpu.rt_runtime_us").read_text()) >= kids
            d = d.parent


def test_apply_with_invalid_plan_changes_nothing(guest_factory, rt_config, capsys):
    # Realtime vCPU 1 shares pCPU 1 with the emulator threads: invalid.
    g = guest_factory(cputune=guests.pinned_cputune({0: "0", 1: "1"}, emulator="0-1"))
    before = {tid: (_sched(tid), os.sched_getaffinity(tid)) for tid in g.thread_names()}
    code = main(["apply", "--config", rt_config, g.name])
    err = capsys.readouterr().err
    assert code == 1
    assert f"domain '{g.name}'" in err and "emulator" in err
    after = {tid: (_sched(tid), os.sched_getaffinity(tid)) for tid in g.thread_names()}
    assert after == before


def test_dry_run_changes_nothing(guest_factory, rt_config, capsys):
    g = guest_factory()
    tid = g.vcpu_tids()[1]
    code = main(["apply", "--dry-run", "--config", rt_config, g.name])
    out = capsys.readouterr().out
    assert code == 1  # still non-compliant: nothing was changed
    assert "would change" in out
    assert _sched(tid) == (os.SCHED_OTHER, 0)


def test_hugepage_verifier_both_sides(guest_factory, rt_config, capsys):
    huge = guest_factory(memory_backing=HUGE)
    plain = guest_factory()
    _, data = _run_json(capsys, ["check", "--config", rt_config, huge.name, plain.name])
    by_name = {d["name"]: {v["check"] for v in d["violations"]} for d in data["domains"]}
    assert "hugepages" not in by_name[huge.name]
    assert "hugepages" in by_name[plain.name]
    mem = {d["name"]: d["memory"] for d in data["domains"]}
    assert mem[huge.name]["hugetlb_bytes"] >= 64 * 2**20
    assert mem[plain.name]["hugetlb_bytes"] == 0


def test_locked_guest_cannot_start_here_and_libvirt_reports_memlock(conn):
    """<locked/> needs RLIMIT_MEMLOCK >= guest RAM; the hard limit here is
    8 MiB, so libvirt refuses.  rtagent reports memlock on such hosts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY or hard >= 256 * 2**20:
        pytest.skip("memlock is not limited on this host")
    name = f"rtt-{os.getpid()}-locked"
    xml = guests.rt_guest_xml(name, memory_backing="<memoryBacking><locked/></memoryBacking>")
    with pytest.raises(libvirt.libvirtError) as exc:
        dom = conn.createXML(xml, 0)
        dom.destroy()
    assert "lock" in str(exc.value).lower() or "memory" in str(exc.value).lower()


def test_libvirt_vcpusched_fails_under_rt_group_scheduling(conn):
    """libvirt's own <vcpusched> puts the vCPU in a cgroup with
    cpu.rt_runtime_us 0 and fails: the reason rtagent's metadata exists."""
    if not Path("/sys/fs/cgroup/cpu/cpu.rt_runtime_us").exists():
        pytest.skip("no cgroup v1 RT group scheduling here")
    name = f"rtt-{os.getpid()}-vcpusched"
    xml = guests.domain_xml(name, cputune=guests.pinned_cputune(
        {0: "0", 1: "1"}, extra="<vcpusched vcpus='1' scheduler='fifo' priority='1'/>"))
    with pytest.raises(libvirt.libvirtError) as exc:
        dom = conn.createXML(xml, 0)
        dom.destroy()
    assert "scheduler" in str(exc.value).lower()


def test_plan_on_live_guest_xml(guest_factory, rt_config, capsys, tmp_path):
    g = guest_factory()
    xml = tmp_path / "live.xml"
    xml.write_text(g.xml())
    code = main(["plan", "--xml", str(xml), "--config", rt_config, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["domain"] == g.name and data["realtime"] and data["valid"] and data["source"] == "metadata"
    assert [v["vcpu"] for v in data["vcpus"] if v["realtime"]] == [1]
    assert data["emulator"]["cpus"] == "0"
