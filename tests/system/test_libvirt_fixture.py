"""The system tier stands on a real libvirtd and real QEMU guests."""

import os
import re

import pytest

pytestmark = pytest.mark.system


def test_guest_has_vcpu_and_emulator_threads(guest_factory):
    g = guest_factory(vcpus=2)
    names = g.thread_names()
    vcpus = sorted(int(m.group(1)) for n in names.values() if (m := re.fullmatch(r"CPU (\d+)/(KVM|TCG)", n)))
    assert vcpus == [0, 1]
    # Everything else in the process is an emulator thread; QEMU always has its main loop.
    others = [n for n in names.values() if not re.fullmatch(r"CPU \d+/(KVM|TCG)", n)]
    assert "qemu-system-x86" in others
    # libvirt applied the <vcpupin> of the template: vCPU 1 on CPU 1, vCPU 0 on CPU 0.
    tids = g.vcpu_tids()
    assert os.sched_getaffinity(tids[1]) == {1}
    assert os.sched_getaffinity(tids[0]) == {0}


def test_kvm_guest_has_kvm_pit_kthread(guest_factory):
    from tests.guests import kvm_usable

    if not kvm_usable():
        pytest.skip("TCG guest: no in-kernel PIT")
    g = guest_factory(vcpus=1, cputune="<vcpupin vcpu='0' cpuset='0'/>", metadata="")
    assert g.kvm_pit_tid() is not None
