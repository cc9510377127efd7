"""Stats ride on the heartbeat (issue 15, session 6): ``POST /v1/agent/heartbeat`` may carry ``"stats": [...]``,
checked by the one function POST /v1/agent/stats uses (``agent_api._take_stats``). The heartbeat is noted first;
refused samples record nothing and the answer is still the heartbeat's, with ``stats_accepted: 0`` and
``stats_error`` naming the field. The agent sends its latest samples on its next heartbeat, and posts them to
/v1/agent/stats on their own when the answer has no ``stats_accepted`` (a leader of the previous release).

Against the real routes on loopback, over the real state machine and the leader's real FailoverMonitor."""
from __future__ import annotations

import asyncio
import contextlib
import types
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from raftctl.agent.config import AgentConfig
from raftctl.agent.control import ControlClient
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.sim import SimDriver
from raftctl.clock import FakeClock
from raftctl.node.agent_api import add_routes
from raftctl.node.efficiency import MEMORY_METRIC
from raftctl.node.failover import FailoverConfig, FailoverMonitor
from raftctl.node.http import BODY_LIMIT, REPLICA
from raftctl.statemachine import commands as c
from raftctl.statemachine.spec import validate_spec
from tests.agent.conftest import CountedClock
from tests.unit.test_agent_api import as_agent_m1

from .fake_replica import FakeReplica, machine

RAW = {"name": "web", "image": "web:1", "command": ["web"], "replicas": 2, "resources": {"cpu": "500m", "memory": "32Mi"}}


async def leader_with_web() -> tuple[FakeReplica, list[str]]:
    """A leading replica (its FailoverMonitor answers heartbeats) with web's 2 placements on m1 and one machine m2
    with a placement of its own; m1's placement ids."""
    clock = FakeClock()
    r = FakeReplica(clock)
    for cmd in (c.ClaimEpoch(term=1), machine("m1"), machine("m2"), c.PutJob(spec=validate_spec(RAW))):
        assert (await r.propose(cmd)).ok
    items = [{"job": "web", "version": 1, "replica": i, "machine": m, "resources": {"cpu": 500}, "ports": {}}
             for i, m in enumerate(["m1", "m1"])]
    assert (await r.propose(c.Plan(epoch=1, place=items))).ok
    r.raft = None  # type: ignore[attr-defined]
    r.cfg = types.SimpleNamespace(secret=None)  # type: ignore[attr-defined]
    r.leadership = FailoverMonitor(r, 1, FailoverConfig(ttl_s=3.0, interval_s=1.0), clock=clock)  # type: ignore[attr-defined]
    return r, sorted(r.state.placements)


@contextlib.asynccontextmanager
async def api(r: FakeReplica, *, old_heartbeat: bool = False,
              asked: list[str] | None = None) -> AsyncIterator[TestClient]:
    """The agent routes over ``r`` on loopback; ``old_heartbeat``: the previous release's heartbeat route (it
    ignores any field but ``machine``); ``asked``: the path of each request, appended."""
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if asked is not None:
            asked.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[record, as_agent_m1])
    app[REPLICA] = r
    app[BODY_LIMIT] = 1 << 20
    if old_heartbeat:
        async def previous_release(request: web.Request) -> web.StreamResponse:
            data = await request.json()
            interval, ttl = r.leadership.heartbeat(data["machine"])  # type: ignore[attr-defined]
            return web.json_response({"machine": data["machine"], "status": "up", "ttl_s": ttl, "interval_s": interval,
                                      "epoch": 1})
        app.router.add_post("/v1/agent/heartbeat", previous_release)
    add_routes(app)     # the old route above was added first: it answers
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def recorded(r: FakeReplica, metric: str = "cpu") -> list[tuple[str, float]]:
    return [(key, value) for key, (_, value) in r.metrics.samples.get(("web", metric), {}).items()]


async def test_a_heartbeat_with_stats_records_them_for_the_autoscaler_and_says_how_many():
    r, (p1, p2) = await leader_with_web()
    async with api(r) as client:
        resp = await client.post("/v1/agent/heartbeat", json={"machine": "m1", "stats": [
            {"placement": p1, "job": "web", "cpu": 0.5, "memory": 1000}, {"placement": p2, "cpu": 0.25}]})
        got = await resp.json()
    assert resp.status == 200 and got["stats_accepted"] == 2 and "stats_error" not in got
    assert (got["status"], got["interval_s"], got["ttl_s"], got["epoch"]) == ("up", 1.0, 3.0, 1)
    assert recorded(r) == [(p1, 0.5), (p2, 0.25)] and recorded(r, MEMORY_METRIC) == [(p1, 1000.0)]


