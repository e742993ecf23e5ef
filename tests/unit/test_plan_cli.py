"""``rtagent plan`` end to end through ``rtagent.cli.main`` (no host state)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from rtagent.cli import main

pytestmark = pytest.mark.unit

XML_DIR = Path(__file__).resolve().parent.parent / "data" / "xml"


def xml(name: str) -> str:
    return str(XML_DIR / name)


@pytest.fixture
def no_config(tmp_path: Path) -> str:
    """An empty config file: defaults, and never /etc/rtagent of the test host."""
    path = tmp_path / "rtagent.toml"
    path.write_text("")
    return str(path)


def plan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_seed_json(capsys, no_config) -> None:
    code, out, err = plan(capsys, "--config", no_config, "--xml", xml("nova_seed.xml"), "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["domain"] == "instance-00000003"
    assert data["realtime"] is True and data["valid"] is True and data["source"] == "vcpusched"
    assert data["errors"] == []
    assert data["vcpus"] == [
        {"vcpu": 0, "realtime": False, "policy": "other", "priority": 0, "cpus": "0"},
        {"vcpu": 1, "realtime": False, "policy": "other", "priority": 0, "cpus": "1"},
        {"vcpu": 2, "realtime": True, "policy": "fifo", "priority": 1, "cpus": "2"},
        {"vcpu": 3, "realtime": True, "policy": "fifo", "priority": 1, "cpus": "3"},
    ]
    assert data["emulator"]["cpus"] == "0-1"
    assert data["memory"]["size_bytes"] == 1073741824
    assert data["memory"]["locked"] is True and data["memory"]["hugepages"] is False
    assert data["memory"]["page_size_bytes"] is None
    assert len(data["warnings"]) == 1 and "hugepages" in data["warnings"][0]


def test_json_shape_keys(capsys, no_config) -> None:
    _, out, _ = plan(capsys, "--config", no_config, "--xml", xml("rt_metadata_valid.xml"), "--json")
    data = json.loads(out)
    assert {"domain", "realtime", "source", "valid", "errors", "warnings", "vcpus", "emulator",
            "memory"} <= data.keys()
    assert data["source"] == "metadata"
    assert data["memory"] == {"size_bytes": 64 << 20, "locked": True, "hugepages": True,
                              "page_size_bytes": 2 << 20, "nosharepages": False}
    assert data["iothreads"] == [{"iothread": 1, "cpus": "0"}]
    assert out.count("\n") == 1  # one JSON document on one line


def test_table_valid(capsys, no_config) -> None:
    code, out, err = plan(capsys, "--config", no_config, "--xml", xml("rt_metadata_valid.xml"))
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "domain rt1 (6f1c2a3e-0000-4000-8000-000000000002): realtime, intent from metadata, valid",
        "vcpu  realtime  policy  priority  cpus",
        "0     no        other   0         0",
        "1     yes       fifo    2         1",
        "emulator cpus: 0 (emulatorpin)",
        "iothreads: 1: 0",
        "memory: 64 MiB, locked yes, hugepages yes, page size 2 MiB, nosharepages no",
    ]


def test_table_invalid_exit_1(capsys, no_config) -> None:
    code, out, err = plan(capsys, "--config", no_config, "--xml", xml("rt_metadata_invalid.xml"))
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines[0].endswith("realtime, intent from metadata, INVALID")
    assert ("error: domain 'rt1': realtime vCPU 1 shares pCPU 1 with the emulator threads "
            "(a SCHED_FIFO thread starves a SCHED_OTHER sibling on one core)") in lines
    assert any(line.startswith("warning: domain 'rt1': guest RAM is not locked") for line in lines)
    # errors before warnings
    first_warning = next(i for i, line in enumerate(lines) if line.startswith("warning:"))
    assert all(i < first_warning for i, line in enumerate(lines) if line.startswith("error:"))


def test_json_invalid_exit_1(capsys, no_config) -> None:
    code, out, _ = plan(capsys, "--config", no_config, "--xml", xml("rt_metadata_invalid.xml"), "--json")
    data = json.loads(out)
    assert code == 1 and data["valid"] is False and data["errors"]


def test_not_realtime_exit_0(capsys, no_config) -> None:
    code, out, _ = plan(capsys, "--config", no_config, "--xml", xml("plain.xml"))
    assert code == 0
    assert out.splitlines()[0] == "domain plain (no uuid): not realtime, no realtime intent, valid"
    assert "0     no        other   0         2-3" in out
    assert "emulator cpus: 2-3 (nonrealtime-vcpus)" in out
    assert "memory: 2 GiB, locked no, hugepages no, nosharepages no" in out
    assert "warning:" not in out


def test_rule_from_config_by_flavor(capsys, tmp_path) -> None:
    cfg = tmp_path / "rtagent.toml"
    cfg.write_text('[[rule]]\nmatch_flavor = "rt.*"\nrealtime_mask = "^0"\npriority = 3\n')
    code, out, _ = plan(capsys, "--config", str(cfg), "--xml", xml("nova_flavor.xml"), "--json")
    data = json.loads(out)
    assert code == 0 and data["source"] == "rule" and data["flavor"] == "rt.small"
    assert [(v["vcpu"], v["realtime"], v["priority"]) for v in data["vcpus"]] == [
        (0, False, 0), (1, True, 3), (2, True, 3)]
    # Without the rule the same guest is not realtime.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    code, out, _ = plan(capsys, "--config", str(empty), "--xml", xml("nova_flavor.xml"), "--json")
    assert code == 0 and json.loads(out)["source"] is None


def test_config_host_partition_not_needed(capsys, tmp_path) -> None:
    """plan is an off-host tool: explicit host CPU lists are not checked against this host."""
    cfg = tmp_path / "rtagent.toml"
    cfg.write_text('[host]\nrealtime_cpus = "4000-4001"\nhousekeeping_cpus = "0"\n')
    code, _, err = plan(capsys, "--config", str(cfg), "--xml", xml("nova_seed.xml"))
    assert code == 0 and err == ""


def test_stdin(capsys, monkeypatch, no_config) -> None:
    data = (XML_DIR / "nova_seed.xml").read_bytes()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = plan(capsys, "--config", no_config, "--xml", "-", "--json")
    assert code == 0 and json.loads(out)["domain"] == "instance-00000003"


def test_unreadable_file_exit_2(capsys, no_config, tmp_path) -> None:
    missing = tmp_path / "nope.xml"
    code, out, err = plan(capsys, "--config", no_config, "--xml", str(missing))
    assert code == 2 and out == ""
    assert err == f"rtagent: cannot read domain XML {missing}: No such file or directory\n"
    code, _, err = plan(capsys, "--config", no_config, "--xml", str(tmp_path))
    assert code == 2 and err == f"rtagent: cannot read domain XML {tmp_path}: Is a directory\n"


def test_external_entity_exit_2(capsys, no_config) -> None:
    code, out, err = plan(capsys, "--config", no_config, "--xml", xml("xxe.xml"))
    assert code == 2 and out == ""
    assert err.startswith("rtagent: domain XML refused: DOCTYPE declaration at line 2 ")
    assert err.count("\n") == 1


def test_malformed_exit_2(capsys, no_config, tmp_path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain>\n<name>x</name>\n<vcpu>2</vcpu\n</domain>\n")
    code, out, err = plan(capsys, "--config", no_config, "--xml", str(bad))
    assert code == 2 and out == ""
    assert err == "rtagent: malformed domain XML at line 4, column 1: not well-formed (invalid token)\n"


def test_bad_config_exit_2(capsys, tmp_path) -> None:
    cfg = tmp_path / "rtagent.toml"
    cfg.write_text("[realtime]\nmax_priorty = 5\n")
    code, out, err = plan(capsys, "--config", str(cfg), "--xml", xml("nova_seed.xml"))
    assert code == 2 and out == ""
    assert err.startswith("rtagent: config error: ") and "realtime.max_priorty" in err


def test_priority_ceiling_from_config_file(capsys, tmp_path) -> None:
    cfg = tmp_path / "rtagent.toml"
    cfg.write_text("[realtime]\nmax_priority = 1\ndefault_priority = 1\n")
    code, out, _ = plan(capsys, "--config", str(cfg), "--xml", xml("rt_metadata_valid.xml"), "--json")
    data = json.loads(out)
    assert code == 1
    assert data["errors"] == ["domain 'rt1': realtime vCPU 1: priority 2 outside 1..1 "
                              "(realtime.max_priority keeps guests below the host's kernel threads)"]
