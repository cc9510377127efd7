"""Agent-only endpoints under /v1/agent/: register, heartbeat, assignments, report."""
from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiohttp import web

from raftctl.clusterid import derive_cluster_id
from raftctl.errors import Forbidden, RaftctlError, Unavailable, ValidationError
from raftctl.node.http import REPLICA, TOKEN, body, client_gone, encode, gone_answer, perm, read_mode, result_value, routes
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import (REASON_MAX, JobSpec, Machine, Registration, Report, from_wire, list_to_wire,
                                          to_wire)
from raftctl.statemachine.subnets import gateway


def _own_machine(request: web.Request, machine: Any) -> str:
    if not isinstance(machine, str) or not machine:
        raise ValidationError("machine is required", field="machine")
    token = request[TOKEN]
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


def _cluster_id(secret: str | None) -> str | None:
    """The cluster's id (from its secret; None without one, --insecure-dev): agents name their cgroups with it.
    Derived once per process (scrypt, 50 ms of CPU: up to 0.5 s of a loaded leader's loop on its first
    assignment answer), at the replica's start, on a worker thread."""
    return derive_cluster_id(secret) if secret else None


@perm("agent")
async def heartbeat(request: web.Request) -> web.Response:
    """Note the machine's heartbeat (leader only). The body may carry the agent's latest usage samples,
    ``"stats": [...]`` (the items of POST /v1/agent/stats, checked by the same ``_take_stats``), so a machine with
    containers sends the leader one request where it sent two. The heartbeat is noted first; samples that are
    refused (another machine's placement, a bad item) record nothing and do not make the heartbeat fail: the
    answer is still the heartbeat's (200, its interval, TTL and status, which the agent must not miss) with
    ``stats_accepted: 0`` and ``stats_error`` naming the field (``stats[3].placement``). A body with stats is
    answered ``stats_accepted: n``; an agent that sees no ``stats_accepted`` (a leader of the previous release)
    posts them to /v1/agent/stats. ``sent_ms`` (agents since session 16): the agent's monotonic clock when it
    sent this copy, so the time it waited here is not counted as the machine's life (failover.FailoverMonitor).

    A heartbeat whose agent gave up waiting before it was read (``client_gone``: an overloaded leader) still
    counts for the machine's life, but its samples are not recorded and it is not answered: the agent has moved
    on (a fresher heartbeat follows). An overloaded leader at 10,000 machines found about half its heartbeats
    abandoned, and storing their samples and writing their answers kept it overloaded."""
    replica = request.app[REPLICA]
    if replica.leadership is None:     # answered before the body is read (a flood of them meets a new leader)
        raise _not_leading(replica)
    data = await body(request)
    machine = _own_machine(request, data.get("machine") if isinstance(data, dict) else None)
    assert isinstance(data, dict)
    sent_ms = _sent_ms(data.get("sent_ms"))
    lead = replica.leadership
    told = lead.heartbeat(machine, sent_ms) if lead is not None else None
    if lead is None or told is None:
        raise _not_leading(replica)
    if client_gone(request):
        return gone_answer(request)
    status, assigned = replica.read(lambda s: (s.machines[machine].status if machine in s.machines else None,
                                               s.machine_change_index(machine)))
    # the interval follows the fleet (the leader's heartbeat budget, failover.told_interval); the TTL told is
    # the one this machine is judged by until its next heartbeat. assignments_index: the machine's change index
    # here, the leader's; an agent whose assignment watch is parked on a follower that does not bring it soon
    # leaves that follower (agent/watchtarget.py)
    interval_s, ttl_s = told
    out: dict[str, Any] = {"machine": machine, "status": status, "ttl_s": ttl_s, "interval_s": interval_s,
                           "epoch": lead.epoch, "assignments_index": assigned}
    if "stats" in data:
        try:
            out["stats_accepted"] = _take_stats(replica, machine, data["stats"])
        except RaftctlError as exc:
            out["stats_accepted"] = 0
            out["stats_error"] = exc.to_dict()
    return encode(request, out)


SENT_MS_MAX = 2 ** 53


