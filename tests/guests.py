"""Domain XML for test guests.

Guests are diskless: without a boot device they sit in their firmware, which
is enough to have real vCPU, emulator and kvm-pit threads (docs/design.md,
"Testing against the real thing").  On this machine /dev/kvm is PVM, whose
CPU model has no svm/vmx and lacks cx16; disabling both keeps libvirt's CPU
check and QEMU happy on hardware KVM too.
"""

from __future__ import annotations

import os

RT_NS = "urn:rtagent:realtime:1"


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def domain_xml(
    name: str,
    *,
    vcpus: int = 2,
    memory_mib: int = 64,
    cputune: str = "",
    metadata: str = "",
    memory_backing: str = "",
    iothreads: int = 0,
    virt_type: str | None = None,
    extra_devices: str = "",
) -> str:
    virt_type = virt_type or ("kvm" if kvm_usable() else "qemu")
    cpu = (
        "<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model>"
        "<feature policy='disable' name='svm'/><feature policy='disable' name='cx16'/></cpu>"
    )
    return f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  {memory_backing}
  <vcpu placement='static'>{vcpus}</vcpu>
  {f"<iothreads>{iothreads}</iothreads>" if iothreads else ""}
  <cputune>{cputune}</cputune>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  {cpu}
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='pty'/>
    <console type='pty'/>
    {extra_devices}
  </devices>
</domain>"""


def rt_metadata(mask: str | None = "^0", priority: int | None = 1, policy: str | None = "fifo", enabled: str | None = None) -> str:
    attrs = []
    if mask is not None:
        attrs.append(f"mask='{mask}'")
    if priority is not None:
        attrs.append(f"priority='{priority}'")
    if policy is not None:
        attrs.append(f"policy='{policy}'")
    if enabled is not None:
        attrs.append(f"enabled='{enabled}'")
    return f"<rt:realtime xmlns:rt='{RT_NS}' {' '.join(attrs)}/>"


def pinned_cputune(pins: dict[int, str], emulator: str | None = "0", extra: str = "") -> str:
    """``<vcpupin>`` for each vCPU, ``<emulatorpin>``, plus extra elements."""
    parts = [f"<vcpupin vcpu='{v}' cpuset='{c}'/>" for v, c in sorted(pins.items())]
    if emulator is not None:
        parts.append(f"<emulatorpin cpuset='{emulator}'/>")
    parts.append(extra)
    return "".join(parts)


def rt_guest_xml(name: str, **kw) -> str:
    """The canonical test guest: 2 vCPUs, vCPU 0 on CPU 0 (housekeeping),
    realtime vCPU 1 on CPU 1, emulator on CPU 0, intent in rtagent metadata."""
    kw.setdefault("cputune", pinned_cputune({0: "0", 1: "1"}))
    kw.setdefault("metadata", rt_metadata())
    return domain_xml(name, **kw)
