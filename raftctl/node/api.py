"""The HTTP API (DESIGN §5). Handlers are thin: parse, validate, call one function, encode."""
from __future__ import annotations

import asyncio

import json
import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable

import cbor2
from aiohttp import web

from raftctl import gate
from raftctl.aio import unless
from raftctl.errors import NotFound, RaftctlError, Unauthorized, Unavailable, ValidationError
from raftctl.node import auth, views
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import Result, resolve_image
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.units import parse_duration

log = logging.getLogger("raftctl.api")
REPLICA: web.AppKey = web.AppKey("replica", object)
DISCOVERY_CACHE: web.AppKey = web.AppKey("discovery_cache", dict)
BODY_LIMIT: web.AppKey = web.AppKey("body_limit", int)
MAX_BODY = 1 << 20  # default cap on JSON/CBOR request bodies (raftctl server --max-body)
STREAMED_BODIES = {"/v1/images/blobs/{digest}"}  # streamed to disk with their own limit (blobs.MAX_BLOB)
MAX_WAIT_S = 300.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_FOR_CODE = {"not_found": 404, "conflict": 409, "cas_failed": 409, "stale_epoch": 409, "forbidden": 403,
                   "request_id_conflict": 409,
                   "unauthorized": 401, "invalid": 400, "invalid_spec": 400, "bad_command": 400,
                   "unknown_op": 400, "unknown_version": 400, "internal": 500}


# -- encoding ------------------------------------------------------------------

def encode(request: web.Request, data: Any, *, status: int = 200, index: int | None = None) -> web.Response:
    replica = request.app[REPLICA]
    headers = {}
    if index is not None:
        headers["X-Raftctl-Index"] = str(index)
    if replica.raft is not None:
        leader = replica.raft._getLeader()
        headers["X-Raftctl-Leader"] = str(leader) if leader is not None else ""
    if "application/cbor" in request.headers.get("Accept", ""):
        return web.Response(body=cbor2.dumps(data), status=status, content_type="application/cbor", headers=headers)
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json", headers=headers)


async def body(request: web.Request) -> Any:
    """The request body, decoded through the one gate for untrusted bytes (raftctl/gate.py): CBOR for
    ``application/cbor``, JSON otherwise; anything a spec cannot hold is a 400 naming the field."""
    raw = await request.read()
    return gate.decode_body(raw, request.content_type, max_bytes=request.app[BODY_LIMIT])


def result_value(res: Result) -> dict[str, Any]:
    if res.ok:
        return res.value
    err = res.error
    assert err is not None
    raise RaftctlError(err.message, field=err.field, code=err.code, http_status=STATUS_FOR_CODE.get(err.code, 400))


def request_id(request: web.Request) -> str:
    rid = request.headers.get("X-Request-Id", "") or request.get("generated_request_id", "")
    if rid and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid):
        raise ValidationError("X-Request-Id must be 1-64 characters of [A-Za-z0-9._-]", field="X-Request-Id")
    return rid


async def read_mode(request: web.Request, index_fn: Callable[[Any], int]) -> int:
    """Apply ?consistent=1 and ?index=N&wait=D; return the resource index to report."""
    replica = request.app[REPLICA]
    q = request.query
    if q.get("consistent") in ("1", "true", "yes"):
        await replica.barrier()
    if "index" in q:
        try:
            after = int(q["index"])
        except ValueError:
            raise ValidationError(f"index {q['index']!r} is not an integer", field="index") from None
        wait_s = 30.0
        if "wait" in q:
            try:
                wait_s = parse_duration(q["wait"]) / 1000.0
            except RaftctlError as exc:
                raise ValidationError(str(exc.message), field="wait") from None
        return await replica.wait_for(index_fn, after, min(max(wait_s, 0.0), MAX_WAIT_S))
    return replica.read(index_fn)


def perm(name: str, *, write: bool = False) -> Callable[[Handler], Handler]:
    """Name the permission a route needs; ``write`` routes are forwarded to the leader."""
    def deco(fn: Handler) -> Handler:
        fn.perm = name  # type: ignore[attr-defined]
        fn.write = write  # type: ignore[attr-defined]
        return fn
    return deco


FORWARDED = "X-Raftctl-Forwarded"
HOP_HEADERS = {"authorization", "content-type", "x-request-id", "accept"}


