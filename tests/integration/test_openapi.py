"""The OpenAPI document is valid, lists exactly the routes the app serves, and is served by every replica;
JSON/CBOR request bodies are capped (413 too_large, field body) at the server's --max-body."""
from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request

import pytest
from openapi_spec_validator import validate

from raftctl.devcluster import LocalCluster
from raftctl.node.api import make_app
from raftctl.node.openapi import document
from raftctl.node.replica import Replica, ServerConfig

from .conftest import SPEC, client_for, wait_until

pytestmark = pytest.mark.integration

# Routes that are not API: the dashboard's page and static files (HTML/JS/CSS for a browser).
NOT_API = ("/ui",)
UNMATCHED = "/{tail}"  # the catch-all route answering 404 and 405 (http.add_unmatched)
LIMIT = 64 * 1024


def served_routes() -> set[tuple[str, str]]:
    """(METHOD, path template) of every route a replica's app serves. HEAD comes with every GET in aiohttp."""
    cfg = ServerConfig(node_id="n0", data_dir="/nonexistent", raft="127.0.0.1:1", peers=[], api="127.0.0.1:2",
                       secret=None)
    app = make_app(Replica(cfg))
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or path == NOT_API[0] or path.startswith(NOT_API[0] + "/") or path == UNMATCHED:
            continue
        out.add((route.method, path))
    return out


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in document()["paths"].items() for method in ops
            if method != "head"}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_served_route_is_documented_and_every_documented_route_is_served() -> None:
    served, documented = served_routes(), documented_routes()
    assert served - documented == set(), "routes the OpenAPI document lacks (add them to raftctl/node/openapi.py)"
    assert documented - served == set(), "documented routes that no handler serves"


def test_the_job_spec_schema_names_every_field_the_validator_accepts() -> None:
    from raftctl.statemachine.spec import TOP

    assert set(document()["components"]["schemas"]["JobSpec"]["properties"]) == set(TOP)


def test_the_job_spec_and_report_schemas_are_generated_from_the_types_the_server_converts_with() -> None:
    from raftctl.statemachine.records import Report
    from raftctl.statemachine.spec import INTEGERS, MAX_ITEMS, JobSpecIn

    schemas = document()["components"]["schemas"]
    spec = schemas["JobSpec"]
    assert spec["additionalProperties"] is False and set(spec["required"]) == {"name", "image", "command"}
    assert spec["properties"]["replicas"]["maximum"] == INTEGERS["replicas"][1]
    assert spec["properties"]["ports"]["anyOf"][0]["maxItems"] == MAX_ITEMS["ports"]
    assert spec["properties"]["health"]["anyOf"][0] == {"$ref": "#/components/schemas/JobSpecHealth"}
    assert schemas["JobSpecHealth"]["properties"]["interval"]["x-minimum-ms"] == 100
    assert set(schemas["AgentReportUpdate"]["properties"]["state"]["enum"]) >= {"running", "exited", "stopped"}
    assert JobSpecIn.__doc__ and Report.__doc__ and spec["description"].startswith("A job spec")
    refs = {v for v in _walk(document()) if isinstance(v, str) and v.startswith("#/components/schemas/")}
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(schemas)


def _walk(node: object):
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)
    else:
        yield node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(str(tmp_path_factory.mktemp("openapi")), replicas=3)
    for p in c.servers:
        p.extra_args = ["--max-body", "64Ki"]
    c.start(timeout=60)
    yield c
    c.stop()


