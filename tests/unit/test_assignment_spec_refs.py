"""Each job version's spec once per assignment answer (issue 15, session 6): ``GET /v1/agent/assignments/{m}?specs=ref``
answers ``specs: {"job@version": spec or null}`` and a ``spec_ref`` on each placement; without the parameter the
answer is the previous release's (each placement with its ``spec``). The agent asks for the new form, converts each
spec once per key (not again while the next answers carry it unchanged), refuses a placement whose ``spec_ref``
names no spec (naming ``spec_ref``), and still converges on an answer of the old form."""
from __future__ import annotations

import asyncio
import contextlib
import json
import types
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from raftctl.agent import converge
from raftctl.agent.config import AgentConfig
from raftctl.agent.control import ControlClient
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.sim import SimDriver
from raftctl.clock import FakeClock
from raftctl.node.agent_api import _assignments, add_routes
from raftctl.node.http import BODY_LIMIT, REPLICA
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import JobSpec, ReportUpdate, to_wire
from raftctl.statemachine.spec import validate_spec

from tests.unit.test_agent_api import as_agent_m1

from .fake_replica import FakeReplica, machine

RAW = {"name": "web", "image": "web:1", "command": ["web"], "replicas": 10,
       "resources": {"cpu": "50m", "memory": "32Mi", "pids": 64}, "env": {f"K{i}": "v" * 40 for i in range(20)}}


class WatchReplica(FakeReplica):
    """FakeReplica with what the assignment route needs of a replica: no Raft, no secret, and a machine watch
    that answers at once when the machine changed since ``after`` (else after a short wait)."""

    def __init__(self) -> None:
        super().__init__(FakeClock())
        self.raft = self.leadership = None
        self.cfg = types.SimpleNamespace(secret=None)

    async def wait_for_machine(self, m: str, after: int, wait_s: float) -> int:
        if self.state.machine_change_index(m) <= after:
            await asyncio.sleep(min(wait_s, 0.2))
        return max(after, self.state.machine_change_index(m))


async def web_on_m1(versions: int = 1, per_version: int = 10) -> WatchReplica:
    """Job web with ``per_version`` placements of each of its ``versions`` on m1 (one machine can hold them)."""
    r = WatchReplica()
    for cmd in (c.ClaimEpoch(term=1), machine("m1")):
        assert (await r.propose(cmd)).ok
    for v in range(1, versions + 1):
        spec = validate_spec({**RAW, "env": {**RAW["env"], "V": str(v)}})
        assert (await r.propose(c.PutJob(spec=spec))).ok
        items = [{"job": "web", "version": v, "replica": i + (v - 1) * per_version, "machine": "m1",
                  "resources": spec["resources"], "ports": {}} for i in range(per_version)]
        assert (await r.propose(c.Plan(epoch=1, place=items))).ok
    return r


@contextlib.asynccontextmanager
async def api(r: FakeReplica) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[as_agent_m1])
    app[REPLICA] = r
    app[BODY_LIMIT] = 1 << 20
    add_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


# -- the control plane's answer ------------------------------------------------------------------------------

async def test_without_the_parameter_the_answer_is_the_previous_releases_each_placement_with_its_spec():
    r = await web_on_m1()
    stored = to_wire(r.state.jobs["web"].versions[0].spec)
    async with api(r) as client:
        resp = await client.get("/v1/agent/assignments/m1")
        got = await resp.json()
    assert resp.status == 200 and "specs" not in got
    assert len(got["placements"]) == 10 and all(p["spec"] == stored and "spec_ref" not in p for p in got["placements"])


