"""Records for tests that build a state's rows by hand (the scheduler's, the rollout's): a partial row as a dict,
the fields a test does not care about filled with plain defaults, converted through records.from_wire like a
snapshot's tables (so a row a test gets wrong fails here, naming its field)."""
from __future__ import annotations

from typing import Any

from raftctl.statemachine.records import Constraint, Deployment, Job, JobSpec, Machine, Placement, from_wire, to_wire

MACHINE = {"address": "10.0.0.1", "fault_domain": {}, "labels": {}, "resources": {"cpu": 4000, "memory": 8 << 30,
           "pids": 1000}, "ports": [20000, 20010], "runtime": "sim", "status": "up", "registered_at": 0,
           "last_transition": 0, "create_index": 0, "modify_index": 0}
SPEC = {"image": "x:1", "command": ["x"], "replicas": 1}
PLACEMENT = {"resources": {}, "ports": {}, "address": "10.0.0.1", "desired": "run", "state": "running",
             "health": "unknown", "exit_code": None, "reason": "", "created_at": 0, "updated_at": 0,
             "create_index": 0, "modify_index": 0}


def as_machine(row: dict[str, Any]) -> Machine:
    return from_wire(Machine, {**MACHINE, **row})


def as_spec(row: dict[str, Any]) -> JobSpec:
    return from_wire(JobSpec, {**SPEC, **row})


def with_spec(spec: JobSpec, **changes: Any) -> JobSpec:
    """``spec`` with fields changed, given in their wire form (``constraints=[{"attr": ...}]``)."""
    return from_wire(JobSpec, {**to_wire(spec), **changes})


def as_job(row: dict[str, Any]) -> Job:
    versions = [{"submitted_at": 0, "index": 0, **v, "spec": to_wire(v["spec"]) if isinstance(v["spec"], JobSpec)
                 else {**SPEC, "name": row["name"], **v["spec"]}} for v in row.get("versions", [])]
    return from_wire(Job, {"pending_reason": None, "create_index": 0, "modify_index": 0, **row, "versions": versions})


def as_placement(row: dict[str, Any]) -> Placement:
    return from_wire(Placement, {**PLACEMENT, **row})


def as_deployment(row: dict[str, Any] | None) -> Deployment | None:
    return from_wire(Deployment, row) if row is not None else None


def as_constraint(row: dict[str, Any]) -> Constraint:
    return from_wire(Constraint, row)
