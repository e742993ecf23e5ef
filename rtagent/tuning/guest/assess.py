"""One pure judgement of a guest: its intent against what was observed.

:func:`assess` is the single place where a plan and its violations are made,
for the daemon, the one-shot ``check``/``apply`` (through the engine) and the
benchmarks alike.  It does no I/O: the RT-budget chain of a cgroup comes in
as a lookup the caller provides (the engine reads cgroupfs, tests and
benchmarks pass a table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...config import Partition, RealtimeConfig
from ...model import RealtimeSpec, Violation
from ...sets import frozen
from ...vocab import Check
from .claims import Conflict
from .memory import verify_memory
from .observe import Observed
from .plan import REALTIME, DomainPlan, ThreadPlan, plan_domain, plan_withdrawal
from .vmthreads import TIMER_KINDS

# cgroup path -> ((path, cpu.rt_runtime_us), ...) from the root down to it.
BudgetChain = Callable[[str], Sequence[tuple[str, int]]]


@dataclass(frozen=True)
class Assessment:
    threads: tuple[ThreadPlan, ...]
    violations: tuple[Violation, ...]
    # cpu-controller cgroups that need RT budget for this plan (the ledger's claim).
    realtime_cgroups: frozenset[str]


def assess(spec: RealtimeSpec, observed: Observed, partition: Partition, rt: RealtimeConfig, *,
           budget_chain: BudgetChain | None = None, withdrawn: bool = False,
           conflicts: Sequence[Conflict] = ()) -> Assessment:
    """Plan every thread of ``observed`` for ``spec`` and list the violations.

    ``withdrawn``: the guest was realtime under rtagent and its intent no
    longer says so; its realtime threads are planned back to SCHED_OTHER.
    ``budget_chain`` is None when the kernel needs no RT group budget.
    ``conflicts``: this guest's host-wide pCPU conflicts (claims.resolve);
    the pCPUs it lost are kept free of its threads.
    """
    kept_off = frozenset(c.cpu for c in conflicts if c.loser_uuid == spec.uuid)
    plan: DomainPlan = (plan_withdrawal(observed) if withdrawn
                        else plan_domain(spec, observed, partition, rt, kept_off))
    violations: list[Violation] = [Violation(Check.CPU_CONFLICT, c.detail) for c in conflicts]
    for tp in plan.threads:
        violations += tp.violations()
    violations += plan.violations
    if not withdrawn:
        violations += verify_memory(spec.memory, observed.memory)
        violations += budget_violations(plan.threads, budget_chain)
    return Assessment(threads=tuple(plan.threads), violations=tuple(violations),
                      realtime_cgroups=frozen(c for c in plan.realtime_cgroups if c != "/"))


def budget_violations(threads: Sequence[ThreadPlan], budget_chain: BudgetChain | None) -> list[Violation]:
    """A thread that should be realtime but is not, in a cgroup whose chain
    has a zero budget: the kernel will refuse it (RT group scheduling)."""
    if budget_chain is None:
        return []
    out = []
    for tp in threads:
        t = tp.thread
        if tp.want.policy not in REALTIME or tp.policy_ok or not t.cgroup_cpu or t.kind in TIMER_KINDS:
            continue
        zero = [p for p, v in budget_chain(t.cgroup_cpu) if v <= 0]
        if zero:
            out.append(Violation(Check.RT_BUDGET, f"{t.name} (tid {t.tid}) cannot be realtime: cgroup "
                                 f"{zero[0]} has cpu.rt_runtime_us 0 (RT group scheduling)"))
    return out
