"""Retiring placements (pure): the two steps every deploy and drain ends in.

1. ``retire``: a batch of placements leaves discovery (``Retire`` sets ``retiring_at``); at most ``budget`` of the
   candidates, in their order, none that is retiring already.
2. ``stop``: once a retired placement has been out of discovery for the job's ``drain_delay`` (clients have
   stopped picking it), the scheduler's ``Plan`` stops it: the agent runs the pre-stop hook, SIGTERM, grace,
   SIGKILL, and the scheduler starts its replacement.
"""
from __future__ import annotations

from raftctl.node.rollout.view import Batch, Observed
from raftctl.statemachine import commands as c


def stop(o: Observed, epoch: int) -> list[c.Command]:
    """Stop the retired placements whose drain delay is over."""
    due = [p for p in o.retiring if isinstance(p.retiring_at, int) and o.now - p.retiring_at >= o.update.drain_delay]
    if not due:
        return []
    return [c.Plan(epoch=epoch, place=[], stop=[{"placement": p.id, "reason": p.reason or "retired"} for p in due])]


def retire(batch: Batch, epoch: int) -> list[c.Command]:
    """Retire the first ``budget`` candidates of the batch (none if the budget is spent)."""
    take = [(p, why) for p, why in batch.candidates[:max(0, batch.budget)] if not p.retiring_at]
    if not take:
        return []
    return [c.Retire(epoch=epoch, placements=[p.id for p, _ in take], reason=take[0][1])]
