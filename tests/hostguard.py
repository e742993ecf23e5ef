"""A guard around every test: the host partition of this machine (IRQ
affinities, the default IRQ affinity, the workqueue cpumask) is the same
after the test as before it, and no test leaves rtagent's *default* host
state file behind (which only an enforcer running with the shipped
``[host_tuning]`` defaults writes).

Tests that move kernel threads or IRQs on purpose restore them themselves
(tests/threads/test_hostpart.py); this catches the test that did so by
accident — a unit test once built a real host enforcer from a config with
the defaults, and every later run of the tier left IRQs, workqueues and
unbound kernel threads pinned to CPU 0 and ``ksoftirqd/1`` SCHED_FIFO.
When it trips, the state is put back (from the state file when there is
one: it holds the originals of everything the enforcer changed) and the
test fails naming what changed.

Cheap on purpose (≈ 25 small files a test): kernel threads are not listed,
the enforcer moves them together with the IRQs and workqueues it checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rtagent.config import HostTuningConfig

DEFAULT_STATE_FILE = Path(HostTuningConfig().state_file)
_IRQ = Path("/proc/irq")
_WQ_MASK = Path("/sys/devices/virtual/workqueue/cpumask")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class Glance:
    irqs: dict[str, str]
    default_affinity: str | None
    workqueue_mask: str | None
    state_file: bool

    @classmethod
    def now(cls) -> Glance:
        irqs = {}
        try:
            names = [d.name for d in _IRQ.iterdir() if d.name.isdigit()]
        except OSError:
            names = []
        for name in names:
            if (v := _read(_IRQ / name / "smp_affinity_list")) is not None:
                irqs[name] = v
        return cls(irqs, _read(_IRQ / "default_smp_affinity"), _read(_WQ_MASK), DEFAULT_STATE_FILE.exists())

    def changes_to(self, after: Glance) -> list[str]:
        out = [f"irq {n}: {v} -> {after.irqs[n]}" for n, v in sorted(self.irqs.items())
               if n in after.irqs and after.irqs[n] != v]
        if after.default_affinity != self.default_affinity:
            out.append(f"default_smp_affinity: {self.default_affinity} -> {after.default_affinity}")
        if after.workqueue_mask != self.workqueue_mask:
            out.append(f"workqueue cpumask: {self.workqueue_mask} -> {after.workqueue_mask}")
        if after.state_file and not self.state_file:
            out.append(f"{DEFAULT_STATE_FILE} was written (a host enforcer ran with the default config)")
        return out

    def put_back(self, after: Glance) -> list[str]:
        """Restore what changed; the errors, if any."""
        errors = []
        if after.state_file and not self.state_file:
            errors += _restore_from_state_file()
        writes = [(_IRQ / n / "smp_affinity_list", v) for n, v in self.irqs.items()
                  if after.irqs.get(n, v) != v]
        if after.workqueue_mask != self.workqueue_mask and self.workqueue_mask is not None:
            writes.append((_WQ_MASK, self.workqueue_mask))
        if after.default_affinity != self.default_affinity and self.default_affinity is not None:
            writes.append((_IRQ / "default_smp_affinity", self.default_affinity))
        for path, value in writes:
            try:
                path.write_text(value + "\n")
            except OSError as err:
                errors.append(f"{path}: {err}")
        return errors


def _restore_from_state_file() -> list[str]:
    from rtagent.config import parse_config
    from rtagent.tuning.host.enforcer import HostPartitionEnforcer

    cfg = parse_config({"host": {"realtime_cpus": "1"}})
    report = HostPartitionEnforcer(cfg.partition, cfg.host_tuning).restore()
    return list(report.errors) + [f"{r.item}: {r.detail}" for r in report.failed]


# -- the RT budget left on libvirt's /machine ------------------------------------

MACHINE = "/machine"


def machine_budget() -> tuple[object, int] | None:
    """(the RT-budget hierarchy, ``/machine``'s budget), None without RT
    group scheduling or a ``/machine`` group."""
    from rtagent.kernel import Kernel

    tree = Kernel().cgroups.rt_tree()
    if tree is None or not tree.exists(MACHINE):
        return None
    return tree, tree.runtime(MACHINE)


def give_back_machine_budget(at_start: int) -> str | None:
    """At the end of the session: ``/machine`` back to what its children
    hold (never below what it held when the session began).  A test daemon
    stopped before it saw its guests go leaves their budget there, by design
    (a stopping daemon leaves tuning in place); nobody else would take it
    back.  Returns what was done, None when nothing was."""
    found = machine_budget()
    if found is None:
        return None
    tree, now = found
    held = tree.children_hold(MACHINE)
    target = max(held, at_start)
    if now <= target:
        return None
    tree.set_runtime(MACHINE, target)
    return f"{MACHINE} RT budget {now} -> {target} µs"
