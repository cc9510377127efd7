"""What the rollout observes of one job at one moment (pure): the placements sorted by what they are to it.

Every concern (deploy.py, drain.py, retire.py) reads the same :class:`Observed`, computed once per pass from the
committed state and ``now``; none of them reads anything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from raftctl.statemachine.records import Deployment, Job, JobSpec, Machine, Placement, Update


@dataclass(frozen=True)
class Observed:
    job: Job
    spec: JobSpec                             # the current version's
    machines: Mapping[str, Machine]
    deployment: Deployment | None             # the record of the current version's deploy, if there is one
    published: int                            # endpoints in discovery (surge replicas included)
    now: int
    live: list[Placement]                     # to run and not lost or stopped
    outdated: list[Placement]                 # live, of a version whose spec is not the current one
    current: list[Placement]                  # live, the current spec
    ready: list[Placement]                    # current, running, healthy for min_healthy, not retiring
    draining: list[Placement]                 # current, on a draining machine
    retiring: list[Placement]                 # live, retired (unpublished), waiting for their stop
    surplus: list[Placement]                  # current, replica index past the wanted count (surge, canaries)

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def version(self) -> int:
        return self.job.version

    @property
    def want(self) -> int:
        return self.job.replicas

    @property
    def update(self) -> Update:
        return self.spec.update


def observe(job: Job, placements: list[Placement], machines: Mapping[str, Machine],
            deployment: Deployment | None, published: int, now: int) -> Observed:
    spec = job.spec_of(job.version)
    if spec is None:
        raise KeyError(f"job {job.name!r} holds no spec for its current version {job.version}")
    min_healthy = spec.update.min_healthy
    live = [p for p in placements if p.is_live()]
    outdated = [p for p in live if job.spec_of(p.version) != spec]
    current = [p for p in live if p not in outdated]
    ready = [p for p in current if p.health == "healthy" and p.state == "running" and not p.retiring_at
             and now - (p.healthy_at or now) >= min_healthy]
    draining = []
    for p in current:
        m = machines.get(p.machine)
        if m is not None and m.drain is not None:
            draining.append(p)
    return Observed(
        job=job, spec=spec, machines=machines, published=published, now=now,
        deployment=deployment if deployment is not None and deployment.version == job.version else None,
        live=live, outdated=outdated, current=current, ready=ready, draining=draining,
        retiring=[p for p in live if p.retiring_at],
        surplus=[p for p in current if p.replica >= job.replicas])


@dataclass(frozen=True)
class Batch:
    """Placements that may be retired this pass, in order, each with why, and how many of them may go."""
    candidates: list[tuple[Placement, str]]
    budget: int


NO_BATCH = Batch([], 0)
