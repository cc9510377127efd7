"""The OpenAPI 3.1 document of a control replica's HTTP API, served at GET /v1/openapi.json.

Kept as data beside the handlers it describes; tests/integration/test_openapi.py fails when a route
exists that the document lacks (or the reverse), and tests/integration/test_fuzz_api.py fuzzes the API
from it. The document needs no token: it describes the API, not the cluster.
"""
from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

import msgspec

from raftctl import __version__
from raftctl.statemachine.records import MACHINE_STATES, Registration, Report
from raftctl.statemachine.spec import JobSpecIn

JSON = "application/json"
CBOR = "application/cbor"
NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
TOKEN_NAME = r"^[A-Za-z0-9._-]{1,64}$"
DIGEST = r"^sha256:[0-9a-f]{64}$"
DURATION = {"description": "a duration: `500ms`, `1s`, `1m30s`, `2h`, or a number of seconds",
            "oneOf": [{"type": "string", "minLength": 1}, {"type": "number", "minimum": 0}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), *, extra: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if not extra:
        out["additionalProperties"] = False
    return out


INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
NUM = {"type": "number"}
ANY_OBJ = {"type": "object"}
NULLABLE_STR = {"type": ["string", "null"]}
FAULT_DOMAIN = _obj({"region": STR, "zone": STR, "rack": STR})

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({
        "code": {"type": "string", "description": "stable machine-readable code, e.g. invalid, not_found, too_large"},
        "message": {"type": "string", "description": "what went wrong, for a person"},
        "field": {"type": ["string", "null"], "description": "the input at fault (a body field path, query "
                                                               "parameter, path parameter or header)"},
        "details": {"description": "extra data: every problem of a rejected spec, the leader's API URL, ..."},
    }, ("code", "message", "field"))}, ("error",)),
    "WriteResult": _obj({"index": {"type": "integer", "description": "the state index after the write"}},
                        ("index",)),
    "Job": _obj({"name": STR, "version": INT, "status": STR, "replicas": INT, "spec": ANY_OBJ,
                 "pending_reason": NULLABLE_STR, "counts": ANY_OBJ, "deployment": {"type": ["object", "null"]},
                 "create_index": INT, "modify_index": INT}, ("name", "version", "status", "spec")),
    "JobList": _obj({"index": INT, "jobs": {"type": "array", "items": _obj({
        "name": STR, "version": INT, "status": STR, "replicas": INT, "counts": ANY_OBJ, "modify_index": INT})}},
        ("index", "jobs")),
    "Placement": _obj({"id": STR, "job": STR, "machine": STR, "version": INT, "state": STR, "health": STR,
                       "desired": STR, "ports": ANY_OBJ, "resources": ANY_OBJ}),
    "Machine": _obj({"id": STR, "address": STR, "status": STR, "state": STR, "fault_domain": ANY_OBJ,
                     "labels": ANY_OBJ, "resources": ANY_OBJ, "allocated": ANY_OBJ, "placements": INT}),
    "Endpoint": _obj({"address": STR, "port": INT, "placement": STR, "machine": STR, "version": INT,
                      "fault_domain": FAULT_DOMAIN}),
    "Event": _obj({"seq": INT, "index": INT, "at": INT, "kind": STR, "message": STR}, ("seq", "kind", "message")),
    "Token": _obj({"name": STR, "role": STR, "machine": STR}),
    "Member": _obj({"raft": STR, "id": NULLABLE_STR, "api": NULLABLE_STR, "leader": BOOL, "self": BOOL,
                    "voter": {"type": "boolean", "description": "false for a learner (replicated to, in no "
                                                                  "majority) until the leader promotes it"},
                    "match_index": INT, "lag": INT, "connected": BOOL}, ("raft",)),
    "Status": _obj({"node": STR, "raft": STR, "api": STR, "state": {"enum": ["follower", "candidate", "leader"]},
                    "leader": NULLABLE_STR, "leader_api": NULLABLE_STR, "term": INT, "commit_index": INT,
                    "applied_index": INT, "index": INT, "epoch": INT, "entries": INT, "chain": STR,
                    "ready": BOOL, "members": {"type": "array", "items": _ref("Member")},
                    "state_hash": {"type": ["string", "null"], "description": "sha256 of the canonical snapshot "
                                                                              "(with ?hash=1)"},
                    "state_hash_index": {"type": ["integer", "null"], "description": "the state index state_hash "
                                                                                    "was taken at (with ?hash=1)"},
                    "leadership": {"type": ["object", "null"]}}, ("node", "state", "index")),
    "Image": _obj({"name": STR, "digest": STR, "size": INT}),
}