async def forward_to_leader(request: web.Request) -> web.Response | None:
    """Proxy a request to the leader's API (writes, so the leader batches them; requests with a token this
    replica has not applied yet); None to handle it here (leading, no leader known, already forwarded)."""
    replica = request.app[REPLICA]
    if request.headers.get(FORWARDED) or replica.raft is None:
        return None
    rs = replica.raft.raft_status()
    if rs["state"] == "leader" or not rs["leader"]:
        return None  # leading, or no leader known: pysyncobj queues the command until one is
    leader_api = replica.read(lambda s: s.members.get(rs["leader"], {}).get("api"))
    if not leader_api:
        return None
    headers = {k: v for k, v in request.headers.items() if k.lower() in HOP_HEADERS}
    headers[FORWARDED] = replica.cfg.node_id
    if not request.headers.get("X-Request-Id"):
        # One id for the proxied copy and for the local fallback below: a proxy that timed out may still
        # reach a paused leader later, and without an id that copy was applied a second time, after
        # writes acknowledged in between (jepsen-style, writes without X-Request-Id).
        request["generated_request_id"] = headers["X-Request-Id"] = uuid.uuid4().hex
    payload_in = await request.read()  # outside the try: a body over --max-body is a 413, never half-read

    async def proxy() -> web.Response:
        async with replica.http.request(request.method, leader_api + request.rel_url.path_qs,
                                        data=payload_in, headers=headers) as resp:
            payload = await resp.read()
            out = web.Response(body=payload, status=resp.status,
                               content_type=resp.content_type or "application/json")
            for h in ("X-Raftctl-Index", "X-Raftctl-Leader"):
                if h in resp.headers:
                    out.headers[h] = resp.headers[h]
            return out

    # A paused or cut-off leader holds the proxy until the session's timeout (15 s) although a new leader is
    # elected in ~1.5 s (jepsen-style finding 7): give up the proxy as soon as the leader moves, and handle the
    # request here (pysyncobj routes it to the new leader; the shared request id deduplicates a late copy).
    moved = replica.leadership.leader_moved(rs["leader"]) if replica.leadership is not None else asyncio.Event()
    sent = await unless(proxy(), moved.wait())
    if sent is None:
        log.info("leader moved away from %s while a request was proxied to it; handling it here", rs["leader"])
        return None
    exc = sent.exception()
    if exc is not None:  # the leader is unreachable from here: let pysyncobj route it
        log.info("forward to leader %s failed (%s); proposing locally", leader_api, exc)
        return None
    return sent.result()


# -- middleware ------------------------------------------------------------------

@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    response = await _handle(request, handler)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    from raftctl.node.metrics import registry_for

    _, api_metrics = registry_for(request.app[REPLICA])
    api_metrics.observe(f"{request.method} {route}", response.status, time.monotonic() - started)
    return response


def too_large(limit: int) -> RaftctlError:
    return RaftctlError(f"the request body is larger than this server's limit of {limit} bytes (--max-body)",
                        code="too_large", http_status=413, field="body")


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resource = request.match_info.route.resource
        limit = request.app[BODY_LIMIT]
        if request.content_length is not None and request.content_length > limit and \
                (resource is None or resource.canonical not in STREAMED_BODIES):
            raise too_large(limit)  # before auth and before reading a byte of it
        required = getattr(handler, "perm", None)
        if required is not None:
            replica = request.app[REPLICA]
            try:
                request["token"] = replica.read(
                    lambda s: auth.authorize(s.tokens, request.headers.get("Authorization"), required))
            except Unauthorized:
                if replica.raft is not None and not replica.raft.isReady():
                    # a replica still replaying its log may not know the token yet: let the client retry elsewhere
                    raise Unavailable("this replica is still catching up with the leader; try another") from None
                if request.headers.get("Authorization"):
                    # a token created a moment ago may be committed on the leader but not yet applied here
                    # (Consul's followers likewise ask the leader about tokens they cannot resolve): the leader
                    # decides, and a token it does not know either is refused there with the same 401
                    forwarded = await forward_to_leader(request)
                    if forwarded is not None:
                        return forwarded
                raise
            if getattr(handler, "write", False):
                forwarded = await forward_to_leader(request)
                if forwarded is not None:
                    return forwarded
        return await handler(request)
    except RaftctlError as exc:
        return web.json_response({"error": exc.to_dict()}, status=exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:  # a chunked body that grew past client_max_size while being read
            return web.json_response({"error": too_large(request.app[BODY_LIMIT]).to_dict()}, status=413)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return web.json_response({"error": {"code": code, "message": exc.reason, "field": None}}, status=exc.status)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"error": {"code": "internal", "message": "internal error (a bug: see the server log)",
                                            "field": None}}, status=500)


