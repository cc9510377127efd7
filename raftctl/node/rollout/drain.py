"""Machine drains (pure): move a job's replicas off draining machines within its disruption budget.

A drain never has more of a job away than ``disruption.max_unavailable``, counting every replica already
unavailable (``replicas - published``) on any machine; when the budget is spent the drain is held back and says
which job holds it. Past a machine's drain deadline everything left on it goes at once.
"""
from __future__ import annotations

from raftctl.node.rollout.view import Batch, Observed


def batch(o: Observed) -> tuple[Batch, str | None]:
    """The placements on draining machines to retire now, and why the drain is held back (or None)."""
    if _deadline_passed(o):
        budget = len(o.draining)
    else:
        budget = o.spec.disruption.max_unavailable - max(0, o.want - o.published)
    candidates = [(p, f"machine {p.machine} draining") for p in sorted(o.draining, key=lambda p: p.id)
                  if not p.retiring_at]
    held = None
    if candidates and budget <= 0:
        held = (f"drain held back: job {o.name} is at its disruption budget "
                f"(max_unavailable {o.spec.disruption.max_unavailable}, {o.want - o.published} of {o.want} replicas unavailable)")
    return Batch(candidates, budget), held


def _deadline_passed(o: Observed) -> bool:
    for p in o.draining:
        drain = o.machines[p.machine].drain
        deadline = drain.deadline if drain is not None else None
        if deadline and o.now > deadline:
            return True
    return False