async def test_with_specs_ref_each_version_is_sent_once_and_each_placement_names_it():
    r = await web_on_m1(versions=2, per_version=5)
    stored = {f"web@{v.version}": to_wire(v.spec) for v in r.state.jobs["web"].versions}
    async with api(r) as client:
        resp = await client.get("/v1/agent/assignments/m1", params={"specs": "ref"})
        got = await resp.json()
        old = await (await client.get("/v1/agent/assignments/m1")).read()
        new = await (await client.get("/v1/agent/assignments/m1", params={"specs": "ref"})).read()
    assert resp.status == 200 and got["specs"] == stored
    assert sorted((p["version"], p["spec_ref"]) for p in got["placements"]) == [(1, "web@1")] * 5 + [(2, "web@2")] * 5
    assert all("spec" not in p for p in got["placements"])
    # the rest of each row and of the answer is the old form's
    inline = r.read(lambda s: _assignments(s, "m1"))
    assert [{k: v for k, v in p.items() if k != "spec_ref"} for p in got["placements"]] == [
        {k: v for k, v in p.items() if k != "spec"} for p in inline["placements"]]
    assert {k: got[k] for k in ("machine", "network")} == {k: inline[k] for k in ("machine", "network")}
    assert len(new) * 2 < len(old)          # 10 placements of 2 versions: 2 specs sent, not 10


async def test_a_version_whose_job_is_gone_is_null_in_specs():
    r = await web_on_m1(per_version=2)
    r.state.jobs.pop("web")
    got = r.read(lambda s: _assignments(s, "m1", "ref"))
    assert got["specs"] == {"web@1": None} and [p["spec_ref"] for p in got["placements"]] == ["web@1", "web@1"]


async def test_an_unknown_form_is_a_400_naming_specs():
    r = await web_on_m1(per_version=1)
    async with api(r) as client:
        resp = await client.get("/v1/agent/assignments/m1", params={"specs": "refs"})
        assert (resp.status, (await resp.json())["error"]["field"]) == (400, "specs")


# -- the agent's conversion --------------------------------------------------------------------------------------

def rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return answer["placements"]


async def test_each_spec_is_converted_once_per_key_and_not_again_while_unchanged(monkeypatch):
    r = await web_on_m1(versions=2, per_version=5)
    calls: list[str] = []
    real = converge.from_wire

    def counted(kind: Any, obj: Any) -> Any:
        calls.append(obj["env"]["V"])
        return real(kind, obj)
    monkeypatch.setattr(converge, "from_wire", counted)
    known: dict[str, Any] = {}
    answer = json.loads(json.dumps(r.read(lambda s: _assignments(s, "m1", "ref"))))
    assigned, refused = converge.typed(rows(answer), answer["specs"], known=known)
    assert refused == {} and sorted(calls) == ["1", "2"]              # 2 conversions for 10 placements
    by_version = {v: [p["spec"] for p in assigned if p["version"] == v] for v in (1, 2)}
    assert all(isinstance(s, JobSpec) for s in by_version[1] + by_version[2])
    assert all(s is by_version[1][0] for s in by_version[1]) and by_version[1][0] is not by_version[2][0]
    # the next answer (a renewal: new objects, the same specs) converts nothing
    again = json.loads(json.dumps(answer))
    assigned2, _ = converge.typed(rows(again), again["specs"], known=known)
    assert sorted(calls) == ["1", "2"] and assigned2[0]["spec"] is assigned[0]["spec"]
    # a changed spec under the same key is converted again
    changed = json.loads(json.dumps(again))
    changed["specs"]["web@1"]["env"]["V"] = "1b"
    converge.typed(rows(changed), changed["specs"], known=known)
    assert sorted(calls) == ["1", "1b", "2"]


def test_a_placement_whose_spec_ref_names_no_spec_is_refused_naming_spec_ref():
    spec = {"name": "web", "image": "web:1", "command": ["web"], "replicas": 1}
    base = {"job": "web", "version": 1, "desired": "run", "state": "pending"}
    placements = [{**base, "id": "a", "spec_ref": "web@1"}, {**base, "id": "b", "spec_ref": "web@9"},
                  {**base, "id": "c"}, {**base, "id": "d", "spec_ref": "web@2"}]
    assigned, refused = converge.typed(placements, {"web@1": spec, "web@2": None})
    assert sorted(refused) == ["b", "c"] and {e.field for e in refused.values()} == {"spec_ref"}
    assert [isinstance(p["spec"], JobSpec) for p in assigned] == [True, False, False, False]
    assert [p["id"] for p in converge.plan(assigned, set()).start] == ["a"]   # d: its job is gone, not refused
    _, refused = converge.typed(placements[:1], ["not a map"])
    assert refused["a"].field == "specs"


