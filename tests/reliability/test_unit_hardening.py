"""Unit-tier checks of the hardening: the systemd unit's exposure score and
the sd_notify sender that must never block the daemon loop."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from rtagent.sdnotify import Notifier

pytestmark = [pytest.mark.unit, pytest.mark.reliability]

ROOT = Path(__file__).resolve().parent.parent.parent
UNIT = ROOT / "systemd" / "rtagent.service"
SECURITY_MD = ROOT / "docs" / "security.md"


def _recorded_score() -> float:
    m = re.search(r"exposure score:\s*\*\*([0-9.]+)\*\*", SECURITY_MD.read_text())
    assert m, "docs/security.md records no exposure score"
    return float(m.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_score_not_above_the_recorded_one():
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    assert score <= _recorded_score(), f"exposure {score} above the {_recorded_score()} in docs/security.md"


def test_unit_keeps_what_the_daemon_needs():
    text = UNIT.read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.MULTILINE).group(1).split()
    assert set(caps) == {"CAP_SYS_NICE", "CAP_NET_ADMIN"}
    families = re.search(r"^RestrictAddressFamilies=(.*)$", text, re.MULTILINE).group(1).split()
    assert {"AF_UNIX", "AF_NETLINK", "AF_INET"} <= set(families)
    rw = re.search(r"^ReadWritePaths=(.*)$", text, re.MULTILINE).group(1).split()
    assert {"/sys/fs/cgroup", "/proc/irq"} <= set(rw)
    assert "RestrictRealtime=yes" not in text  # it sets SCHED_FIFO on guest threads


def test_sd_notify_never_blocks_on_a_full_receiver(tmp_path):
    path = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)  # never read: its queue fills up
    n = Notifier({"NOTIFY_SOCKET": path})
    t0 = time.monotonic()
    sent = [n.status(f"x{i}") for i in range(500)]
    assert time.monotonic() - t0 < 2
    assert any(sent) and not all(sent)
    n.close()
    rx.close()
