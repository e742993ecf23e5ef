"""Build (and cache) the B1 latency guest.

Kernel: Debian's ``linux-source-6.1`` tarball, ``make tinyconfig`` plus
``rtprobe.config``, the patches ``*.patch`` in this directory, and
``rtprobe.c`` built into ``kernel/``.  The uncompressed ``vmlinux`` (PVH ELF
note) is booted directly by QEMU (libvirt ``<os><kernel>``).

Initramfs (``--mode cyclictest``, hardware KVM only): busybox (static) as
``/bin/sh`` and friends, Debian's ``cyclictest`` with the shared libraries it
links, and ``cyclictest-init.sh`` as ``/init``.

Everything lands in ``bench/.cache/`` (gitignored) under a key that hashes the
inputs, so editing the probe or the fragment rebuilds, and nothing else does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".cache"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = HERE / "rtprobe.config"
PROBE = HERE / "rtprobe.c"
INIT_SCRIPT = HERE / "cyclictest-init.sh"
BUILD_VERSION = "1"  # bump when the kernel recipe below changes
INITRAMFS_VERSION = "2"  # bump when the initramfs recipe changes

# Options the fragment must really produce (olddefconfig silently drops
# options whose dependencies are missing).
REQUIRED = {
    "CONFIG_SMP": "y", "CONFIG_PVH": "y", "CONFIG_KVM_GUEST": "y", "CONFIG_PARAVIRT_CLOCK": "y",
    "CONFIG_HIGH_RES_TIMERS": "y", "CONFIG_PREEMPT": "y", "CONFIG_SERIAL_8250_CONSOLE": "y",
    "CONFIG_ACPI": None, "CONFIG_PCI": None, "CONFIG_MODULES": None, "CONFIG_JUMP_LABEL": None,
    "CONFIG_FTRACE": None, "CONFIG_KPROBES": None, "CONFIG_BLK_DEV_INITRD": "y", "CONFIG_BINFMT_ELF": "y",
}


def _patches() -> list[Path]:
    return sorted(HERE.glob("*.patch"))


def kernel_key() -> str:
    h = hashlib.sha256(BUILD_VERSION.encode())
    for p in [FRAGMENT, PROBE, *_patches()]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(TARBALL.name.encode())
    return h.hexdigest()[:16]


def kernel_path() -> Path:
    return CACHE / f"kernel-{kernel_key()}" / "vmlinux"


def _run(cmd: list[str], cwd: Path, log) -> None:
    log(f"  $ {' '.join(cmd)}")
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}")


def _check_config(config: Path) -> None:
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        m = re.match(r"(CONFIG_\w+)=(.*)", line)
        if m:
            have[m.group(1)] = m.group(2)
    bad = [f"{k}={'n' if v is None else v} (got {have.get(k, 'n')})" for k, v in REQUIRED.items()
           if have.get(k) != v]
    if bad:
        raise RuntimeError("guest kernel config lacks: " + ", ".join(bad))


def build_kernel(log=print, jobs: int | None = None) -> Path:
    """The cached vmlinux, building it first if needed (~2-5 min on 2 CPUs)."""
    out = kernel_path()
    if out.exists():
        return out
    if not TARBALL.exists():
        raise RuntimeError(f"{TARBALL} missing: run scripts/setup-bench.sh (apt-get install linux-source-6.1)")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kbuild-", dir=CACHE))
    try:
        log(f"building guest kernel {out.parent.name} in {work} (cached afterwards)")
        src = work / "linux"
        src.mkdir()
        _run(["tar", "xJf", str(TARBALL), "--strip-components=1", "-C", str(src)], work, log)
        for patch in _patches():
            _run(["patch", "-p1", "-i", str(patch)], src, log)
        shutil.copy(PROBE, src / "kernel" / "rtprobe.c")
        with open(src / "kernel" / "Makefile", "a") as f:
            f.write("\nobj-y += rtprobe.o\n")
        _run(["make", "tinyconfig"], src, log)
        _run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)], src, log)
        _run(["make", "olddefconfig"], src, log)
        _check_config(src / ".config")
        _run(["make", f"-j{jobs or (os.cpu_count() or 1) + 1}", "vmlinux"], src, log)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / ".config", out.parent / "config")
        tmp = out.with_suffix(".tmp")
        shutil.copy(src / "vmlinux", tmp)
        tmp.rename(out)
        log(f"guest kernel: {out} ({out.stat().st_size // 1024} KiB)")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------
# userspace cyclictest initramfs (hardware KVM only: PVM cannot run guest user space)

BUSYBOX = Path("/bin/busybox")
CYCLICTEST = Path("/usr/bin/cyclictest")
APPLETS = ["sh", "mount", "mkdir", "cat", "awk", "sed", "grep", "sleep", "echo", "poweroff", "sort", "head",
           "tail", "wc", "tr"]


def _shared_libs(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], stdout=subprocess.PIPE, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m:
            libs.append(Path(m.group(1)))
    return libs


def initramfs_path() -> Path:
    h = hashlib.sha256(INITRAMFS_VERSION.encode())
    for p in (INIT_SCRIPT, BUSYBOX, CYCLICTEST):
        h.update(p.read_bytes())
    return CACHE / f"initramfs-{h.hexdigest()[:16]}.cpio.gz"


def build_initramfs(log=print) -> Path:
    out = initramfs_path()
    if out.exists():
        return out
    for p in (BUSYBOX, CYCLICTEST):
        if not p.exists():
            raise RuntimeError(f"{p} missing: run scripts/setup-bench.sh (busybox-static, rt-tests)")
    if b"statically linked" not in subprocess.run(["file", "-L", str(BUSYBOX)], stdout=subprocess.PIPE).stdout \
            and _shared_libs(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is not static: install busybox-static")
    CACHE.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="initramfs-", dir=CACHE))
    try:
        for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "usr/bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # the kernel opens it for init's stdio (needs root)
            os.mknod(root / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        for a in APPLETS:
            (root / "bin" / a).symlink_to("busybox")
        shutil.copy(CYCLICTEST, root / "usr/bin/cyclictest")
        for lib in _shared_libs(CYCLICTEST):
            dest = root / lib.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lib, dest)
        shutil.copy(INIT_SCRIPT, root / "init")
        (root / "init").chmod(0o755)
        files = subprocess.run(["find", ".", "-print0"], cwd=root, stdout=subprocess.PIPE, check=True).stdout
        cpio = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                              stdout=subprocess.PIPE, check=True).stdout
        gz = subprocess.run(["gzip", "-9"], input=cpio, stdout=subprocess.PIPE, check=True).stdout
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(gz)
        tmp.rename(out)
        log(f"cyclictest initramfs: {out} ({len(gz) // 1024} KiB)")
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    import sys

    print(build_kernel())
    if "--initramfs" in sys.argv:
        print(build_initramfs())
