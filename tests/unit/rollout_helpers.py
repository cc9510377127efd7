"""Observations for the rollout's tests (tests/unit/test_rollout*.py): a job of versions, placements, machines,
a running deployment, at ``NOW`` by the leader of ``EPOCH``. Written as partial rows (dicts, the fields a case is
about); ``run`` and ``seen`` convert them to the state's records (tests/unit/record_fixtures.py) as the
controller reads them."""
from __future__ import annotations

from typing import Any

from raftctl.node.rollout import Decision, decide
from raftctl.node.rollout.view import Observed, observe
from raftctl.statemachine import commands as c
from tests.unit.record_fixtures import as_deployment, as_job, as_machine, as_placement

NOW = 1_000_000
EPOCH = 7
UPDATE = {"max_unavailable": 1, "max_surge": 0, "min_healthy_ms": 300, "deadline_ms": 20_000, "auto_revert": True,
          "drain_delay_ms": 500, "canary": 0, "auto_promote": False}


def spec(tag: str, disruption: int = 1, **update: Any) -> dict[str, Any]:
    return {"name": "web", "env": {"V": tag}, "update": {**UPDATE, **update},
            "disruption": {"max_unavailable": disruption}}


def job(*specs: dict[str, Any], replicas: int = 3, status: str = "running", stable: tuple[int, ...] = ()) -> dict:
    versions = [{"version": i + 1, "spec": s, "stable": i + 1 in stable} for i, s in enumerate(specs)]
    return {"name": "web", "version": len(specs), "status": status, "replicas": replicas, "versions": versions}


def p(pid: str, replica: int, version: int, machine: str = "m1", state: str = "running", health: str = "healthy",
      healthy_at: int | None = NOW - 10_000, **extra: Any) -> dict[str, Any]:
    return {"id": pid, "job": "web", "replica": replica, "version": version, "machine": machine, "desired": "run",
            "state": state, "health": health, "healthy_at": healthy_at, "resources": {}, "ports": {}, **extra}


def machines(**drains: dict | None) -> dict[str, dict]:
    return {m: {"id": m, "drain": drains.get(m)} for m in ("m1", "m2", "m3")}


def deployment(version: int = 2, **kw: Any) -> dict[str, Any]:
    return {"job": "web", "version": version, "status": "running", "started_at": NOW - 5_000,
            "deadline": NOW + 15_000, "total": 3, "surge": 0, "canary": 0, "promoted": True, **kw}


def records(j: dict, placements: list[dict], dep: dict | None, ms: dict[str, dict] | None) -> tuple:
    rows = ms if ms is not None else machines()
    return (as_job(j), [as_placement(p) for p in placements],
            {mid: as_machine(m) for mid, m in rows.items()}, as_deployment(dep))


def run(j: dict, placements: list[dict], dep: dict | None = None, published: int = 3,
        ms: dict[str, dict] | None = None, now: int = NOW) -> Decision:
    job_, ps, machines_, dep_ = records(j, placements, dep, ms)
    return decide(job_, ps, machines_, dep_, published, now, EPOCH)


def seen(j: dict, placements: list[dict], dep: dict | None = None, published: int = 3,
         ms: dict[str, dict] | None = None, now: int = NOW) -> Observed:
    job_, ps, machines_, dep_ = records(j, placements, dep, ms)
    return observe(job_, ps, machines_, dep_, published, now)


V1, V2 = spec("1"), spec("2")
OLD = [p("a", 0, 1), p("b", 1, 1), p("c", 2, 1)]
NEW = [p("x", 0, 2), p("y", 1, 2), p("z", 2, 2)]


def retire(ids: list[str], reason: str) -> c.Retire:
    return c.Retire(epoch=EPOCH, placements=ids, reason=reason)
