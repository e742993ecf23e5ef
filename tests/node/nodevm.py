"""Build and boot the node tier's VM: a real Debian 12 compute node.

Debian's cloud kernel (cgroup v2, no RT group scheduling) boots under TCG with
systemd as PID 1; the freshly built .deb and the scenarios
(``inside/scenarios.py``) come on a read-only payload disk; the node runs
them once at boot (``rtagent-node-runner.service``), writes every line to its
second serial port (a file here) and powers off.  The root disk is opened
with ``snapshot=on``: the cached image is never modified.

Run by hand (root):  python3 -m tests.node.nodevm [SCENARIO ...]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSIDE = Path(__file__).resolve().parent / "inside"
# CPU 0 housekeeping, CPU 1 realtime, as on a tuned compute node.
CMDLINE = ("root=/dev/vda rw console=ttyS0 isolcpus=managed_irq,domain,1 nohz_full=1 rcu_nocbs=1 "
           "irqaffinity=0 systemd.unified_cgroup_hierarchy=1 systemd.show_status=0 quiet")
BOOT_TIMEOUT_S = 1800
LINE = re.compile(r"^SCENARIO (\S+) (PASS|FAIL) ([\d.]+)s ?(.*)$")


@dataclass
class Scenario:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class NodeRun:
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    closing: str = ""
    output: str = ""
    console_tail: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def _run(cmd: list[str], what: str, timeout: float) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout.strip().splitlines()[-1]


def build_deb(outdir: Path) -> Path:
    return Path(_run(["bash", str(REPO / "scripts/build-deb.sh"), str(outdir)], "scripts/build-deb.sh", 600))


def build_image() -> Path:
    return Path(_run(["bash", str(REPO / "scripts/node/build-image.sh")], "scripts/node/build-image.sh", 1800))


def make_payload(deb: Path, work: Path) -> Path:
    d = work / "payload"
    d.mkdir()
    shutil.copy(deb, d)
    for f in INSIDE.iterdir():
        if f.is_file():
            shutil.copy(f, d)
    shutil.copy(REPO / "docs/security.md", d)  # the documented exposure score
    img = work / "payload.img"
    _run(["mkfs.ext4", "-q", "-F", "-d", str(d), str(img), "64M"], "mkfs.ext4 (payload)", 120)
    return img


def boot(image: Path, payload: Path, work: Path, timeout: float = BOOT_TIMEOUT_S) -> tuple[str, str]:
    """Boot the node until it powers itself off; returns (results, console)."""
    results, console = work / "results.log", work / "console.log"
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-smp", "2", "-m", "3072", "-cpu", "max",
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"), "-append", CMDLINE,
        "-drive", f"file={image / 'rootfs.img'},format=raw,if=virtio,snapshot=on",
        "-drive", f"file={payload},format=raw,if=virtio,readonly=on",
        "-nic", "none", "-serial", f"file:{console}", "-serial", f"file:{results}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n(node killed after {timeout:.0f}s)"
    text = results.read_text(errors="replace") if results.exists() else ""
    cons = console.read_text(errors="replace") if console.exists() else ""
    if proc.returncode not in (0, -9) or not text:
        cons += f"\nqemu exited {proc.returncode}: {out[-2000:]}"
    return text, cons


def parse(text: str) -> dict[str, Scenario]:
    out = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            out[m.group(1)] = Scenario(m.group(1), m.group(2) == "PASS", float(m.group(3)), m.group(4))
    return out


def run_node(only: list[str] | None = None, keep: Path | None = None) -> NodeRun:
    run = NodeRun()
    with tempfile.TemporaryDirectory(prefix="rtagent-node-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        deb = build_deb(work / "dist")
        run.timings["deb_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        image = build_image()
        run.timings["image_s"] = time.monotonic() - t0
        payload = make_payload(deb, work)
        if only:
            (work / "payload" / "run.sh").write_text(
                "#!/bin/bash\ncd \"$(dirname \"$0\")\"\nexec /usr/bin/python3 -u scenarios.py "
                + " ".join(only) + "\n")
            payload.unlink()
            _run(["mkfs.ext4", "-q", "-F", "-d", str(work / "payload"), str(payload), "64M"], "mkfs.ext4", 120)
        t0 = time.monotonic()
        run.output, console = boot(image, payload, work)
        run.timings["boot_and_scenarios_s"] = time.monotonic() - t0
        run.console_tail = "\n".join(console.splitlines()[-40:])
    run.scenarios = parse(run.output)
    closing = [line for line in run.output.splitlines() if line.startswith("node: ")]
    run.closing = closing[-1] if closing else ""
    return run


def main(argv: list[str]) -> int:
    run = run_node(argv or None, keep=Path("/tmp/rtagent-node-last"))
    print(run.output)
    if not run.scenarios:
        print(run.console_tail)
    print({k: round(v, 1) for k, v in run.timings.items()})
    return 0 if run.scenarios and all(s.ok for s in run.scenarios.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
