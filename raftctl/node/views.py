"""Read-only views of the state in the API's answer shapes (pure; run under the apply lock, but for the machine
list, built from copies taken under it: ``machine_tables``).

The state's tables hold records; an answer holds their wire form (records.to_wire, here at the edge), so the
JSON a client reads is what it was when the tables held dicts."""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

from raftctl.discovery.view import lookup, parse_near
from raftctl.scheduler import reconcile, schedule
from raftctl.scheduler.driver import placements_of_jobs
from raftctl.scheduler.pipeline import no_check
from raftctl.statemachine.records import Job, JobSpec, JobVersion, Machine, Placement, list_to_wire, to_wire
from raftctl.statemachine.state import NO_USAGE, MachineUsage, State


def job_index(s: State, name: str) -> int:
    job = s.jobs.get(name)
    return job.modify_index if job else 0


def job(s: State, name: str) -> dict[str, Any] | None:
    j = s.jobs.get(name)
    if j is None:
        return None
    spec = j.spec_of(j.version)
    dep = s.deployments.get(name)
    return {"name": name, "version": j.version, "status": j.status, "replicas": j.replicas,
            "spec": to_wire(spec) if spec is not None else None, "pending_reason": j.pending_reason,
            "counts": s.counts_of_job(name), "deployment": to_wire(dep) if dep is not None else None,
            "create_index": j.create_index, "modify_index": j.modify_index}


def jobs(s: State) -> list[dict[str, Any]]:
    out = []
    for name in sorted(s.jobs):
        j = s.jobs[name]
        out.append({"name": name, "version": j.version, "status": j.status, "replicas": j.replicas,
                    "counts": s.counts_of_job(name), "modify_index": j.modify_index})
    return out


def job_placements(s: State, name: str) -> list[dict[str, Any]] | None:
    if name not in s.jobs and name not in s.by_job:
        return None
    return list_to_wire(s.job_placements(name))


def job_versions(s: State, name: str) -> list[dict[str, Any]] | None:
    j = s.jobs.get(name)
    if j is None:
        return None
    return [{**v, "current": v["version"] == j.version} for v in list_to_wire(j.versions)]


class MachineTables(NamedTuple):
    """The two tables a machine list is built from, copied under the apply lock (``machine_tables``); the rows
    are built from them outside it (a State has both attributes too)."""

    machines: dict[str, Machine]
    usage: dict[str, MachineUsage]


def machine_tables(s: State) -> MachineTables:
    """Copies of the machines and their usage (two C-level dict copies: the apply lock is held for milliseconds at
    30,000 machines, where building the rows under it held it 0.3-0.7 s). Their records are immutable: apply
    replaces them."""
    return MachineTables(dict(s.machines), dict(s.usage))


def machines(s: State | MachineTables, states: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Every machine with its derived state and allocation, by id; with ``states``, only the machines in one of
    them (GET /v1/machines?state=down): only those are turned into rows. At 10,000 machines the whole list is
    4.6 MB of JSON; at 30,000 13.7 MB, whose rows cost 0.3-0.7 s (GET /v1/machines builds them from
    ``machine_tables`` on a worker thread)."""
    usage = s.usage
    kept: list[tuple[Machine, str, MachineUsage]] = []
    for mid in sorted(s.machines):
        m = s.machines[mid]
        u = usage.get(mid, NO_USAGE)
        state = m.state(u.held > 0)
        if states is None or state in states:
            kept.append((m, state, u))
    return [{**row, "state": state, "allocated": {"cpu": u.cpu, "memory": u.memory, "pids": u.pids},
             "placements": u.held}
            for row, (m, state, u) in zip(list_to_wire(m for m, _, _ in kept), kept)]


def discovery(s: State, service: str, near: str | None) -> dict[str, Any]:
    return lookup(s.discovery, s.machines, service, parse_near(near) if near else None)


def tokens(s: State) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in t.items() if k != "hash"} for t in s.tokens.values()), key=lambda t: t["name"])


def dry_run(jobs: Mapping[str, Job], placements: Mapping[str, Placement], machines: Mapping[str, Machine],
            index: int, spec: JobSpec, check: Callable[[], None] | None = None,
            usage: Mapping[str, MachineUsage] | None = None,
            groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """What the scheduler would do if ``spec`` were submitted now (pure). ``check`` is called between units of
    the scheduler's work and may raise to give up (raftctl.node.scheduling.run_plan bounds a dry run's time).
    ``usage``: the state's usage index copied with ``placements`` (else the pass computes it from them); ``groups``:
    each job's placement ids read with them (``State.job_groups``; else the job's are found by a walk)."""
    name = spec.name
    old = jobs.get(name)
    if old is not None and old.status == "running" and old.spec_of(old.version) == spec:
        version = old.version
    else:
        version = (old.versions[-1].version + 1) if old and old.versions else 1
    job = Job(name=name, version=version, status="running", replicas=spec.replicas, pending_reason=None,
              versions=(JobVersion(version=version, spec=spec, submitted_at=0, index=index),),
              create_index=0, modify_index=0)
    hypothetical = {**jobs, name: job}
    plan = schedule(hypothetical, placements, machines, index=index, now=0, job_names=[name], check=check or no_check,
                    usage=usage, groups=groups)
    mine = list(placements_of_jobs(placements, (name,), groups).values())
    rec = reconcile(job, mine, machines, now=0)
    return {"job": name, "version": version, "new_version": old is None or version != old.version,
            "place": [{"replica": p.replica, "machine": p.machine, "ports": p.ports} for p in plan.place],
            "stop": [{"placement": pid, "reason": why} for pid, why in plan.stop if placements[pid].job == name],
            "preempt": [{"placement": pid, "job": placements[pid].job} for pid, _ in plan.preempt],
            "update": [{"placement": pid, "machine": placements[pid].machine,
                        "from_version": placements[pid].version} for pid in rec.update],
            "pending": plan.pending.get(name) or None}
