"""What an agent is assigned: each placement of its machine with the spec of the placement's own version."""
from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from raftctl.clock import FakeClock
from raftctl.errors import RaftctlError
from raftctl.node.agent_api import _assignments, add_routes
from raftctl.node.http import BODY_LIMIT, REPLICA, TOKEN
from raftctl.statemachine import commands as c
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.records import REASON_MAX, to_wire

from .fake_replica import FakeReplica, machine

RAW = {"name": "web", "image": "web:1", "command": ["web"], "replicas": 1, "resources": {"cpu": "50m", "memory": "32Mi"}}


async def test_each_placement_comes_with_the_spec_of_its_own_version():
    r = FakeReplica(FakeClock())
    v1, v2 = validate_spec(RAW), validate_spec({**RAW, "env": {"V": "2"}})
    for cmd in (c.ClaimEpoch(term=1), machine("m1"), machine("m2"), c.PutJob(spec=v1)):
        assert (await r.propose(cmd)).ok
    item = {"job": "web", "version": 1, "replica": 0, "machine": "m1", "resources": v1["resources"], "ports": {}}
    assert (await r.propose(c.Plan(epoch=1, place=[item]))).ok
    assert (await r.propose(c.PutJob(spec=v2))).ok  # version 2 is current; the placement still runs version 1
    stored = {v.version: to_wire(v.spec) for v in r.state.jobs["web"].versions}
    got = r.read(lambda s: _assignments(s, "m1"))
    assert got["machine"]["id"] == "m1"
    assert [(p["job"], p["version"], p["spec"]) for p in got["placements"]] == [("web", 1, stored[1])]
    assert stored[1]["env"] == {} and stored[2]["env"] == {"V": "2"}
    assert r.read(lambda s: _assignments(s, "m2"))["placements"] == []
    r.state.jobs.pop("web")  # a placement whose job is gone (as it may be, briefly, in a view) gets no spec
    assert [p["spec"] for p in r.read(lambda s: _assignments(s, "m1"))["placements"]] == [None]


# -- POST /v1/agent/report: the body is one records.Report, converted once -----------------------------------

@web.middleware
async def as_agent_m1(request: web.Request, handler: Any) -> web.StreamResponse:
    """What the API's middleware does around the handler: the caller is m1's agent; an error is its JSON."""
    request[TOKEN] = {"name": "agent-m1", "role": "agent", "machine": "m1"}
    try:
        return await handler(request)
    except RaftctlError as exc:
        return web.json_response({"error": exc.to_dict()}, status=exc.http_status)


@contextlib.asynccontextmanager
async def report_api() -> AsyncIterator[tuple[TestClient, FakeReplica, str]]:
    """A replica with job web's one placement on m1, and a client of its /v1/agent/report (on loopback)."""
    r = FakeReplica(FakeClock())
    r.raft = r.leadership = None  # type: ignore[attr-defined]
    v1 = validate_spec(RAW)
    for cmd in (c.ClaimEpoch(term=1), machine("m1"), c.PutJob(spec=v1)):
        assert (await r.propose(cmd)).ok
    item = {"job": "web", "version": 1, "replica": 0, "machine": "m1", "resources": v1["resources"], "ports": {}}
    assert (await r.propose(c.Plan(epoch=1, place=[item]))).ok
    (pid,) = r.state.placements
    app = web.Application(middlewares=[as_agent_m1])
    app[REPLICA] = r
    app[BODY_LIMIT] = 1 << 20
    add_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, r, pid


async def post_report(client: TestClient, updates: Any, machine: str = "m1") -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/agent/report", json={"machine": machine, "updates": updates})
    return resp.status, await resp.json()


async def test_a_report_is_applied_update_by_update():
    async with report_api() as (client, r, pid):
        status, body = await post_report(client, [{"placement": pid, "state": "running", "health": "unknown"},
                                                  {"placement": pid, "state": "running", "health": "healthy"}])
        assert status == 200 and [x["ok"] for x in body["results"]] == [True, True]
        assert (r.state.placements[pid].state, r.state.placements[pid].health) == ("running", "healthy")


async def test_a_report_of_more_than_1000_updates_is_refused_whole_never_answered_200_with_its_tail_dropped():
    # before: 200, and the 1001st update (the placement turning healthy) was never applied: a lost transition
    async with report_api() as (client, r, pid):
        updates = [{"placement": pid, "state": "running", "health": "unknown"}] * 1000
        status, body = await post_report(client, [*updates, {"placement": pid, "state": "running", "health": "healthy"}])
        assert status == 400 and body["error"]["field"] == "updates", body
        assert r.of(c.PlacementUpdate) == []


