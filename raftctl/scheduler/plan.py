"""What a scheduling pass produces: a Plan of new placements, stops and preemptions, and the ``check`` hook."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Record = dict[str, Any]   # a job, placement or machine as the replicated state holds it
Check = Callable[[], None]

RESOURCES = ("cpu", "memory", "pids")


def no_check() -> None:
    """The default ``check``: a scheduler pass on the leader always runs to its end."""


@dataclass(frozen=True)
class NewPlacement:
    job: str
    version: int
    replica: int
    machine: str
    resources: dict[str, int]
    ports: dict[str, int]


@dataclass
class Plan:
    index: int
    place: list[NewPlacement] = field(default_factory=list)
    stop: list[tuple[str, str]] = field(default_factory=list)       # (placement id, reason)
    preempt: list[tuple[str, str]] = field(default_factory=list)    # (placement id, by job)
    pending: dict[str, str] = field(default_factory=dict)           # job -> why replicas wait
