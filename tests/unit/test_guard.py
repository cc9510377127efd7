"""raftctl.node.http.Guard: every route's handler is wrapped once, when it is added, with the limits, the token
check, error answers and metrics (it replaced an aiohttp middleware); a request no route matches is a JSON 404,
or a 405 with Allow, from the catch-all route added last. Real sockets (aiohttp's test server), a fake replica."""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from raftctl.node.api import make_app
from raftctl.node.http import BODY_LIMIT, GUARD, REPLICA, Guard, add_unmatched, perm, routes
from raftctl.node.replica import Replica, ServerConfig
from tests.discovery.test_handler import AUTH, FakeReplica

LIMIT = 1024
Seen = list[tuple[str, int]]


@perm("read")
async def job(request: web.Request) -> web.Response:
    return web.json_response({"name": request.match_info["name"], "token": request["token"]["name"]})


@perm("read")
async def broken(request: web.Request) -> web.Response:
    raise KeyError("a bug")


async def moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("/v1/jobs/x")


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, Seen]]:
    replica = FakeReplica()
    seen: Seen = []
    app = web.Application()
    app[REPLICA] = replica
    app[BODY_LIMIT] = LIMIT
    app[GUARD] = Guard(replica, lambda route, code, s: seen.append((route, code)), LIMIT)
    r = routes(app)
    r.add_get("/v1/jobs/{name}", job)
    r.add_delete("/v1/jobs/{name}", job)
    r.add_get("/v1/broken", broken)
    r.add_get("/v1/moved", moved)
    add_unmatched(app)
    async with TestClient(TestServer(app)) as client:
        yield client, seen


async def test_a_guarded_handler_sees_the_checked_token_and_is_observed_under_its_route(served: Any) -> None:
    client, seen = served
    resp = await client.get("/v1/jobs/web", headers=AUTH)
    assert resp.status == 200 and await resp.json() == {"name": "web", "token": "r"}
    resp = await client.head("/v1/jobs/web", headers=AUTH)          # GET routes answer HEAD, labelled HEAD
    assert resp.status == 200
    resp = await client.get("/v1/jobs/web")                         # no token: refused before the handler
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    assert seen == [("GET /v1/jobs/{name}", 200), ("HEAD /v1/jobs/{name}", 200), ("GET /v1/jobs/{name}", 401)]


@pytest.mark.parametrize(("method", "path", "status", "code", "allow"), [
    ("GET", "/v1/nothing", 404, "not_found", None),
    ("GET", "/", 404, "not_found", None),
    ("PUT", "/v1/jobs/a%0Ab/c", 404, "not_found", None),       # a newline in the path (found by the API fuzzer)
    ("GET", "/v1/jobs/a%2Fb/%0D", 404, "not_found", None),
    ("PUT", "/v1/jobs/web", 405, "method_not_allowed", {"GET", "HEAD", "DELETE"}),
    ("POST", "/v1/broken", 405, "method_not_allowed", {"GET", "HEAD"}),
])
async def test_a_request_no_route_matches_is_a_json_404_or_405_naming_the_methods(
        served: Any, method: str, path: str, status: int, code: str, allow: set[str] | None) -> None:
    client, seen = served
    resp = await client.request(method, path, headers=AUTH)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert (set(resp.headers["Allow"].split(",")) if "Allow" in resp.headers else None) == allow
    assert seen == [(f"{method} unmatched", status)]


async def test_a_body_over_the_limit_is_413_before_the_token_is_looked_at(served: Any) -> None:
    client, seen = served
    resp = await client.delete("/v1/jobs/web", data=b"x" * (LIMIT + 1))
    assert resp.status == 413 and (await resp.json())["error"]["field"] == "body"
    assert seen == [("DELETE /v1/jobs/{name}", 413)]


async def test_an_unexpected_error_is_a_logged_500_and_a_redirect_goes_through(
        served: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, seen = served
    with caplog.at_level(logging.ERROR, logger="raftctl.api"):
        resp = await client.get("/v1/broken", headers=AUTH)
    assert resp.status == 500 and (await resp.json())["error"]["code"] == "internal"
    assert "internal error on GET /v1/broken" in caplog.text and "KeyError" in caplog.text
    resp = await client.get("/v1/moved", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/v1/jobs/x"
    assert seen == [("GET /v1/broken", 500)]


def test_every_route_of_a_replica_is_guarded_and_the_catch_all_comes_last() -> None:
    cfg = ServerConfig(node_id="n0", data_dir="/nonexistent", raft="127.0.0.1:1", peers=[], api="127.0.0.1:2",
                       secret=None)
    app = make_app(Replica(cfg))
    handlers = [(route.method, route.resource.canonical, route.handler) for route in app.router.routes()
                if route.resource is not None]
    assert handlers[-1][:2] == ("*", "/{tail}")
    unguarded = [(m, p) for m, p, h in handlers if h.__code__ is not handlers[-1][2].__code__]
    assert unguarded == []