@pytest.mark.parametrize("bad, field", [
    ({"state": "runing"}, "updates[3].state"),
    ({"health": "fine"}, "updates[3].health"),
    ({"exit_code": True}, "updates[3].exit_code"),
    ({"exit_code": "1"}, "updates[3].exit_code"),
    ({"placement": 7}, "updates[3].placement"),
    ({"colour": "red"}, "updates[3].colour"),
])
async def test_a_bad_update_is_a_400_naming_its_field_and_nothing_of_the_report_is_applied(bad, field):
    # before: an unknown state or health went on to apply (200, "ok": false), a number was turned into a
    # string, an unknown field was ignored
    async with report_api() as (client, r, pid):
        good = {"placement": pid, "state": "running", "health": "healthy"}
        status, body = await post_report(client, [good, good, good, {**good, **bad}])
        assert (status, body["error"]["field"]) == (400, field), body
        assert r.of(c.PlacementUpdate) == []


async def test_a_long_reason_from_an_older_agent_is_cut_not_refused():
    # agents released before the records did not cut their reasons; a control plane upgraded first must not
    # refuse their reports (that would leave their placements' states stale)
    async with report_api() as (client, r, pid):
        status, body = await post_report(client, [{"placement": pid, "state": "exited", "reason": "x" * 5000}])
        assert status == 200, body
        assert [u.reason for u in r.of(c.PlacementUpdate)] == ["x" * REASON_MAX]


@pytest.mark.parametrize("data, field", [
    ([], "body"), ({"machine": "m1"}, "updates"), ({"machine": "m1", "updates": {}}, "updates"),
    ({"updates": []}, "machine"), ({"machine": "m1", "updates": [], "x": 1}, "x"),
])
async def test_a_malformed_report_body_is_a_400_naming_the_field(data, field):
    async with report_api() as (client, _, _):
        resp = await client.post("/v1/agent/report", json=data)
        assert (resp.status, (await resp.json())["error"]["field"]) == (400, field)


async def test_an_agent_reports_only_for_its_own_machine():
    async with report_api() as (client, r, pid):
        status, body = await post_report(client, [{"placement": pid, "state": "running"}], machine="m2")
        assert (status, body["error"]["field"]) == (403, "machine") and r.of(c.PlacementUpdate) == []


# -- POST /v1/agent/register: the body is one records.Registration, converted once --------------------------------

REGISTRATION = {"machine": "m1", "address": "127.0.0.2", "fault_domain": {"zone": "z1"}, "labels": {"ssd": "true"},
                "resources": {"cpu": 2000, "memory": 1 << 30, "pids": 1000}, "ports": [31000, 31999],
                "runtime": "sim", "api": "http://127.0.0.2:9000"}


async def test_a_registration_registers_the_machine_it_names():
    async with report_api() as (client, r, _):
        resp = await client.post("/v1/agent/register", json={**REGISTRATION, "labels": {"ssd": "false"}})
        assert resp.status == 200, await resp.text()
        m = r.state.machines["m1"]
        assert (m.labels, m.ports, m.api, m.status) == ({"ssd": "false"}, (31000, 31999), "http://127.0.0.2:9000", "up")


@pytest.mark.parametrize("change, field", [
    ({"labels": {"ssd": True}}, "labels[...]"),          # before: stored as given, then unrestorable
    ({"fault_domain": "z1"}, "fault_domain"),
    ({"resources": {"cpu": "2"}}, "resources[...]"),     # before: "bad registration" naming the body
    ({"ports": [31000]}, "ports"),
    ({"ports": "31000-31999"}, "ports"),
    ({"address": 7}, "address"),                         # before: turned into the string "7"
    ({"colour": "red"}, "colour"),                       # before: ignored
    ({"machine": None}, "machine"),
])
async def test_a_bad_registration_is_a_400_naming_its_field_and_registers_nothing(change, field):
    async with report_api() as (client, r, _):
        before = r.state.snapshot()
        resp = await client.post("/v1/agent/register", json={**REGISTRATION, **change})
        assert (resp.status, (await resp.json())["error"]["field"]) == (400, field)
        assert r.state.snapshot() == before


async def test_a_registration_for_another_machine_is_forbidden():
    async with report_api() as (client, _, _):
        resp = await client.post("/v1/agent/register", json={**REGISTRATION, "machine": "m2"})
        assert (resp.status, (await resp.json())["error"]["field"]) == (403, "machine")
