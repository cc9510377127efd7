"""The HTTP API (DESIGN §5). Handlers are thin: parse, validate, call one function, encode."""
from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from raftctl.discovery.handler import Lookups
from raftctl.errors import NotFound, RaftctlError, ValidationError
from raftctl.node import agent_api, auth, blobs, efficiency, members, metrics, openapi, snapshot, ui, views
from raftctl.node.http import (BODY_LIMIT, GUARD, REPLICA, TOKEN, Guard, add_unmatched, body, encode, encode_off_loop,
                               perm, read_mode, request_id, result_value, routes)
from raftctl.node.scheduling import run_plan
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import resolve_image
from raftctl.statemachine.records import MACHINE_STATES, JobSpec, from_wire, to_wire
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.units import parse_duration

log = logging.getLogger("raftctl.api")



# -- handlers ----------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    ready = replica.raft is not None and replica.raft.is_ready()
    return web.json_response({"ok": True, "ready": ready}, status=200)


@perm("read")
async def status(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    digest = await snapshot.state_digest(replica) if request.query.get("hash") in ("1", "true") else None
    st = replica.status()
    if digest is not None:
        st["state_hash_index"], st["state_hash"] = digest
    return encode(request, st, index=st["index"])


@perm("jobs:write", write=True, forward=False)
async def put_job(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    spec = validate_spec(await body(request), name=name)
    cas = request.query.get("cas")
    if cas is not None and not cas.isdigit():
        raise ValidationError("cas must be a non-negative integer", field="cas")
    res = await replica.propose(c.PutJob(spec=spec, cas=int(cas) if cas is not None else None, id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@perm("read")
async def plan_job(request: web.Request) -> web.Response:
    """A dry run: what submitting this spec would place, stop and update, and where. Writes nothing."""
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    raw = from_wire(JobSpec, validate_spec(await body(request), name=name))
    spec, jobs, placements, machines, index, usage, groups = replica.read(lambda s: (
        resolve_image(s.images, raw), dict(s.jobs), dict(s.placements), dict(s.machines), s.index, dict(s.usage),
        s.job_groups()))
    # off the event loop, within PLAN_TIMEOUT_S or a 503
    plan = await run_plan(lambda check: views.dry_run(jobs, placements, machines, index, spec, check=check,
                                                      usage=usage, groups=groups))
    return encode(request, plan, index=index)


@perm("read")
async def get_job(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    index = await read_mode(request, lambda s: views.job_index(s, name))
    job = replica.read(lambda s: views.job(s, name))
    if job is None:
        raise NotFound(f"job {name!r} does not exist", field="name")
    return encode(request, job, index=index)


@perm("read")
async def list_jobs(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    index = await read_mode(request, lambda s: s.table_index["jobs"])
    return encode(request, {"index": index, "jobs": replica.read(views.jobs)}, index=index)


@perm("jobs:write", write=True, forward=False)
async def delete_job(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    purge = request.query.get("purge") in ("1", "true")
    res = await replica.propose(c.DeleteJob(name=request.match_info["name"], purge=purge, id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@perm("jobs:write", write=True, forward=False)
async def scale_job(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    replicas = data.get("replicas") if isinstance(data, dict) else None
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 10000:
        raise ValidationError("replicas must be an integer from 0 to 10000", field="replicas")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise ValidationError("reason must be a string", field="reason")
    res = await replica.propose(c.ScaleJob(name=request.match_info["name"], replicas=replicas,
                                           reason=reason[:200], id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@perm("jobs:write", write=True)
async def promote_job(request: web.Request) -> web.Response:
    """Promote a deploy's canaries: the rest of the job rolls to the new version."""
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    job, dep, epoch = replica.read(lambda s: (s.jobs.get(name), s.deployments.get(name), s.epoch))
    if job is None:
        raise NotFound(f"job {name!r} does not exist", field="name")
    if not dep or dep.version != job.version or dep.status != "running" or not dep.canary:
        raise RaftctlError(f"job {name} has no canary deploy waiting", code="conflict", http_status=409, field="name")
    if dep.promoted:
        return encode(request, {"job": name, "promoted": True, "already": True})
    res = await replica.propose(c.SetDeployment(epoch=epoch, job=name, deployment={**to_wire(dep), "promoted": True},
                                                message=f"canaries of {name} version {job.version} promoted by "
                                                        f"{request[TOKEN]['name']}"))
    return encode(request, {"index": res.index, **result_value(res), "promoted": True}, index=res.index)


@perm("read")
async def job_placements(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    index = await read_mode(request, lambda s: s.table_index["placements"])
    data = replica.read(lambda s: views.job_placements(s, name))
    if data is None:
        raise NotFound(f"job {name!r} does not exist", field="name")
    return encode(request, {"index": index, "job": name, "placements": data}, index=index)


@perm("read")
async def job_versions(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    index = await read_mode(request, lambda s: views.job_index(s, name))
    data = replica.read(lambda s: views.job_versions(s, name))
    if data is None:
        raise NotFound(f"job {name!r} does not exist", field="name")
    return encode(request, {"index": index, "job": name, "versions": data}, index=index)


@perm("jobs:write", write=True, forward=False)
async def rollback_job(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValidationError("version must be a positive integer", field="version")
    res = await replica.propose(c.RollbackJob(name=request.match_info["name"], version=version, id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


def machine_states(raw: str | None) -> frozenset[str] | None:
    """``?state=down`` or ``?state=draining,drained``: the derived states a machine list keeps (None: every
    machine); an unknown one is refused naming the field."""
    if raw is None:
        return None
    states = frozenset(x.strip() for x in raw.split(","))
    unknown = sorted(states - set(MACHINE_STATES))
    if unknown:
        raise ValidationError(f"state must be one or more of {', '.join(MACHINE_STATES)} (comma-separated), "
                              f"not {unknown[0][:40]!r}", field="state")
    return states


@perm("read")
async def list_machines(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    states = machine_states(request.query.get("state"))
    index = await read_mode(request, lambda s: max(s.table_index["machines"], s.table_index["placements"]))
    tables = replica.read(views.machine_tables)
    return await encode_off_loop(request, lambda: {"index": index, "machines": views.machines(tables, states)},
                                 index=index)


async def _drain(request: web.Request, drain: bool) -> web.Response:
    replica = request.app[REPLICA]
    mid = request.match_info["id"]
    deadline = None
    if drain and request.can_read_body:
        data = await body(request)
        if isinstance(data, dict) and data.get("deadline") is not None:
            try:
                deadline = replica.clock.now_ms() + parse_duration(data["deadline"])
            except RaftctlError as exc:
                raise ValidationError(exc.message, field="deadline") from None
    res = await replica.propose(c.DrainMachine(machines=[mid], drain=drain, deadline=deadline, id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@perm("machines:write", write=True)
async def drain_machine(request: web.Request) -> web.Response:
    return await _drain(request, True)


@perm("machines:write", write=True)
async def undrain_machine(request: web.Request) -> web.Response:
    return await _drain(request, False)


@perm("read")
async def events(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    q = request.query
    after = 0
    if "index" in q:
        try:
            after = int(q["index"])
        except ValueError:
            raise ValidationError("index must be an integer", field="index") from None
    await read_mode(request, lambda s: s.seq["event"])
    data = replica.read(lambda s: [e for e in s.events if e["seq"] > after])
    last = data[-1]["seq"] if data else after
    return encode(request, {"index": last, "events": data}, index=last)


@perm("metrics:write", write=True)
async def push_metric(request: web.Request) -> web.Response:
    """A service's custom metric for the autoscaler: the value per replica (e.g. requests/s)."""
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    data = await body(request)
    if not isinstance(data, dict):
        raise ValidationError("body must be {metric, value}", field="body")
    metric, value = data.get("metric"), data.get("value")
    if not isinstance(metric, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", metric) or metric == "cpu":
        raise ValidationError("metric must be a custom metric name like requests_per_second", field="metric")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValidationError("value must be a non-negative number", field="value")
    if not replica.read(lambda s: name in s.jobs):
        raise NotFound(f"job {name!r} does not exist", field="name")
    replica.metrics.add(name, metric, float(value), key=str(data.get("source", ""))[:64])
    return encode(request, {"job": name, "metric": metric, "value": value})


@perm("tokens", write=True, forward=False)
async def create_token(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    if not isinstance(data, dict):
        raise ValidationError("body must be an object {role, name}", field="body")
    role, name, machine = data.get("role"), data.get("name"), data.get("machine", "")
    if not isinstance(role, str) or role not in auth.PERMISSIONS:
        raise ValidationError(f"role must be one of {', '.join(auth.PERMISSIONS)}", field="role")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise ValidationError("name must be 1-64 characters of [A-Za-z0-9._-]", field="name")
    if not isinstance(machine, str):
        raise ValidationError("machine must be a string", field="machine")
    # With a request id the token is derived from it (auth.request_token), so a retried create is
    # answered from the dedup table AND prints the same token, which works; without one, a fresh token.
    rid = request_id(request)
    token = auth.request_token(replica.cfg.secret, rid, role, name, machine) if rid else auth.new_token()
    res = await replica.propose(c.CreateToken(hash=auth.token_hash(token), role=role, name=name, machine=machine,
                                              id=rid))
    value = result_value(res)
    return encode(request, {"index": res.index, **value, "token": token}, index=res.index)


@perm("tokens")
async def list_tokens(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    index = await read_mode(request, lambda s: s.table_index["tokens"])
    return encode(request, {"index": index, "tokens": replica.read(views.tokens)}, index=index)


@perm("tokens", write=True, forward=False)
async def revoke_token(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    res = await replica.propose(c.RevokeToken(name=request.match_info["name"], id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@perm("read")
async def list_members(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    st = replica.status()
    return encode(request, {"index": st["index"], "members": st["members"]}, index=st["index"])


def make_app(replica: Any) -> web.Application:
    _, api_metrics = metrics.registry_for(replica)
    app = web.Application(client_max_size=replica.cfg.max_body)
    app[REPLICA] = replica
    app[BODY_LIMIT] = replica.cfg.max_body
    app[GUARD] = Guard(replica, api_metrics.observe, replica.cfg.max_body)
    r = routes(app)
    r.add_get("/healthz", healthz)
    r.add_get("/v1/status", status)
    r.add_get("/v1/jobs", list_jobs)
    r.add_put("/v1/jobs/{name}", put_job)
    r.add_post("/v1/jobs/{name}", put_job)
    r.add_get("/v1/jobs/{name}", get_job)
    r.add_delete("/v1/jobs/{name}", delete_job)
    r.add_post("/v1/jobs/{name}/scale", scale_job)
    r.add_get("/v1/jobs/{name}/placements", job_placements)
    r.add_get("/v1/jobs/{name}/versions", job_versions)
    r.add_post("/v1/jobs/{name}/plan", plan_job)
    r.add_post("/v1/jobs/{name}/rollback", rollback_job)
    r.add_post("/v1/jobs/{name}/promote", promote_job)
    r.add_get("/v1/machines", list_machines)
    r.add_post("/v1/machines/{id}/drain", drain_machine)
    r.add_post("/v1/machines/{id}/undrain", undrain_machine)
    r.add_get("/v1/discovery/{service}", Lookups(replica).handle)
    r.add_get("/v1/events", events)
    r.add_post("/v1/metrics/{name}", push_metric)
    r.add_get("/v1/tokens", list_tokens)
    r.add_post("/v1/tokens", create_token)
    r.add_delete("/v1/tokens/{name}", revoke_token)
    r.add_get("/v1/members", list_members)
    r.add_post("/v1/members", members.add_member)
    r.add_delete("/v1/members/{raft}", members.remove_member)
    r.add_get("/metrics", metrics.handler)
    r.add_get("/v1/openapi.json", openapi.handler)
    r.add_get("/v1/snapshot", snapshot.handler)
    agent_api.add_routes(app)
    blobs.add_routes(app)
    efficiency.add_routes(app)
    ui.add_routes(app)
    add_unmatched(app)
    return app
