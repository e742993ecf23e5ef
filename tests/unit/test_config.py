"""Config validation: each error class gives exactly one line naming the key
and the value, and exit code 2 (issue: foundation)."""

from pathlib import Path

import pytest

from rtagent.cli import main
from rtagent.config import load_config, parse_config
from rtagent.errors import ConfigError
from rtagent.kernel import Kernel

pytestmark = pytest.mark.unit


@pytest.fixture
def sysroot(tmp_path):
    """A fake /sys with two online CPUs and no isolated ones."""
    cpu = tmp_path / "sys/devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text("0-1\n")
    (cpu / "isolated").write_text("\n")
    return str(tmp_path)


CASES = [
    # (toml, key named, value named, reason fragment)
    ('[realtime]\nmax_prio = 3\n', "realtime.max_prio", "3", "unknown key"),
    ('[bogus]\nx = 1\n', "bogus", "{'x': 1}", "unknown section"),
    ('[realtime]\nmax_priority = "10"\n', "realtime.max_priority", "'10'", "must be an integer"),
    ('[daemon]\nresync_interval_s = "fast"\n', "daemon.resync_interval_s", "'fast'", "must be a number"),
    ('[daemon]\nfull_check_interval_s = "slow"\n', "daemon.full_check_interval_s", "'slow'", "must be a number"),
    ('[daemon]\nfull_check_interval_s = 0\n', "daemon.full_check_interval_s", "0", "0.05..86400"),
    ('[host_tuning]\nirqs = 1\n', "host_tuning.irqs", "1", "must be true or false"),
    ('[host]\nrealtime_cpus = "1-x"\n', "host.realtime_cpus", "'1-x'", "expected a CPU number"),
    ('[host]\nrealtime_cpus = "3-1"\n', "host.realtime_cpus", "'3-1'", "range end below its start"),
    ('[host]\nrealtime_cpus = "1"\nhousekeeping_cpus = "0-1"\n', "host.housekeeping_cpus", "'0-1'", "overlaps"),
    ('[host]\nrealtime_cpus = "5"\n', "host.realtime_cpus", "'5'", "not online"),
    ('[host]\nrealtime_cpus = "0-1"\n', "host.realtime_cpus", "'0-1'", "no housekeeping CPU"),
    ('[realtime]\nmax_priority = 120\n', "realtime.max_priority", "120", "1..99"),
    ('[realtime]\ndefault_priority = 0\n', "realtime.default_priority", "0", "1..99"),
    ('[realtime]\nmax_priority = 5\ndefault_priority = 6\n', "realtime.default_priority", "6",
     "above realtime.max_priority"),
    ('[realtime]\ndefault_policy = "deadline"\n', "realtime.default_policy", "'deadline'", "fifo, rr"),
    ('[[rule]]\nmatch_name = "x*"\npriority = 50\n', "rule[0].priority", "50", "above realtime.max_priority"),
    ('[[rule]]\nmatch_name = "x*"\nrealtime_mask = "^a"\n', "rule[0].realtime_mask", "'^a'", "expected a CPU number"),
    ('[[rule]]\npriority = 1\n', "rule[0]", "", "needs match_name"),
    ('[metrics]\nlisten = "localhost"\n', "metrics.listen", "'localhost'", "HOST:PORT"),
    ('[status]\nsocket = "rel/path.sock"\n', "status.socket", "'rel/path.sock'", "absolute path"),
    ('[daemon]\nguest_names = "rt-*"\n', "daemon.guest_names", "'rt-*'", "array of strings"),
    ('[daemon]\nguest_names = []\n', "daemon.guest_names", "[]", "at least one glob"),
    ('[daemon]\nguest_names_exclude = [""]\n', "daemon.guest_names_exclude", "['']", "empty glob"),
    ('[daemon]\nguest_names = ["a", 3]\n', "daemon.guest_names", "['a', 3]", "array of strings"),
    ('[daemon]\nguest_require_metadata = "yes"\n', "daemon.guest_require_metadata", "'yes'", "true or false"),
]


@pytest.mark.parametrize("text,key,value,reason", CASES, ids=[c[1] + ":" + c[3] for c in CASES])
def test_each_error_names_key_and_value(tmp_path, sysroot, text, key, value, reason):
    f = tmp_path / "rtagent.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(f), kernel=Kernel(sys=f"{sysroot}/sys"))
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"{key} = {value}" in msg if value else key in msg
    assert reason in msg
    assert str(f) in msg


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text("[realtime]\nmax_priority = 120\n")
    assert main(["config", "check", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("rtagent: config error:") and "realtime.max_priority = 120" in err


def test_missing_explicit_file_and_bad_toml(tmp_path, capsys):
    assert main(["config", "check", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[host\n")
    assert main(["config", "check", "--config", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_valid_config_resolves_partition(sysroot):
    cfg = parse_config({"host": {"realtime_cpus": "1"}}, kernel=Kernel(sys=f"{sysroot}/sys"))
    assert cfg.partition.realtime == {1} and cfg.partition.housekeeping == {0}
    auto = parse_config({}, kernel=Kernel(sys=f"{sysroot}/sys"))
    assert auto.partition.realtime == frozenset() and auto.partition.housekeeping == {0, 1}


def test_auto_realtime_uses_isolated_and_nohz_full(sysroot):
    cpu = Path(sysroot, "sys/devices/system/cpu")
    (cpu / "isolated").write_text("1\n")
    (cpu / "nohz_full").write_text("(null)\n")
    assert parse_config({}, kernel=Kernel(sys=f"{sysroot}/sys")).partition.realtime == {1}


def test_shipped_example_is_valid():
    cfg = load_config(str(Path(__file__).parents[2] / "config/rtagent.toml"), resolve=False)
    assert cfg.metrics.listen == "127.0.0.1:9847"


def test_every_value_in_the_shipped_config_is_the_codes_default():
    """The shipped file documents the defaults (README: "every key with its
    default"): a default changed in one place and not the other fails here
    (e.g. daemon.drift_watch = "auto")."""
    import dataclasses
    import tomllib

    from rtagent import config as C

    shipped = tomllib.loads((Path(__file__).parents[2] / "config/rtagent.toml").read_text())
    sections = {f.name: f.type for f in dataclasses.fields(C.Config)}
    seen = 0
    for section, values in shipped.items():
        if not isinstance(values, dict):
            continue
        cls = getattr(C, sections[section]) if isinstance(sections[section], str) else sections[section]
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(cls)}
        for key, value in values.items():
            want = defaults[key]
            assert (tuple(value) if isinstance(value, list) else value) == want, f"{section}.{key}: {value!r} != {want!r}"
            seen += 1
    assert seen > 40 and shipped["daemon"]["drift_watch"] == "auto"
