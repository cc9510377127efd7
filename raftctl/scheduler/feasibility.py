"""Feasibility: filters that each reject a machine for one replica with a reason, and ``explain`` that sums
the reasons up (`3 machines: 2 insufficient memory, 1 draining`). Port allocation on a feasible machine."""
from __future__ import annotations

from collections import Counter
from typing import Callable

from raftctl.scheduler.constraints import constraint_ok
from raftctl.scheduler.machines import MachineView
from raftctl.scheduler.plan import Check, no_check
from raftctl.statemachine.records import Constraint, JobSpec

Spec = JobSpec
Filter = Callable[[MachineView, Spec], "str | None"]


def f_schedulable(v: MachineView, spec: Spec) -> str | None:
    m = v.record
    if m.status != "up":
        return "down"
    if m.drain is not None:
        return "draining"
    if not m.eligible:
        return "in maintenance"
    return None


def _shown(c: Constraint) -> str:
    """A constraint as a reason names it (its value as the spec's JSON list when it is one)."""
    value = list(c.value) if isinstance(c.value, tuple) else c.value
    return f"constraint {c.attr} {c.op} {value if value is not None else ''}".rstrip()


def f_constraints(v: MachineView, spec: Spec) -> str | None:
    for c in spec.constraints:
        if not constraint_ok(v.record, c):
            return _shown(c)
    return None


def f_resources(v: MachineView, spec: Spec) -> str | None:
    for k, need in spec.resources.amounts().items():
        if v.free[k] < need:
            return f"insufficient {k}"
    return None


def f_ports(v: MachineView, spec: Spec) -> str | None:
    lo, hi = v.record.ports
    dynamic = statics_in_range = 0
    for p in spec.ports:
        if p.static is not None:
            if p.static in v.ports:
                return f"port {p.static} in use"
            statics_in_range += lo <= p.static <= hi
        else:
            dynamic += 1
    if dynamic and v.free_ports - statics_in_range < dynamic:  # the job's own static ports are not free for it
        return "no free ports"
    return None


FILTERS: list[tuple[str, Filter]] = [("schedulable", f_schedulable), ("constraints", f_constraints),
                                     ("resources", f_resources), ("ports", f_ports)]


def explain(views: list[MachineView], spec: Spec, extra: Counter[str] | None = None,
            total: int | None = None, check: Check = no_check) -> str:
    """`5 machines: 3 insufficient memory, 2 draining` (the first filter each machine fails)."""
    reasons: Counter[str] = Counter(extra or {})
    for v in views:
        check()
        for _, f in FILTERS:
            why = f(v, spec)
            if why:
                reasons[why] += 1
                break
    total = len(views) if total is None else total
    if not total:
        return "no machines registered"
    if not reasons:
        return f"{total} machines: all feasible"
    parts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} machines: {parts}"


def allocate_ports(v: MachineView, spec: Spec) -> dict[str, int]:
    lo, hi = v.record.ports
    out: dict[str, int] = {}
    taken = set(v.ports) | {p.static for p in spec.ports if p.static is not None}
    nxt = lo
    for p in spec.ports:
        if p.static is not None:
            out[p.name] = p.static
            taken.add(p.static)
            continue
        while nxt in taken:
            nxt += 1
        if nxt > hi:
            raise ValueError("no free port")
        out[p.name] = nxt
        taken.add(nxt)
    return out
