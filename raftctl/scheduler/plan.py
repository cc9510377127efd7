"""What a scheduling pass produces: a Plan of new placements, stops and preemptions, and the ``check`` hook."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from raftctl.statemachine.records import PlanItem

Check = Callable[[], None]

RESOURCES = ("cpu", "memory", "pids")


def no_check() -> None:
    """The default ``check``: a scheduler pass on the leader always runs to its end."""


NewPlacement = PlanItem   # one type: what a pass places is what a Plan command carries (records.PlanItem)


@dataclass
class Plan:
    index: int
    place: list[NewPlacement] = field(default_factory=list)
    stop: list[tuple[str, str]] = field(default_factory=list)       # (placement id, reason)
    preempt: list[tuple[str, str]] = field(default_factory=list)    # (placement id, by job)
    pending: dict[str, str] = field(default_factory=dict)           # job -> why replicas wait
