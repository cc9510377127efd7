"""GET /v1/discovery/{service} as a replica serves it (raftctl.discovery.handler behind raftctl.node.http's
Guard), over a fake replica holding a real State: the answer is view.lookup's, encoded once per change of
the service's index; the token is checked on every request (a revoked one at once); metrics see every request."""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, AsyncIterator

import cbor2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from raftctl.discovery.handler import Answers, Lookups
from raftctl.discovery.view import lookup
from raftctl.node import auth
from raftctl.node.http import BODY_LIMIT, GUARD, REPLICA, Guard, TokenMemo, add_unmatched, routes
from raftctl.statemachine.state import State

TOKEN = "rct_discovery_reader"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 4096


def endpoint(i: int, zone: str) -> dict[str, Any]:
    return {"address": f"127.0.0.{i + 2}", "port": 20000 + i, "placement": f"p{i}", "machine": f"m{i}",
            "version": 1, "fault_domain": {"region": "r1", "zone": zone, "rack": f"k{i}"}}


class FakeRaft:
    def __init__(self, state: State) -> None:
        self.lock = threading.RLock()
        self.state = state

    def leader_address(self) -> str | None:
        return "127.0.0.1:7001"

    def is_ready(self) -> bool:
        return True

    def is_leader(self) -> bool:
        return True

    def raft_status(self) -> dict[str, Any]:
        return {"state": "leader", "leader": "127.0.0.1:7001"}   # leading: an unknown token is refused here


class FakeReplica:
    """What the handler and the Guard use of a Replica: read under the lock, blocking queries."""

    def __init__(self) -> None:
        s = State()
        s.tokens[auth.token_hash(TOKEN)] = {"hash": auth.token_hash(TOKEN), "role": "reader", "name": "r",
                                            "machine": ""}
        s.discovery["web"] = {"index": 5, "endpoints": {f"p{i}": endpoint(i, f"z{i % 2}") for i in range(3)}}
        s.index = 5
        self.raft = FakeRaft(s)
        self.changed = asyncio.Event()

    def read(self, fn: Any) -> Any:
        with self.raft.lock:
            return fn(self.raft.state)

    async def wait_for(self, fn: Any, after: int, wait_s: float) -> int:
        while self.read(fn) <= after:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), wait_s)
            except asyncio.TimeoutError:
                break
        return int(self.read(fn))

    def publish(self, i: int) -> None:
        """A command that adds endpoint p<i> to web (the index moves, as apply does)."""
        with self.raft.lock:
            s = self.raft.state
            s.index += 1
            s.discovery["web"]["endpoints"][f"p{i}"] = endpoint(i, "z9")
            s.discovery["web"]["index"] = s.index
        self.changed.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, FakeReplica, Lookups, list[tuple[str, int, float]]]]:
    replica = FakeReplica()
    seen: list[tuple[str, int, float]] = []
    app = web.Application()
    app[REPLICA] = replica
    app[BODY_LIMIT] = LIMIT
    app[GUARD] = Guard(replica, lambda r, c, s: seen.append((r, c, s)), LIMIT)
    lookups = Lookups(replica)
    routes(app).add_get("/v1/discovery/{service}", lookups.handle)
    add_unmatched(app)
    async with TestClient(TestServer(app)) as client:
        yield client, replica, lookups, seen


def expected(replica: FakeReplica, service: str = "web", near: dict[str, str] | None = None) -> dict[str, Any]:
    return replica.read(lambda s: lookup(s.discovery, s.machines, service, near))


async def test_the_answer_is_the_views_encoded_once_per_change_of_the_service(served: Any) -> None:
    client, replica, lookups, _ = served
    for _ in range(3):
        resp = await client.get("/v1/discovery/web", headers=AUTH)
        assert resp.status == 200
        assert json.loads(await resp.read()) == expected(replica)
        assert resp.headers["X-Raftctl-Index"] == "5" and resp.headers["X-Raftctl-Leader"] == "127.0.0.1:7001"
        assert resp.content_type == "application/json"
    assert lookups.answers.encoded == 1          # three lookups, one encoding
    replica.publish(7)
    resp = await client.get("/v1/discovery/web", headers=AUTH)
    data = json.loads(await resp.read())
    assert data == expected(replica) and data["index"] == 6 and "p7" in {e["placement"] for e in data["endpoints"]}
    assert resp.headers["X-Raftctl-Index"] == "6"
    assert lookups.answers.encoded == 2
    assert len(lookups.answers) == 1             # the old index's answer was replaced, not kept beside it