async def test_a_heartbeat_without_stats_is_answered_as_before():
    r, _ = await leader_with_web()
    async with api(r) as client:
        got = await (await client.post("/v1/agent/heartbeat", json={"machine": "m1"})).json()
    assert "stats_accepted" not in got and got["status"] == "up" and recorded(r) == []


BAD = [
    ("another machine's placement", lambda p: [{"placement": p, "cpu": 0.1}, {"placement": "web-99999", "cpu": 0.1}],
     "stats[1].placement", 403),
    ("the wrong job", lambda p: [{"placement": p, "job": "db", "cpu": 0.1}], "stats[0].job", 403),
    ("a negative cpu", lambda p: [{"placement": p, "cpu": -1}], "stats[0]", 400),
    ("not a list", lambda p: {"placement": p, "cpu": 0.1}, "stats", 400),
]


@pytest.mark.parametrize("name,stats,field,status", BAD, ids=[b[0] for b in BAD])
async def test_refused_stats_record_nothing_name_the_field_and_the_heartbeat_still_counts(name, stats, field, status):
    r, (p1, _) = await leader_with_web()
    mon = r.leadership  # type: ignore[attr-defined]
    r.clock.advance(2.0)        # type: ignore[attr-defined]
    async with api(r) as client:
        resp = await client.post("/v1/agent/heartbeat", json={"machine": "m1", "stats": stats(p1)})
        got = await resp.json()
        # the same check on the stats route: a 4xx naming the same field
        alone = await client.post("/v1/agent/stats", json={"machine": "m1", "stats": stats(p1)})
        refused = await alone.json()
    assert resp.status == 200 and got["stats_accepted"] == 0 and got["stats_error"]["field"] == field, got
    assert mon.last_seen["m1"] == r.clock.monotonic() and got["ttl_s"] == 3.0     # noted before the stats
    assert (alone.status, refused["error"]["field"]) == (status, field)
    assert recorded(r) == []


# -- the agent ------------------------------------------------------------------------------------------------

async def beat_twice(r: FakeReplica, tmp_path: Any, *, old_heartbeat: bool) -> tuple[list[str], Agent]:
    """m1's agent, over ``r``'s routes, with samples waiting: two heartbeats of its loop (on a fake clock), and any
    post it made on the side; the paths of the requests it made."""
    asked: list[str] = []
    p1 = sorted(r.state.placements)[0]
    async with api(r, old_heartbeat=old_heartbeat, asked=asked) as client:
        cfg = AgentConfig(machine="m1", servers=[str(client.make_url(""))], token="t", data_dir=str(tmp_path))
        a = Agent(cfg, SimDriver(), clock=CountedClock(stop_after=2))
        async with ControlClient(cfg.servers, "t") as control:
            a.control = control
            await a._offer_stats([{"placement": p1, "job": "web", "cpu": 0.5, "memory": 1000}])
            with pytest.raises(asyncio.CancelledError):
                await a._heartbeat_loop()
            await asyncio.gather(*a._stats_posts)
    return asked, a


async def test_the_agent_sends_its_samples_on_its_next_heartbeat_and_posts_nothing_else(tmp_path):
    r, (p1, _) = await leader_with_web()
    asked, a = await beat_twice(r, tmp_path, old_heartbeat=False)
    assert asked == ["/v1/agent/heartbeat", "/v1/agent/heartbeat"] and a.pending_stats is None
    assert recorded(r) == [(p1, 0.5)]           # sent once: the second heartbeat carried none


async def test_the_agent_posts_its_samples_on_their_own_to_a_leader_that_ignores_them(tmp_path):
    r, (p1, _) = await leader_with_web()
    asked, _ = await beat_twice(r, tmp_path, old_heartbeat=True)
    assert sorted(asked) == ["/v1/agent/heartbeat", "/v1/agent/heartbeat", "/v1/agent/stats"]
    assert recorded(r) == [(p1, 0.5)]


async def test_a_refusal_of_the_samples_is_logged_and_the_heartbeat_loop_goes_on(tmp_path, caplog):
    r, _ = await leader_with_web()
    p1 = sorted(r.state.placements)[0]   # m1's, sent under another job's name
    asked: list[str] = []
    async with api(r, asked=asked) as client:
        cfg = AgentConfig(machine="m1", servers=[str(client.make_url(""))], token="t", data_dir=str(tmp_path))
        a = Agent(cfg, SimDriver(), clock=CountedClock(stop_after=2))
        async with ControlClient(cfg.servers, "t") as control:
            a.control = control
            await a._offer_stats([{"placement": p1, "job": "db", "cpu": 0.5}])
            with caplog.at_level("WARNING", logger="raftctl.agent"), pytest.raises(asyncio.CancelledError):
                await a._heartbeat_loop()
    assert asked == ["/v1/agent/heartbeat", "/v1/agent/heartbeat"] and recorded(r) == []
    assert "stats[0].job" in caplog.text and a.machine_status == "up"

