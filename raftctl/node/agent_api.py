"""Agent-only endpoints under /v1/agent/: register, heartbeat, assignments, report."""
from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any

from aiohttp import web

from raftctl.clusterid import derive_cluster_id
from raftctl.errors import Forbidden, RaftctlError, Unavailable, ValidationError
from raftctl.node.efficiency import MEMORY_METRIC
from raftctl.node.http import REPLICA, body, encode, perm, read_mode, result_value
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import (REASON_MAX, JobSpec, Machine, Registration, Report, from_wire, list_to_wire,
                                          to_wire)
from raftctl.statemachine.subnets import gateway


def _own_machine(request: web.Request, machine: Any) -> str:
    if not isinstance(machine, str) or not machine:
        raise ValidationError("machine is required", field="machine")
    token = request["token"]
    allowed = token.get("machine") or ""
    if allowed.endswith("*") and machine.startswith(allowed[:-1]):
        return machine  # a simulator's token covers every machine under its prefix
    if token["role"] == "agent" and allowed != machine:
        raise Forbidden(f"agent token {token['name']!r} may only act for machine {token.get('machine')!r}",
                        field="machine")
    return machine


@perm("agent")
async def register(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    if not isinstance(data, dict):
        raise ValidationError("body must be an object", field="body")
    # the one check of a registration's shape: its record (types, no unknown field); a refusal names the field
    # (resources.cpu, ports); apply checks the values
    reg = from_wire(Registration, data)
    machine = _own_machine(request, reg.machine)
    cmd = c.RegisterMachine(machine=machine, address=reg.address, fault_domain=dict(reg.fault_domain),
                            labels=dict(reg.labels), resources=dict(reg.resources), ports=list(reg.ports),
                            runtime=reg.runtime, api=reg.api[:200], pool=reg.pool[:64])
    res = await replica.propose(cmd)
    if replica.leadership is not None:
        replica.leadership.heartbeat(machine)
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@functools.lru_cache(maxsize=4)
def _cluster_id(secret: str | None) -> str | None:
    """The cluster's id (from its secret; None without one, --insecure-dev): agents name their cgroups with it."""
    return derive_cluster_id(secret) if secret else None


@perm("agent")
async def heartbeat(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    machine = _own_machine(request, data.get("machine") if isinstance(data, dict) else None)
    lead = replica.leadership
    told = lead.heartbeat(machine) if lead is not None else None
    if lead is None or told is None:
        st = replica.status()
        raise RaftctlError("heartbeats go to the leader", code="not_leader", http_status=503,
                           details={"leader_api": st.get("leader_api")})
    status = replica.read(lambda s: s.machines[machine].status if machine in s.machines else None)
    # the interval follows the fleet (the leader's heartbeat budget, failover.told_interval); the TTL told is
    # the one this machine is judged by until its next heartbeat
    interval_s, ttl_s = told
    return encode(request, {"machine": machine, "status": status, "ttl_s": ttl_s,
                            "interval_s": interval_s, "epoch": lead.epoch})


def _assignments(s: Any, machine: str) -> dict[str, Any]:
    """The machine's record and its placements, each with the spec of its version (None if pruned or its job
    purged), in their wire form: the answer an agent reads."""
    placements = s.machine_placements(machine)
    specs: dict[tuple[str, int], dict[str, Any] | None] = {}   # one conversion per (job, version)
    out = list_to_wire(placements)
    for p, row in zip(placements, out):
        key = (p.job, p.version)
        if key not in specs:
            job = s.jobs.get(p.job)
            spec: JobSpec | None = job.spec_of(p.version) if job is not None else None
            specs[key] = to_wire(spec) if spec is not None else None
        row["spec"] = specs[key]
    m = s.machines.get(machine)
    return {"machine": to_wire(m) if m is not None else None, "placements": out, "network": _network(s, m)}


class _SubnetHolders:
    """Every machine holding a container subnet, as the assignment answer lists its peers, sorted by machine:
    rebuilt only when the machines table moves (a walk of 10,000 machines per answer was 13-29 % of the leader's
    samples in bench/scale.py at 10,000 machines, where no sim machine holds a subnet). One entry, for the state
    object it was built from (a restore makes a new one)."""

    def __init__(self) -> None:
        self._of: weakref.ref[Any] | None = None
        self._at = -1
        self._rows: list[dict[str, Any]] = []

    def rows(self, s: Any) -> list[dict[str, Any]]:
        at = s.table_index["machines"]
        if self._of is None or self._of() is not s or self._at != at:
            self._rows = sorted(({"machine": o.id, "address": o.address, "subnet": o.subnet}
                                 for o in s.machines.values() if isinstance(o.subnet, str) and o.subnet),
                                key=lambda p: p["machine"])
            self._of, self._at = weakref.ref(s), at
        return self._rows


_SUBNET_HOLDERS = _SubnetHolders()


def _network(s: Any, m: Machine | None) -> dict[str, Any]:
    """This machine's container subnet and its bridge's address, and every other machine's subnet with the
    address to route it through (host-gw). A machine that registers or changes address wakes every watch."""
    subnet = m.subnet if m is not None and isinstance(m.subnet, str) else None
    peers = [dict(p) for p in _SUBNET_HOLDERS.rows(s) if m is None or p["machine"] != m.id]
    return {"subnet": subnet, "gateway": gateway(subnet) if subnet else None, "peers": peers}


@perm("agent")
async def assignments(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    machine = _own_machine(request, request.match_info["machine"])
    # waits on this machine's own change index, woken only by commits that change its assignments (issue 15);
    # the index's meaning across replicas: Replica.wait_for_machine
    index = await read_mode(request, lambda s: s.machine_change_index(machine),
                            wait=lambda after, wait_s: replica.wait_for_machine(machine, after, wait_s))
    data = replica.read(lambda s: _assignments(s, machine))
    return encode(request, {"index": index, **data, "cluster": _cluster_id(replica.cfg.secret)}, index=index)


@perm("agent")
async def report(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    if not isinstance(data, dict):
        raise ValidationError("body must be {machine, updates: [...]}", field="body")
    # The one check of a report: its record (types, states, at most 1000 updates, no unknown field); a refusal names the field (updates[3].state). apply checks the rest.
    updates = data.get("updates")
    if isinstance(updates, list):
        # agents released before the records cut nothing: their reasons (a driver's error text) are cut here,
        # as the API did for them, so a rolling upgrade of the control plane does not refuse their reports
        data = {**data, "updates": [{**u, "reason": u["reason"][:REASON_MAX]}
                                    if isinstance(u, dict) and isinstance(u.get("reason"), str) else u
                                    for u in updates]}
    rep = from_wire(Report, data)
    machine = _own_machine(request, rep.machine)
    cmds = [c.PlacementUpdate(placement=u.placement, machine=machine, state=u.state, health=u.health,
                              exit_code=u.exit_code, reason=u.reason) for u in rep.updates]
    results = await asyncio.gather(*(replica.propose(cmd) for cmd in cmds), return_exceptions=True)
    out = []
    unsure: Unavailable | None = None
    for cmd, res in zip(cmds, results):
        if isinstance(res, BaseException):
            if not isinstance(res, (Unavailable, RaftctlError)):
                raise res
            if isinstance(res, Unavailable) and unsure is None:
                unsure = res
            out.append({"placement": cmd.placement, "ok": False, "error": str(res)})
        else:
            out.append({"placement": cmd.placement, "ok": res.ok, "error": res.error.message if res.error else None})
    if unsure is not None:
        # An update that did not commit here must not look delivered: the agent reports each transition once,
        # so a 200 would leave the placement's state stale until its next transition (a healthy container:
        # never). A 503 makes the agent send the batch to another replica; an update that did commit sets the same
        # state again.
        n = sum(1 for r in results if isinstance(r, Unavailable))
        raise Unavailable(f"{n} of {len(cmds)} updates were not committed ({unsure}); send them again",
                          details={"results": out})
    return encode(request, {"results": out})


MAX_STATS = 5000
"""Most samples one /v1/agent/stats request may carry."""


@perm("agent", write=True)
async def stats(request: web.Request) -> web.Response:
    """Per-container CPU utilisation (of the requested CPU) for the autoscaler; kept in memory. An agent reports
    only placements assigned to its own machine, under their own job: anything else is refused naming the field,
    before any sample of the request is recorded."""
    replica = request.app[REPLICA]
    data = await body(request)
    if not isinstance(data, dict) or not isinstance(data.get("stats"), list):
        raise ValidationError("body must be {machine, stats: [...]}", field="stats")
    machine = _own_machine(request, data.get("machine"))
    if len(data["stats"]) > MAX_STATS:
        raise ValidationError(f"at most {MAX_STATS} stats per request", field="stats")
    owned = replica.read(lambda s: {p.id: p.job for p in s.machine_placements(machine)})
    samples = []
    for i, st in enumerate(data["stats"]):
        cpu = st.get("cpu") if isinstance(st, dict) else None
        if not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or cpu < 0:
            raise ValidationError("each stat is {placement, job, cpu[, memory]} with cpu >= 0", field=f"stats[{i}]")
        placement, job = st.get("placement"), st.get("job")
        if not isinstance(placement, str) or placement not in owned:
            raise Forbidden(f"placement {str(placement)[:80]!r} is not assigned to machine {machine!r}",
                            field=f"stats[{i}].placement")
        if job is not None and job != owned[placement]:
            raise Forbidden(f"placement {placement!r} belongs to job {owned[placement]!r}, not {str(job)[:80]!r}",
                            field=f"stats[{i}].job")
        mem = st.get("memory")
        mem_ok = isinstance(mem, (int, float)) and not isinstance(mem, bool) and mem >= 0  # for GET /v1/efficiency
        samples.append((owned[placement], placement, float(cpu), float(mem) if mem_ok else None))
    for job, placement, cpu, mem in samples:
        replica.metrics.add(job, "cpu", cpu, key=placement)
        if mem is not None:
            replica.metrics.add(job, MEMORY_METRIC, mem, key=placement)
    return encode(request, {"accepted": len(samples)})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/agent/register", register)
    r.add_post("/v1/agent/heartbeat", heartbeat)
    r.add_get("/v1/agent/assignments/{machine}", assignments)
    r.add_post("/v1/agent/report", report)
    r.add_post("/v1/agent/stats", stats)