# -- handlers ----------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    ready = replica.raft is not None and replica.raft.isReady()
    return web.json_response({"ok": True, "ready": ready}, status=200)


@perm("read")
async def status(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    st = replica.status(with_hash=request.query.get("hash") in ("1", "true"))
    return encode(request, st, index=st["index"])


@perm("jobs:write", write=True)
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
    raw = validate_spec(await body(request), name=name)
    spec, jobs, placements, machines, index = replica.read(lambda s: (
        resolve_image(s.images, raw), dict(s.jobs), dict(s.placements), dict(s.machines), s.index))
    from raftctl.node.scheduling import run_plan  # off the event loop, within PLAN_TIMEOUT_S or a 503
    plan = await run_plan(lambda check: views.dry_run(jobs, placements, machines, index, spec, check=check))
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


@perm("jobs:write", write=True)
async def delete_job(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    purge = request.query.get("purge") in ("1", "true")
    res = await replica.propose(c.DeleteJob(name=request.match_info["name"], purge=purge, id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@perm("jobs:write", write=True)
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
    if not dep or dep.get("version") != job["version"] or dep.get("status") != "running" or not dep.get("canary"):
        raise RaftctlError(f"job {name} has no canary deploy waiting", code="conflict", http_status=409, field="name")
    if dep.get("promoted"):
        return encode(request, {"job": name, "promoted": True, "already": True})
    res = await replica.propose(c.SetDeployment(epoch=epoch, job=name, deployment={**dep, "promoted": True},
                                                message=f"canaries of {name} version {job['version']} promoted by "
                                                        f"{request['token']['name']}"))
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


@perm("jobs:write", write=True)
async def rollback_job(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValidationError("version must be a positive integer", field="version")
    res = await replica.propose(c.RollbackJob(name=request.match_info["name"], version=version, id=request_id(request)))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


@perm("read")
async def list_machines(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    index = await read_mode(request, lambda s: max(s.table_index["machines"], s.table_index["placements"]))
    return encode(request, {"index": index, "machines": replica.read(views.machines)}, index=index)


async def _drain(request: web.Request, drain: bool) -> web.Response:
    replica = request.app[REPLICA]
    mid = request.match_info["id"]
    deadline = None
    if drain and request.can_read_body:
        data = await body(request)
        if isinstance(data, dict) and data.get("deadline") is not None:
            try:
                deadline = int(time.time() * 1000) + parse_duration(data["deadline"])
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
async def discovery(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    service = request.match_info["service"]
    near = request.query.get("near")
    index = await read_mode(request, lambda s: s.discovery.get(service, {}).get("index", 0))
    # answers change only when the service's index does: serve the encoded bytes from a cache
    key = (service, index, near, "application/cbor" in request.headers.get("Accept", ""))
    cache = request.app[DISCOVERY_CACHE]
    resp = cache.get(key)
    if resp is None:
        data = replica.read(lambda s: views.discovery(s, service, near))
        if data["index"] != index:  # moved on while we waited: answer what we read, do not cache it
            return encode(request, data, index=data["index"])
        resp = encode(request, data, index=index)
        body_bytes, ctype = resp.body, resp.content_type
        cache[key] = (body_bytes, ctype)
        while len(cache) > 4096:
            del cache[next(iter(cache))]
        return resp
    body_bytes, ctype = resp
    out = web.Response(body=body_bytes, content_type=ctype)
    out.headers["X-Raftctl-Index"] = str(index)
    leader = replica.raft._getLeader() if replica.raft is not None else None
    out.headers["X-Raftctl-Leader"] = str(leader) if leader is not None else ""
    return out


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


@perm("tokens", write=True)
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


@perm("tokens", write=True)
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
    from raftctl.node import agent_api, blobs, efficiency, members, metrics, openapi, snapshot, ui

    app = web.Application(middlewares=[errors_and_auth], client_max_size=replica.cfg.max_body)
    app[REPLICA] = replica
    app[BODY_LIMIT] = replica.cfg.max_body
    app[DISCOVERY_CACHE] = {}
    r = app.router
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
    r.add_get("/v1/discovery/{service}", discovery)
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
    return app