def test_every_replica_serves_the_document_without_a_token(cluster: LocalCluster) -> None:
    for p in cluster.servers:
        with urllib.request.urlopen(p.url + "/v1/openapi.json", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            assert json.loads(resp.read()) == document()


def _send(url: str, method: str, path: str, body: bytes, token: str, *, chunked: bool = False,
          content_type: str = "application/json") -> tuple[int, dict]:
    host = url.split("://", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    try:
        if chunked:
            conn.putrequest(method, path)
            for k, v in {**headers, "Transfer-Encoding": "chunked"}.items():
                conn.putheader(k, v)
            conn.endheaders()
            for i in range(0, len(body), 16384):
                part = body[i:i + 16384]
                conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _spec_of_size(name: str, size: int) -> bytes:
    spec = {**SPEC, "name": name, "replicas": 0, "env": {"PAD": ""}}
    base = len(json.dumps(spec).encode())
    spec["env"]["PAD"] = "x" * (size - base)
    raw = json.dumps(spec).encode()
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_max_body_is_413_too_large_on_leader_and_follower_and_changes_nothing(
        cluster: LocalCluster, chunked: bool) -> None:
    token = cluster.token()
    assert token
    leader = wait_until(cluster.leader, what="a leader")
    follower = next(p for p in cluster.servers if p is not leader)
    before = cluster.get(leader, "/v1/status")["index"]
    for p in (leader, follower):
        status, data = _send(p.url, "PUT", "/v1/jobs/big", _spec_of_size("big", LIMIT + 1), token, chunked=chunked)
        assert status == 413, data
        assert data["error"]["code"] == "too_large"
        assert data["error"]["field"] == "body"
        assert str(LIMIT) in data["error"]["message"]
    assert cluster.get(leader, "/v1/status?consistent=1")["index"] == before
    jobs = client_for(cluster).request("GET", "/v1/jobs", query={"consistent": "1"})["jobs"]
    assert "big" not in {j["name"] for j in jobs}


def test_a_body_at_max_body_is_accepted(cluster: LocalCluster) -> None:
    status, data = _send(cluster.servers[1].url, "PUT", "/v1/jobs/edge", _spec_of_size("edge", LIMIT),
                         cluster.token() or "")
    assert status == 200, data
    job = client_for(cluster).request("GET", "/v1/jobs/edge", query={"consistent": "1"})
    assert job["spec"]["env"]["PAD"].startswith("xxx")


def test_a_huge_body_without_a_token_is_413_before_auth(cluster: LocalCluster) -> None:
    status, data = _send(cluster.servers[0].url, "POST", "/v1/tokens", b"{" + b" " * (4 << 20) + b"}", "nope")
    assert status == 413 and data["error"]["field"] == "body"


def test_a_cbor_body_over_the_limit_is_413_too(cluster: LocalCluster) -> None:
    import cbor2

    raw = cbor2.dumps({"replicas": 1, "reason": "r" * (LIMIT + 10)})
    status, data = _send(cluster.servers[0].url, "POST", "/v1/jobs/edge/scale", raw, cluster.token() or "",
                         content_type="application/cbor")
    assert status == 413 and data["error"]["code"] == "too_large"


def test_blob_uploads_are_not_bound_by_max_body(cluster: LocalCluster) -> None:
    import hashlib

    blob = os.urandom(LIMIT * 3)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    status, data = _send(cluster.servers[0].url, "PUT", f"/v1/images/blobs/{digest}", blob, cluster.token() or "",
                         content_type="application/octet-stream")
    assert status == 200, data
    assert data["size"] == len(blob)


def test_max_body_below_1ki_is_refused_by_the_server_command() -> None:
    from click.testing import CliRunner

    from raftctl.cli.main import cli

    res = CliRunner().invoke(cli, ["server", "--id", "n1", "--data-dir", "/tmp/never", "--raft", "127.0.0.1:1",
                                   "--api", "127.0.0.1:2", "--insecure-dev", "--max-body", "12"])
    assert res.exit_code != 0
    assert "--max-body" in res.output


def test_unknown_json_error_shape_for_a_request_with_no_route(cluster: LocalCluster) -> None:
    try:
        urllib.request.urlopen(cluster.servers[0].url + "/v1/nope", timeout=10)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        assert json.loads(exc.read())["error"]["code"] == "not_found"
