"""The fleet examples are valid for the real Prometheus: the example
config and every complete configuration block in docs/fleet.md pass
`promtool check config` (agent-mode blocks with --agent)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "prometheus" / "prometheus-fleet.example.yml"
FLEET_DOC = ROOT / "docs" / "fleet.md"


def check(path: Path, *flags: str) -> None:
    res = subprocess.run(["promtool", "check", "config", *flags, str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, f"{path}: {res.stdout}{res.stderr}"


def test_example_config():
    check(EXAMPLE)


def test_example_scrapes_job_rtagent_with_node_names():
    text = EXAMPLE.read_text()
    assert re.search(r"^\s*- job_name: rtagent\s*$", text, re.M)
    assert "target_label: instance" in text and '"instance":' in text


def complete_blocks() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", FLEET_DOC.read_text(), re.S)
    return [b for b in blocks if re.match(r"(global|scrape_configs):", b)]


def test_fleet_doc_blocks(tmp_path):
    blocks = complete_blocks()
    assert len(blocks) >= 3  # file_sd, federation, agent mode
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.yml"
        path.write_text(block)
        check(path, *(["--agent"] if "remote_write:" in block else []))