# Generated from the type definitions the server converts with (msgspec Structs): the job spec a user writes
# (raftctl.statemachine.spec.JobSpecIn, whose Meta carries the validator's bounds) and the agent's report
# and registration (raftctl.statemachine.records.Report, Registration). Component names: JobSpecIn -> JobSpec,
# HealthIn -> JobSpecHealth, ...
GENERATED_NAMES = {"JobSpecIn": "JobSpec", "Report": "AgentReport", "ReportUpdate": "AgentReportUpdate",
                   "Registration": "AgentRegistration"}


def _generated_name(name: str) -> str:
    return GENERATED_NAMES.get(name) or ("JobSpec" + name[:-2] if name.endswith("In") else name)


def _generated() -> dict[str, Any]:
    _, components = msgspec.json.schema_components([JobSpecIn, Report, Registration],
                                                   ref_template="#/components/schemas/{name}")

    def rename(node: Any) -> Any:
        if isinstance(node, list):
            return [rename(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: rename(v) for k, v in node.items()}
        if isinstance(node.get("$ref"), str):
            out["$ref"] = _ref(_generated_name(node["$ref"].rsplit("/", 1)[1]))["$ref"]
        if isinstance(node.get("title"), str):
            out["title"] = _generated_name(node["title"])
        return out

    return {_generated_name(name): rename(schema) for name, schema in components.items()}


SCHEMAS.update(_generated())

PARAMS: dict[str, Any] = {
    "consistent": {"name": "consistent", "in": "query", "schema": {"enum": ["1", "true", "yes", "0"]},
                   "description": "a linearizable read: pass a barrier through the Raft log first (503 when this "
                                  "replica cannot reach a quorum)"},
    "index": {"name": "index", "in": "query", "schema": {"type": "integer"},
              "description": "blocking query: answer once the resource's index exceeds this (or after `wait`)"},
    "wait": {"name": "wait", "in": "query", "schema": {"type": "string", "example": "30s"},
             "description": "how long a blocking query may wait (default 30s, at most 5m)"},
    "request_id": {"name": "X-Request-Id", "in": "header", "schema": {"type": "string", "pattern": TOKEN_NAME},
                   "description": "idempotency key: a write repeated with the same id is applied at most once"},
}


def _path_param(name: str, pattern: str | None = None, description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description or name}


def _pref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


HEADERS = {"X-Raftctl-Index": {"$ref": "#/components/headers/X-Raftctl-Index"},
           "X-Raftctl-Leader": {"$ref": "#/components/headers/X-Raftctl-Leader"}}
ERRORS = ("400", "401", "403", "404", "409", "413", "503")


def _op(summary: str, perm: str | None, ok: dict[str, Any] | None, *, params: list | None = None,
        body: dict[str, Any] | None = None, body_required: bool = True, blocking: bool = False,
        write: bool = False, ok_content: dict[str, Any] | None = None, request_content: dict | None = None,
        errors: tuple[str, ...] = ERRORS) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary}
    if perm is None:
        op["security"] = []
        op["description"] = "No token needed."
    else:
        op["description"] = f"Needs a token whose role has the `{perm}` permission (see docs/api.md, Roles)." + (
            " Sent to a follower, it is forwarded to the leader and answered once applied here." if write else "")
    ps = list(params or [])
    if blocking:
        ps += [_pref("consistent"), _pref("index"), _pref("wait")]
    if write:
        ps.append(_pref("request_id"))
    if ps:
        op["parameters"] = ps
    if body is not None or request_content is not None:
        content = request_content or {JSON: {"schema": body}, CBOR: {"schema": body}}
        op["requestBody"] = {"required": body_required, "content": content,
                             "description": "JSON or CBOR, at most the server's --max-body (1 MiB by default)"}
    responses: dict[str, Any] = {}
    if ok_content is not None:
        responses["200"] = {"description": "OK", "content": ok_content}
    else:
        responses["200"] = {"description": "OK", "headers": HEADERS,
                            "content": {JSON: {"schema": ok or ANY_OBJ}, CBOR: {"schema": ok or ANY_OBJ}}}
    for code in errors:
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    op["responses"] = responses
    return op


