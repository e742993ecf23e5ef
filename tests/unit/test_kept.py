"""The full check's marks through kept descriptors (kernel/kept.py,
marks.read_marks_kept) over fixture trees: the same answer as the by-path
read while nothing changed, a different one for every change the full check
is the net for, no task listing while the thread count is unchanged, one
``pread`` a kept file (no reopening), and the descriptor budget.

PIDs here are above this kernel's ``pid_max`` (tests/unit/test_fullcheck.py's
tree): even a planned syscall could never reach a real task."""

from __future__ import annotations

import dataclasses
import os

import pytest

from rtagent.daemon import fullcheck
from rtagent.kernel import kept as kept_mod
from rtagent.kernel.kept import KeptTasks
from rtagent.kernel.tasks import Tasks
from rtagent.monitor.fdlimit import COUNTER_FDS, STANDING_FDS, client_budget
from rtagent.tuning.guest.marks import marks_of, read_marks, read_marks_kept
from rtagent.tuning.guest.observe import observe_process
from tests.procfixture import FakeThread
from tests.unit.test_fullcheck import CHANGES, EMU, PID, PIT, _threads, _tree

pytestmark = pytest.mark.unit


def _expected(tree):
    """The marks of a full observation of the fixture guest (kvm-pit as its kthread)."""
    observed = observe_process(PID, tree.kernel())
    observed = dataclasses.replace(observed, kthreads=tuple(
        dataclasses.replace(t, role="kthread", kind="kvm-pit") for t in observe_process(PIT, tree.kernel()).threads))
    return marks_of(observed)


def _kept(tree, expected, kept: KeptTasks | None = None):
    return read_marks_kept(kept or KeptTasks(tree.kernel(), 64), "g", expected, live=False)


def test_kept_marks_of_an_unchanged_guest_are_the_by_path_marks(tmp_path):
    tree = _tree(tmp_path)
    expected = _expected(tree)
    assert _kept(tree, expected) == expected == read_marks(tree.kernel(), PID, (PIT,), live=False)


@pytest.mark.parametrize("change", CHANGES + [
    {"threads": _threads(t40100={"state": "Z"})},  # the process a zombie
])
def test_each_input_changed_alone_is_noticed_through_kept_descriptors(tmp_path, change):
    expected = _expected(_tree(tmp_path / "before"))
    assert _kept(_tree(tmp_path / "after", **change), expected) != expected


def test_a_born_or_gone_thread_is_seen_by_the_count_without_a_listing(tmp_path, monkeypatch):
    """The leader's stat says how many threads the process has: equal to the
    expected set (each still reading) and no ``/proc/<pid>/task`` listing."""
    tree = _tree(tmp_path)
    expected = _expected(tree)
    monkeypatch.setattr(Tasks, "tids", lambda *a: pytest.fail("listed the task directory"))
    kept = KeptTasks(tree.kernel(), 64)
    assert _kept(tree, expected, kept) == expected
    tree.add_thread(PID, FakeThread(PID + 4, "IO iothread7", cpus="0", cgroup=EMU))  # its FORK missed
    assert _kept(tree, expected, kept) is None
    tree.vanish_thread(PID, PID + 4, keep_dir=False)
    assert _kept(tree, expected, kept) == expected
    tree.vanish_thread(PID, PID + 1, keep_dir=False)  # one of the expected ones gone
    assert _kept(tree, expected, kept) is None


def test_a_short_stat_line_falls_back_to_the_listing(tmp_path):
    tree = _tree(tmp_path)
    expected = _expected(tree)
    stat = tree.path(PID, "task", PID, "stat")
    stat.write_text(" ".join(stat.read_text().split()[:30]) + "\n")  # an old kernel's line: no thread count
    assert _kept(tree, expected) == expected
    tree.add_thread(PID, FakeThread(PID + 4, "IO iothread7", cpus="0", cgroup=EMU))
    stat.write_text(" ".join(stat.read_text().split()[:30]) + "\n")
    assert _kept(tree, expected) is None


def test_kept_descriptors_are_read_again_not_reopened(tmp_path, monkeypatch):
    """After the first read, a guest's stat and status files are one pread
    each: no open, and the answer is the file as it is now."""
    tree = _tree(tmp_path)
    expected = _expected(tree)
    kept = KeptTasks(tree.kernel(), 64)
    assert _kept(tree, expected, kept) == expected and kept.open_fds > 0
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(kept_mod.os, "open", lambda p, *a: opened.append(p) or real_open(p, *a))
    assert _kept(tree, expected, kept) == expected
    assert not [p for p in opened if p.endswith(("/stat", "/status"))], opened
    tree.add_thread(PID, FakeThread(PID + 1, "worker", cpus="0", cgroup=EMU))  # renamed, in place
    assert _kept(tree, expected, kept) != expected


def test_beyond_the_budget_files_are_read_by_path_with_the_same_answers(tmp_path):
    tree = _tree(tmp_path)
    expected = _expected(tree)
    none = KeptTasks(tree.kernel(), 0)
    assert _kept(tree, expected, none) == expected and none.open_fds == 0
    few = KeptTasks(tree.kernel(), 3)
    assert _kept(tree, expected, few) == expected and few.open_fds == 3
    few.drop("g")
    assert few.open_fds == 0


def test_standing_splits_its_budget_and_reopens_for_a_new_observation(tmp_path):
    tree = _tree(tmp_path)
    standing = fullcheck.Standing(tree.kernel(), 100)
    assert (standing.kept.max_fds, standing.counters.max_fds) == (75, 25)
    observed = observe_process(PID, tree.kernel())

    class Last:  # the two fields Standing.marks reads of a DomainReport
        def __init__(self, obs):
            self.observed = obs

    marks = standing.marks("u", Last(observed))
    read_marks_kept(standing.kept, "u", marks, live=False)
    assert standing.kept.open_fds > 0
    assert standing.marks("u", Last(observed)) is marks and standing.kept.open_fds > 0  # same observation
    standing.marks("u", Last(dataclasses.replace(observed)))  # observed anew: descriptors opened afresh
    assert standing.kept.open_fds == 0
    read_marks_kept(standing.kept, "u", marks, live=False)
    standing.forget("u")
    assert standing.kept.open_fds == 0


def test_the_full_check_gets_descriptors_after_the_scrape():
    assert client_budget(65536, 64, 64).standing == STANDING_FDS
    small = client_budget(1024, 64, 64)  # the scrape's take what the clients leave
    assert small.counters == 1024 - 256 - 128 and small.standing == 0
    assert client_budget(256 + 128 + COUNTER_FDS + 10, 64, 64).standing == 10


def test_a_forgotten_guest_closes_its_counters_descriptors_at_once():
    """The stood guests' vCPU counters are read through kept descriptors;
    a guest that leaves must not keep them until the next full check's
    ``keep`` (30 s later; the churn test counted them as a leak)."""
    import os

    from rtagent.kernel import Kernel

    standing = fullcheck.Standing(Kernel(), 100)
    observed = observe_process(os.getpid(), Kernel())

    class Last:
        def __init__(self, obs):
            self.observed = obs

    standing.marks("u", Last(observed))
    got = standing.read_counters([(os.getpid(), os.getpid())])
    assert got[(os.getpid(), os.getpid())] is not None and standing.counters.open_fds > 0
    standing.forget("u")
    assert standing.counters.open_fds == 0