async def test_the_agent_reports_a_placement_with_an_unknown_ref_once_and_starts_the_rest(tmp_path):
    a = Agent(AgentConfig(machine="m1", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path)),
              SimDriver())
    spec = to_wire(validate_spec({**RAW, "replicas": 1}))
    base = {"job": "web", "version": 1, "replica": 0, "machine": "m1", "ports": {}, "resources": {},
            "desired": "run", "state": "pending"}
    try:
        await a.converge([{**base, "id": "a", "spec_ref": "web@1"}, {**base, "id": "b", "spec_ref": "web@7"}],
                         {"web@1": spec})
        assert set(a.containers) == {"a"}
        assert a.reports == [ReportUpdate(placement="b", state="exited", reason=(
            "start failed: its spec does not convert: spec_ref: spec_ref 'web@7' names no spec of the answer"))]
    finally:
        await settle(a)


def refusals(a: Agent) -> list[ReportUpdate]:
    return [u for u in a.reports if u.state == "exited"]


async def settle(a: Agent) -> None:
    tasks = [s.task for s in a.containers.values() if s.task]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- end to end: the agent's watch against the route, on loopback -----------------------------------------------

async def watch_until_started(r: FakeReplica, tmp_path: Any, route: Any = None) -> tuple[Agent, list[dict[str, str]]]:
    """An agent of m1 whose assignment watch runs against ``r``'s route (or ``route``) until its 10 placements are
    supervised; the query of each watch request."""
    asked: list[dict[str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        asked.append(dict(request.query))
        return await handler(request)

    app = web.Application(middlewares=[record, as_agent_m1])
    app[REPLICA] = r
    app[BODY_LIMIT] = 1 << 20
    if route is None:
        add_routes(app)
    else:
        app.router.add_get("/v1/agent/assignments/{machine}", route)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    cfg = AgentConfig(machine="m1", servers=[str(server.make_url(""))], token="t", data_dir=str(tmp_path))
    a = Agent(cfg, SimDriver())
    try:
        async with ControlClient(cfg.servers, "t") as control:
            a.control = control
            task = asyncio.create_task(a._watch_loop())
            try:
                for _ in range(500):
                    if len(a.containers) == 10:
                        break
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await settle(a)
        await server.close()
    return a, asked


async def test_the_agents_watch_asks_for_refs_and_starts_every_placement_from_one_record(tmp_path):
    r = await web_on_m1()
    a, asked = await watch_until_started(r, tmp_path)
    assert asked and all(q.get("specs") == "ref" for q in asked)
    specs = {id(s.placement["spec"]) for s in a.containers.values()}
    assert len(a.containers) == 10 and len(specs) == 1 and refusals(a) == []
    assert isinstance(next(iter(a.containers.values())).placement["spec"], JobSpec)


async def test_an_answer_of_the_old_form_still_converges(tmp_path):
    """A control plane of the previous release ignores ?specs=ref and answers each placement with its spec."""
    r = await web_on_m1()

    async def old_route(request: web.Request) -> web.Response:
        return web.json_response({"index": r.state.machine_change_index("m1"),
                                  **r.read(lambda s: _assignments(s, "m1")), "cluster": None})
    a, asked = await watch_until_started(r, tmp_path, old_route)
    assert asked and len(a.containers) == 10 and refusals(a) == []
    assert all(isinstance(s.placement["spec"], JobSpec) for s in a.containers.values())


@pytest.mark.parametrize("form", ["inline", "ref"])
def test_both_forms_pass_the_agents_answer_gate(form):
    """control.ANSWER_LIMITS bounds the answers an agent decodes: 1,000 placements of one machine fit either form."""
    from raftctl import gate
    from raftctl.agent.control import ANSWER_LIMITS
    spec = to_wire(validate_spec(RAW))
    row = {"id": "web-1", "job": "web", "version": 1}
    if form == "inline":
        answer = {"placements": [{**row, "spec": spec} for _ in range(1000)]}
    else:
        answer = {"specs": {"web@1": spec}, "placements": [{**row, "spec_ref": "web@1"} for _ in range(1000)]}
    assert gate.decode_json(json.dumps(answer).encode(), limits=ANSWER_LIMITS, root="answer") == answer
