"""Reconcile: what one job needs (slots to place, placements to stop, migrate and update). Pure."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from raftctl.statemachine.records import Job, JobSpec, Machine, Placement


@dataclass
class Reconciled:
    place: list[int] = field(default_factory=list)                  # replica slots to place
    stop: list[tuple[str, str]] = field(default_factory=list)
    migrate: list[str] = field(default_factory=list)                # on draining machines
    update: list[str] = field(default_factory=list)                 # older versions (the deploy controller's)


def current_spec(job: Job) -> JobSpec:
    """The spec of the job's current version (the current version is never pruned)."""
    spec = job.spec_of(job.version)
    if spec is None:
        raise KeyError(f"job {job.name!r} holds no spec for its current version {job.version}")
    return spec


def reconcile(job: Job, placements: list[Placement], machines: Mapping[str, Machine], now: int) -> Reconciled:
    """What one job needs: slots to place, placements to stop, migrate and update."""
    out = Reconciled()
    running = job.status == "running"
    want: int = job.replicas if running else 0
    surge: int = job.surge_slots if running else 0  # extra slots during a deploy (canaries, max_surge)
    covered: dict[int, Placement] = {}
    for p in sorted(placements, key=lambda p: (p.replica, -p.version, p.id)):
        if not p.is_live():
            continue
        m = machines.get(p.machine)
        if p.replica >= want + surge and p.retiring_at and running:
            continue  # being retired by the rollout: it stops after its drain delay
        if p.replica >= want + surge:
            out.stop.append((p.id, "job stopped" if not running else "scaled down"))
        elif p.replica in covered:
            out.stop.append((p.id, f"duplicate of replica {p.replica}"))
        elif m is None or m.status == "down":
            continue  # the failover monitor marks it lost; its slot is placed again then
        else:
            covered[p.replica] = p
            if m.drain is not None:
                out.migrate.append(p.id)
            if p.version != job.version:
                out.update.append(p.id)
    out.place = [slot for slot in range(want + surge) if slot not in covered]
    return out
