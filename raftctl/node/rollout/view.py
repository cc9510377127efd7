"""What the rollout observes of one job at one moment (pure): the placements sorted by what they are to it.

Every concern (deploy.py, drain.py, retire.py) reads the same :class:`Observed`, computed once per pass from the
committed state and ``now``; none of them reads anything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raftctl.statemachine.records import spec_of


@dataclass(frozen=True)
class Observed:
    job: dict[str, Any]
    spec: dict[str, Any]                      # the current version's
    machines: dict[str, dict]
    deployment: dict[str, Any] | None         # the record of the current version's deploy, if there is one
    published: int                            # endpoints in discovery (surge replicas included)
    now: int
    live: list[dict[str, Any]]                # to run and not lost or stopped
    outdated: list[dict[str, Any]]            # live, of a version whose spec is not the current one
    current: list[dict[str, Any]]             # live, the current spec
    ready: list[dict[str, Any]]               # current, running, healthy for min_healthy, not retiring
    draining: list[dict[str, Any]]            # current, on a draining machine
    retiring: list[dict[str, Any]]            # live, retired (unpublished), waiting for their stop
    surplus: list[dict[str, Any]]             # current, replica index past the wanted count (surge, canaries)

    @property
    def name(self) -> str:
        return str(self.job["name"])

    @property
    def version(self) -> int:
        return int(self.job["version"])

    @property
    def want(self) -> int:
        return int(self.job["replicas"])

    @property
    def update(self) -> dict[str, Any]:
        upd: dict[str, Any] = self.spec["update"]
        return upd


def observe(job: dict[str, Any], placements: list[dict[str, Any]], machines: dict[str, dict],
            deployment: dict[str, Any] | None, published: int, now: int) -> Observed:
    spec = spec_of(job, job["version"]) or {}
    min_healthy = spec["update"]["min_healthy_ms"]
    live = [p for p in placements if p["desired"] == "run" and p["state"] not in ("lost", "stopped")]
    outdated = [p for p in live if spec_of(job, p["version"]) != spec]
    current = [p for p in live if p not in outdated]
    ready = [p for p in current if p["health"] == "healthy" and p["state"] == "running" and not p.get("retiring_at")
             and now - (p.get("healthy_at") or now) >= min_healthy]
    return Observed(
        job=job, spec=spec, machines=machines, published=published, now=now,
        deployment=deployment if deployment and deployment.get("version") == job["version"] else None,
        live=live, outdated=outdated, current=current, ready=ready,
        draining=[p for p in current if machines.get(p["machine"], {}).get("drain")],
        retiring=[p for p in live if p.get("retiring_at")],
        surplus=[p for p in current if p["replica"] >= job["replicas"]])


@dataclass(frozen=True)
class Batch:
    """Placements that may be retired this pass, in order, each with why, and how many of them may go."""
    candidates: list[tuple[dict[str, Any], str]]
    budget: int


NO_BATCH = Batch([], 0)