NAME_P = _path_param("name", description="job name")
SCALE = _obj({"replicas": {"type": "integer", "minimum": 0, "maximum": 10000}, "reason": STR}, ("replicas",))
TOKEN_REQ = _obj({"role": {"enum": ["admin", "deployer", "operator", "reader", "agent"]},
                  "name": {"type": "string", "pattern": TOKEN_NAME},
                  "machine": {"type": "string", "description": "an agent token's machine (a trailing * covers a "
                                                               "prefix)"}}, ("role", "name"))
REGISTER = _ref("AgentRegistration")
REPORT = _ref("AgentReport")
STATS = _obj({"machine": STR, "stats": {"type": "array", "items": _obj({"placement": STR, "job": STR, "cpu": NUM},
                                                                      ("cpu",))}}, ("machine", "stats"))
BLOB = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _paths() -> dict[str, Any]:
    def lst(key: str, item: str) -> dict[str, Any]:
        return _obj({"index": INT, key: {"type": "array", "items": _ref(item)}}, ("index", key))

    job_write = {"put": _op("Submit a job spec (a new version unless identical)", "jobs:write", _ref("WriteResult"),
                            params=[NAME_P, {"name": "cas", "in": "query", "schema": {"type": "integer", "minimum": 0},
                                             "description": "compare-and-set on the job's modify_index (0: must "
                                                            "not exist); a mismatch is 409 cas_failed"}],
                            body=_ref("JobSpec"), write=True)}
    post_job = copy.deepcopy(job_write["put"])
    post_job["summary"] = "Submit a job spec (same as PUT)"
    return {
        "/healthz": {"get": _op("Liveness, and whether this replica has caught up with the leader", None,
                                _obj({"ok": BOOL, "ready": BOOL}, ("ok", "ready")), errors=())},
        "/v1/openapi.json": {"get": _op("This document", None, None, errors=(),
                                        ok_content={JSON: {"schema": ANY_OBJ}})},
        "/v1/status": {"get": _op("This replica's Raft and state status", "read", _ref("Status"), params=[
            {"name": "hash", "in": "query", "schema": {"enum": ["1", "true", "0"]},
             "description": "add state_hash, the sha256 of the canonical snapshot"}])},
        "/v1/snapshot": {"get": _op(
            "A consistent snapshot of the replicated state for backup (canonical CBOR)", "snapshot", None,
            ok_content={CBOR: {"schema": {"type": "string", "format": "binary", "description":
                                          "canonical CBOR map {format, index, sha256, saved_at, node, state}; "
                                          "state is the canonical snapshot whose sha256 is `sha256`"}}})},
        "/v1/jobs": {"get": _op("Job summaries", "read", _ref("JobList"), blocking=True)},
        "/v1/jobs/{name}": {
            **job_write, "post": post_job,
            "get": _op("A job: current spec, version, status, counts, pending reason", "read", _ref("Job"),
                       params=[NAME_P], blocking=True),
            "delete": _op("Stop a job (purge=1 forgets it)", "jobs:write", _ref("WriteResult"), write=True,
                          params=[NAME_P, {"name": "purge", "in": "query", "schema": {"enum": ["1", "true", "0"]}}]),
        },
        "/v1/jobs/{name}/scale": {"post": _op("Change the replica count", "jobs:write", _ref("WriteResult"),
                                              params=[NAME_P], body=SCALE, write=True)},
        "/v1/jobs/{name}/placements": {"get": _op("The job's placements", "read", _obj({
            "index": INT, "job": STR, "placements": {"type": "array", "items": _ref("Placement")}}),
            params=[NAME_P], blocking=True)},
        "/v1/jobs/{name}/versions": {"get": _op("Version history", "read", _obj({
            "index": INT, "job": STR, "versions": {"type": "array", "items": ANY_OBJ}}),
            params=[NAME_P], blocking=True)},
        "/v1/jobs/{name}/plan": {"post": _op("Dry run: what submitting this spec would place, stop and update",
                                             "read", _obj({"job": STR, "version": INT, "new_version": BOOL,
                                                           "place": {"type": "array"}, "stop": {"type": "array"},
                                                           "update": {"type": "array"}}),
                                             params=[NAME_P], body=_ref("JobSpec"))},
        "/v1/jobs/{name}/rollback": {"post": _op("Resubmit an old version as a new one", "jobs:write",
                                                 _ref("WriteResult"), params=[NAME_P], write=True,
                                                 body=_obj({"version": {"type": "integer", "minimum": 1}},
                                                           ("version",)))},
        "/v1/jobs/{name}/promote": {"post": _op("Promote a canary deploy", "jobs:write", _obj({"promoted": BOOL}),
                                                params=[NAME_P], write=True)},
        "/v1/machines": {"get": _op("Machines with derived state and allocation", "read", lst("machines", "Machine"),
                                    blocking=True, params=[{
                                        "name": "state", "in": "query", "schema": STR, "example": "down",
                                        "description": "only machines in these derived states, comma-separated: "
                                                       + ", ".join(MACHINE_STATES)}])},
        "/v1/machines/{id}/drain": {"post": _op(
            "Drain a machine: move its replicas away within disruption budgets", "machines:write",
            _ref("WriteResult"), params=[_path_param("id", description="machine id")], write=True,
            body=_obj({"deadline": DURATION}), body_required=False)},
        "/v1/machines/{id}/undrain": {"post": _op("Make a drained machine schedulable again", "machines:write",
                                                  _ref("WriteResult"), write=True,
                                                  params=[_path_param("id", description="machine id")])},
        "/v1/discovery/{service}": {"get": _op("Healthy, published endpoints of a service", "read", _obj({
            "index": INT, "service": STR, "endpoints": {"type": "array", "items": _ref("Endpoint")}}),
            params=[_path_param("service"), {"name": "near", "in": "query", "schema": STR,
                                             "description": "prefer endpoints near a fault domain: zone=z1"}],
            blocking=True)},
        "/v1/events": {"get": _op("Controller and state events after seq `index`", "read",
                                  _obj({"index": INT, "events": {"type": "array", "items": _ref("Event")}}),
                                  params=[_pref("consistent"),
                                          {"name": "index", "in": "query", "schema": INT,
                                           "description": "events after this seq; blocks like a blocking query"},
                                          _pref("wait")])},
        "/v1/metrics/{name}": {"post": _op("Push a custom metric value for a job's autoscaler", "metrics:write",
                                           _obj({"job": STR, "metric": STR, "value": NUM}), params=[NAME_P],
                                           write=True, body=_obj({
                                               "metric": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,62}$"},
                                               "value": {"type": "number", "minimum": 0}, "source": STR},
                                               ("metric", "value")))},
        "/v1/tokens": {
            "get": _op("Tokens (names and roles; never secrets)", "tokens", lst("tokens", "Token"), blocking=True),
            "post": _op("Create a token (the secret is shown once)", "tokens",
                        _obj({"index": INT, "name": STR, "role": STR, "token": STR}, ("token",)),
                        body=TOKEN_REQ, write=True),
        },
        "/v1/tokens/{name}": {"delete": _op("Revoke a token", "tokens", _ref("WriteResult"), write=True,
                                            params=[_path_param("name", description="token name")])},
        "/v1/members": {
            "get": _op("Raft members", "read", _obj({"index": INT, "members": {"type": "array",
                                                                                 "items": _ref("Member")}})),
            "post": _op("Add a Raft member as a learner, promoted once caught up (leader only)", "members",
                        _obj({"raft": STR, "added": BOOL, "voter": BOOL}),
                        body=_obj({"raft": {"type": "string", "pattern": r"^[A-Za-z0-9.-]+:\d{1,5}$"},
                                   "api": STR, "id": STR}, ("raft",))),
        },
        "/v1/members/{raft}": {"delete": _op("Remove a Raft member (leader only)", "members",
                                             _obj({"raft": STR, "removed": BOOL}),
                                             params=[_path_param("raft", description="host:port")])},
        "/metrics": {"get": _op("Prometheus metrics", "read", None,
                                ok_content={"text/plain": {"schema": STR}})},
        "/v1/agent/register": {"post": _op("Register (or re-register) the agent's machine", "agent",
                                           _ref("WriteResult"), body=REGISTER)},
        "/v1/agent/heartbeat": {"post": _op("Heartbeat (leader only: elsewhere 503 not_leader with "
                                            "details.leader_api, 503 unavailable on a replica just elected and "
                                            "not leading yet); may carry the machine's usage samples (the "
                                            "items of /v1/agent/stats): stats_accepted says how many were taken, "
                                            "stats_error names the field of a refused item", "agent",
                                            _obj({"machine": STR, "status": NULLABLE_STR, "ttl_s": NUM,
                                                  "interval_s": NUM, "epoch": INT, "assignments_index": INT,
                                                  "stats_accepted": INT,
                                                  "stats_error": ANY_OBJ}),
                                            body=_obj({"machine": STR, "stats": STATS["properties"]["stats"]},
                                                      ("machine",)))},
        "/v1/agent/assignments/{machine}": {"get": _op(
            "The machine's placements with their specs: inline on each placement, or with specs=ref each job "
            "version's spec once in specs ({\"job@version\": spec or null}) and a spec_ref on each placement",
            "agent", _obj({"index": INT, "machine": {"type": ["object", "null"]}, "placements": {"type": "array"},
                           "specs": {"type": "object"}}),
            params=[_path_param("machine"), {"name": "specs", "in": "query", "schema": {"enum": ["inline", "ref"]}}],
            blocking=True)},
        "/v1/agent/report": {"post": _op("Observed-state transitions of placements", "agent",
                                         _obj({"results": {"type": "array"}}), body=REPORT)},
        "/v1/agent/stats": {"post": _op("Per-container CPU utilisation for the autoscaler", "agent",
                                        _obj({"accepted": INT}), body=STATS, write=True)},
        "/v1/efficiency": {"get": _op(
            "Efficiency view: capacity vs allocated vs used per machine, fault domain and job; idle and stranded "
            "capacity; how many machines the placements could fit into (a follower forwards it to the leader, "
            "which holds the agents' usage reports)", "read",
            _obj({"index": INT, "cluster": ANY_OBJ, "machines": {"type": "array"}, "domains": {},
                  "jobs": {"type": "array"}, "usage_from": ANY_OBJ}, ("index", "cluster")))},
        "/v1/images": {"get": _op("Image tags", "read", lst("images", "Image"), blocking=True)},
        "/v1/images/{name}": {"put": _op("Tag an image: name -> manifest digest. The leader first makes sure a "
                                         "majority of replicas hold the manifest, its config and every layer "
                                         "(400 blob_missing naming the digest when no replica holds one)",
                                         "images:write", _ref("WriteResult"), write=True,
                                         params=[_path_param("name", description="image name:tag")],
                                         body=_obj({"digest": {"type": "string", "pattern": DIGEST},
                                                    "size": {"type": "integer", "minimum": 0}}, ("digest",)))},
        "/v1/images/blobs/{digest}": {
            "put": _op("Upload a content-addressed blob (streamed; not bound by --max-body)", "images:write",
                       _obj({"digest": STR, "size": INT, "replicas": INT}),
                       params=[_path_param("digest", DIGEST)], request_content=BLOB),
            "get": _op("Download a blob (fetched from a peer replica if missing here)", "read", None,
                       params=[_path_param("digest", DIGEST)], ok_content=BLOB),
            "head": _op("Whether this replica holds the blob (it does not ask its peers; a pusher skips what a "
                        "replica holds)", "read", None, params=[_path_param("digest", DIGEST)],
                        ok_content={}),
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def document() -> dict[str, Any]:
    """The whole OpenAPI document (a fresh copy each call)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "raftctl control plane API", "version": __version__,
                 "description": "Every control replica serves the whole API (docs/api.md). Bodies are JSON or CBOR; "
                                "answers are JSON, or CBOR with `Accept: application/cbor`. Every error is "
                                "`{\"error\": {code, message, field}}`; a 5xx other than 503 is a bug."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from `raftctl token create` (roles: admin, "
                                                          "deployer, operator, reader, agent)"}},
            "schemas": copy.deepcopy(SCHEMAS),
            "parameters": copy.deepcopy(PARAMS),
            "headers": {
                "X-Raftctl-Index": {"schema": {"type": "string", "pattern": r"^\d+$"},
                                    "description": "the index of the resource read or written"},
                "X-Raftctl-Leader": {"schema": STR, "description": "the Raft leader this replica knows (empty when "
                                                                   "none)"},
            },
            "responses": {
                "E400": _error("bad input; error.field names it"),
                "E401": _error("no, unknown or revoked token"),
                "E403": _error("the token's role may not do this"),
                "E404": _error("unknown resource or route"),
                "E409": _error("conflict, cas_failed or stale_epoch"),
                "E413": _error("the request body is larger than the server's --max-body (code too_large, field "
                               "body)"),
                "E503": _error("no leader, no quorum, catching up, or outcome unknown: retry (with the same "
                               "X-Request-Id)"),
            },
        },
    }


async def handler(request: web.Request) -> web.Response:
    return web.json_response(document())
