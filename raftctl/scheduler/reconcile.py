"""Reconcile: what one job needs (slots to place, placements to stop, migrate and update). Pure."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raftctl.scheduler.plan import Record
from raftctl.statemachine.records import holds_resources, spec_of


@dataclass
class Reconciled:
    place: list[int] = field(default_factory=list)                  # replica slots to place
    stop: list[tuple[str, str]] = field(default_factory=list)
    migrate: list[str] = field(default_factory=list)                # on draining machines
    update: list[str] = field(default_factory=list)                 # older versions (the deploy controller's)


def live(p: Record) -> bool:
    """records.Placement.is_live for a placement table dict: wanted and holding resources (it covers its slot)."""
    return p["desired"] == "run" and holds_resources(p["state"])


def current_spec(job: Record) -> dict[str, Any]:
    """The spec of the job's current version (records.spec_of; the current version is never pruned)."""
    spec = spec_of(job, job["version"])
    if spec is None:
        raise KeyError(f"job {job['name']!r} holds no spec for its current version {job['version']}")
    return spec


def reconcile(job: Record, placements: list[Record], machines: dict[str, Record], now: int) -> Reconciled:
    """What one job needs: slots to place, placements to stop, migrate and update."""
    out = Reconciled()
    running = job["status"] == "running"
    want: int = job["replicas"] if running else 0
    surge: int = job.get("surge", 0) if running else 0  # extra slots during a deploy (canaries, max_surge)
    covered: dict[int, Record] = {}
    for p in sorted(placements, key=lambda p: (p["replica"], -p["version"], p["id"])):
        if not live(p):
            continue
        m = machines.get(p["machine"])
        if p["replica"] >= want + surge and p.get("retiring_at") and running:
            continue  # being retired by the rollout: it stops after its drain delay
        if p["replica"] >= want + surge:
            out.stop.append((p["id"], "job stopped" if not running else "scaled down"))
        elif p["replica"] in covered:
            out.stop.append((p["id"], f"duplicate of replica {p['replica']}"))
        elif m is None or m["status"] == "down":
            continue  # the failover monitor marks it lost; its slot is placed again then
        else:
            covered[p["replica"]] = p
            if m.get("drain"):
                out.migrate.append(p["id"])
            if p["version"] != job["version"]:
                out.update.append(p["id"])
    out.place = [slot for slot in range(want + surge) if slot not in covered]
    return out
