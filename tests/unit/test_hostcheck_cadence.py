"""When the host checks run (daemon/hostside.py): every
host_check_interval_s, and at once at start, for the first managed guest
after none, at a reload and for a newly refused <vcpusched>.  The checks are
counted, not run (a real run scans this machine's /proc; its content is
tested elsewhere)."""

from __future__ import annotations

import pytest

from rtagent.config import ConfigError, load_config
from rtagent.daemon.hostside import HostSupervisor, checks_due
from rtagent.monitor import hostchecks
from rtagent.state import StateStore

pytestmark = pytest.mark.unit


def test_checks_due():
    assert checks_due(10, 5, busy=False, was_busy=False, refused_changed=False)
    assert not checks_due(4, 5, busy=False, was_busy=False, refused_changed=False)
    assert checks_due(4, 5, busy=True, was_busy=False, refused_changed=False)  # first guest
    assert not checks_due(4, 5, busy=True, was_busy=True, refused_changed=False)
    assert not checks_due(4, 5, busy=False, was_busy=True, refused_changed=False)  # last guest gone: no hurry
    assert checks_due(4, 5, busy=False, was_busy=False, refused_changed=True)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _supervisor(tmp_path, monkeypatch, daemon: str = ""):
    f = tmp_path / "c.toml"
    # No host tuning: an enforcer is real and would partition this machine.
    f.write_text('[host]\nrealtime_cpus = "1"\n[host_tuning]\nkthreads = false\nkthread_priorities = false\n'
                 f'irqs = false\nworkqueues = false\n[daemon]\nlock_file = "{tmp_path}/l"\n{daemon}')
    runs: list[float] = []
    clock = Clock()
    monkeypatch.setattr(hostchecks, "run_host_checks", lambda *a, **kw: runs.append(clock.t) or [])
    store = StateStore()
    hs = HostSupervisor(load_config(str(f)), store, clock=clock)
    assert hs.enforcer is None
    return hs, store, clock, runs


def _at(hs, clock, t: float, guests: set[int] = frozenset(), refused: tuple[str, ...] = ()) -> None:
    clock.t = 1000.0 + t
    hs.enforce(set(guests), refused)


def test_every_interval_and_at_once_when_the_answer_may_have_changed(tmp_path, monkeypatch):
    hs, store, clock, runs = _supervisor(tmp_path, monkeypatch)
    _at(hs, clock, 0)  # at start
    assert runs == [1000.0]
    assert store.read(lambda s: s.daemon.host["checks_every_s"]) == 300.0
    for t in (31, 120, 299):
        _at(hs, clock, t)
    assert len(runs) == 1  # not every 30 s
    _at(hs, clock, 301)
    assert runs[-1] == 1301.0
    _at(hs, clock, 310, {4242})  # the first managed guest: now, not at 601
    assert runs[-1] == 1310.0
    _at(hs, clock, 320, {4242, 4343})  # a second guest: no run of its own
    _at(hs, clock, 330)  # the last guest gone: no hurry either
    assert len(runs) == 3
    _at(hs, clock, 340, {4242})  # a first guest again
    assert runs[-1] == 1340.0
    _at(hs, clock, 600, {4242})
    assert len(runs) == 4
    _at(hs, clock, 601, {4242}, refused=("d1",))  # a guest libvirt will refuse: news now
    assert runs[-1] == 1601.0
    hs.configure(hs.config)  # SIGHUP: the operator changed something
    _at(hs, clock, 602, {4242}, refused=("d1",))
    assert runs[-1] == 1602.0 and len(runs) == 6
    _at(hs, clock, 901, {4242}, refused=("d1",))
    assert len(runs) == 6
    _at(hs, clock, 902, {4242}, refused=("d1",))
    assert runs[-1] == 1902.0


def test_the_interval_comes_from_the_config(tmp_path, monkeypatch):
    hs, _store, clock, runs = _supervisor(tmp_path, monkeypatch, "host_check_interval_s = 5.0\n")
    for t in (0, 4, 5, 9, 10):
        _at(hs, clock, t, {1})
    assert [r - 1000.0 for r in runs] == [0, 5, 10]


@pytest.mark.parametrize("value", ["0", "86401", "true", '"30"'])
def test_a_bad_interval_names_the_key_and_the_value(tmp_path, value):
    key = "host_check_interval_s"
    f = tmp_path / "c.toml"
    f.write_text(f"[daemon]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert f"daemon.{key}" in str(e.value) and value.strip('"').lower() in str(e.value).lower()


def test_status_says_how_old_the_checks_are():
    import time

    from rtagent.commands.status import render

    data = {"daemon": {}, "host": {"realtime_cpus": "1", "housekeeping_cpus": "0",
                                   "checks_at": time.time() - 12, "checks_every_s": 300.0}}
    assert "checks 12s ago (every 300s)" in render(data, [], detail=False)[1]
    assert "checks" not in render({"daemon": {}, "host": {}}, [], detail=False)[1]


def test_metrics_export_when_they_ran(tmp_path, monkeypatch):
    from rtagent.monitor.metrics import RtagentCollector

    hs, store, clock, _runs = _supervisor(tmp_path, monkeypatch)
    _at(hs, clock, 0)
    at = store.read(lambda s: s.daemon.host["checks_at"])
    fams = {m.name: m for m in RtagentCollector(store).collect()}
    assert fams["rtagent_host_checks_timestamp_seconds"].samples[0].value == at