async def test_cbor_near_and_an_unknown_service_are_answered_as_the_view_says(served: Any) -> None:
    client, replica, _, _ = served
    resp = await client.get("/v1/discovery/web", headers={**AUTH, "Accept": "application/cbor"})
    assert resp.content_type == "application/cbor" and cbor2.loads(await resp.read()) == expected(replica)
    resp = await client.get("/v1/discovery/web", params={"near": "zone=z1"}, headers=AUTH)
    data = json.loads(await resp.read())
    assert data == expected(replica, near={"zone": "z1"}) and data["endpoints"][0]["fault_domain"]["zone"] == "z1"
    resp = await client.get("/v1/discovery/nothing", headers=AUTH)
    assert json.loads(await resp.read()) == {"index": 0, "service": "nothing", "endpoints": []}


async def test_a_bad_near_or_index_is_a_400_naming_the_field(served: Any) -> None:
    client, _, _, _ = served
    for query, field in (({"near": "floor=3"}, "near"), ({"index": "x"}, "index"), ({"index": "1", "wait": "soon"},
                                                                                     "wait")):
        resp = await client.get("/v1/discovery/web", params=query, headers=AUTH)
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == field


async def test_a_blocking_query_returns_the_answer_after_the_change(served: Any) -> None:
    client, replica, _, _ = served
    waiting = asyncio.ensure_future(client.get("/v1/discovery/web", params={"index": "5", "wait": "10s"},
                                               headers=AUTH))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    replica.publish(8)
    resp = await waiting
    data = json.loads(await resp.read())
    assert data["index"] == 6 and data == expected(replica)


async def test_every_request_checks_the_token_and_a_revoked_one_is_refused_at_once(served: Any) -> None:
    client, replica, _, _ = served
    assert (await client.get("/v1/discovery/web")).status == 401
    assert (await client.get("/v1/discovery/web", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get("/v1/discovery/web", headers=AUTH)).status == 200
    with replica.raft.lock:   # RevokeToken applied
        del replica.raft.state.tokens[auth.token_hash(TOKEN)]
    resp = await client.get("/v1/discovery/web", headers=AUTH)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"


async def test_every_request_is_observed_and_a_body_over_the_limit_is_413(served: Any) -> None:
    client, _, _, seen = served
    await client.get("/v1/discovery/web", headers=AUTH)
    await client.get("/v1/discovery/web")
    resp = await client.get("/v1/discovery/web", headers=AUTH, data=b"x" * (LIMIT + 1))
    assert resp.status == 413 and (await resp.json())["error"] == {
        "code": "too_large", "field": "body",
        "message": f"the request body is larger than this server's limit of {LIMIT} bytes (--max-body)"}
    assert [(r, c) for r, c, _ in seen] == [("GET /v1/discovery/{service}", 200), ("GET /v1/discovery/{service}", 401),
                                           ("GET /v1/discovery/{service}", 413)]
    assert all(s >= 0 for _, _, s in seen)


def test_the_token_memo_answers_what_authorize_answers() -> None:
    tokens = {auth.token_hash("a"): {"hash": auth.token_hash("a"), "role": "reader", "name": "a"}}
    memo = TokenMemo(limit=2)
    for _ in range(2):
        assert memo.authorize(tokens, "Bearer a", "read")["name"] == "a"
        with pytest.raises(Exception) as exc:
            memo.authorize(tokens, "Bearer a", "jobs:write")   # the role cannot: 403, every time
        assert type(exc.value).__name__ == "Forbidden"
    for i in range(5):   # more headers than the limit: forgotten, still right
        tokens[auth.token_hash(f"t{i}")] = {"hash": auth.token_hash(f"t{i}"), "role": "admin", "name": f"t{i}"}
        assert memo.authorize(tokens, f"Bearer t{i}", "jobs:write")["name"] == f"t{i}"
    assert len(memo._hashes) <= 2


def test_answers_keep_the_latest_per_key_and_at_most_limit() -> None:
    answers = Answers(limit=2)
    data = {"index": 3, "service": "a", "endpoints": []}
    answers.put("a", None, False, data)
    assert answers.get("a", None, False, 3) is not None and answers.get("a", None, False, 4) is None
    answers.put("a", None, False, {**data, "index": 4})
    assert answers.get("a", None, False, 3) is None and answers.get("a", None, False, 4) is not None
    answers.put("b", None, False, {**data, "service": "b"})
    answers.put("c", None, True, {**data, "service": "c"})
    assert len(answers) == 2 and answers.get("a", None, False, 4) is None   # the oldest change went first
    with pytest.raises(ValueError):
        Answers(limit=0)