def _sent_ms(value: Any) -> int | None:
    """A heartbeat's ``sent_ms`` (the agent's monotonic clock in ms when it sent it; absent from agents before
    session 16): a whole number in [0, 2**53), else refused naming the field."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SENT_MS_MAX:
        raise ValidationError("sent_ms must be a whole number of milliseconds in [0, 2**53)", field="sent_ms")
    return value


def _not_leading(replica: Any) -> RaftctlError:
    """Why this replica does not take a heartbeat: ``not_leader`` naming the leader (``leader_api``), or, on a
    replica just elected that has not claimed its epoch yet, ``unavailable``: it must not name itself, which had
    every agent send the heartbeat to it again at once while its loop was busiest (the 10,000-machine bed's new
    leader took 6 s from election to its controllers)."""
    rs = replica.raft.raft_status() if replica.raft is not None else {}
    if rs.get("state") == "leader":
        return Unavailable("this replica was just elected and is not leading yet; heartbeat again shortly")
    leader_api = replica.read(lambda s: s.members.get(rs.get("leader") or "", {}).get("api"))
    return RaftctlError("heartbeats go to the leader", code="not_leader", http_status=503,
                        details={"leader_api": leader_api})


SPECS_INLINE, SPECS_REF = "inline", "ref"
"""The two forms of an assignment answer (``?specs=``): each placement row with its ``spec`` (the default: agents
of the previous release), or each row with a ``spec_ref`` into the answer's ``specs`` map, one spec per job
version."""


def spec_key(job: str, version: int) -> str:
    """A job version's key in an answer's ``specs`` map: ``job@version``. Job names match NAME_RE
    (``[a-z0-9][a-z0-9-]{0,62}``) and versions are integers, so no two versions share a key."""
    return f"{job}@{version}"


def _assignments(s: Any, machine: str, specs: str = SPECS_INLINE) -> dict[str, Any]:
    """The machine's record and its placements, each with the spec of its version (None if pruned or its job
    purged), in their wire form: the answer an agent reads. ``specs="ref"``: each spec once, in ``specs``
    (``{"job@version": spec or None}``), and each placement with its ``spec_ref`` instead (34 KB -> 5 KB for 10
    placements of one version, docs/scaling.md)."""
    placements = s.machine_placements(machine)
    by_key: dict[str, dict[str, Any] | None] = {}   # one conversion per (job, version)
    out = list_to_wire(placements)
    ref = specs == SPECS_REF
    for p, row in zip(placements, out):
        key = spec_key(p.job, p.version)
        if key not in by_key:
            job = s.jobs.get(p.job)
            spec: JobSpec | None = job.spec_of(p.version) if job is not None else None
            by_key[key] = to_wire(spec) if spec is not None else None
        if ref:
            row["spec_ref"] = key
        else:
            row["spec"] = by_key[key]
    m = s.machines.get(machine)
    answer = {"machine": to_wire(m) if m is not None else None, "placements": out, "network": _network(s, m)}
    if ref:
        answer["specs"] = by_key
    return answer


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
    form = request.query.get("specs", SPECS_INLINE)
    if form not in (SPECS_INLINE, SPECS_REF):
        raise ValidationError(f"specs must be {SPECS_INLINE!r} or {SPECS_REF!r}, not {form[:40]!r}", field="specs")
    data = replica.read(lambda s: _assignments(s, machine, form))
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


def _take_stats(replica: Any, machine: str, items: Any) -> int:
    """Check and record an agent's usage samples (POST /v1/agent/stats, or riding on its heartbeat): per-container
    CPU utilisation (of the requested CPU) for the autoscaler, and memory for the efficiency view, kept in the
    leader's memory. Only placements assigned to ``machine``, under their own job: anything else is refused
    naming the field (``stats[3].placement``) before any sample is recorded. The number recorded."""
    if not isinstance(items, list):
        raise ValidationError("stats must be a list of {placement, job, cpu[, memory]}", field="stats")
    if len(items) > MAX_STATS:
        raise ValidationError(f"at most {MAX_STATS} stats per request", field="stats")
    owned = replica.read(lambda s: {p.id: p.job for p in s.machine_placements(machine)})
    samples = []
    for i, st in enumerate(items):
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
    replica.metrics.add_usage(samples)
    return len(samples)


@perm("agent", write=True)
async def stats(request: web.Request) -> web.Response:
    """Usage samples for the autoscaler (``_take_stats``), posted on their own: agents since session 6 send them on
    their heartbeat and post here only to a leader that does not take them there."""
    replica = request.app[REPLICA]
    data = await body(request)
    if not isinstance(data, dict) or not isinstance(data.get("stats"), list):
        raise ValidationError("body must be {machine, stats: [...]}", field="stats")
    machine = _own_machine(request, data.get("machine"))
    return encode(request, {"accepted": _take_stats(replica, machine, data["stats"])})


def add_routes(app: web.Application) -> None:
    r = routes(app)
    r.add_post("/v1/agent/register", register)
    r.add_post("/v1/agent/heartbeat", heartbeat)
    r.add_get("/v1/agent/assignments/{machine}", assignments)
    r.add_post("/v1/agent/report", report)
    r.add_post("/v1/agent/stats", stats)
