"""What an agent is assigned: each placement of its machine with the spec of the placement's own version."""
from __future__ import annotations

from raftctl.clock import FakeClock
from raftctl.node.agent_api import _assignments
from raftctl.statemachine import commands as c
from raftctl.statemachine.spec import validate_spec

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
    stored = {v["version"]: v["spec"] for v in r.state.jobs["web"]["versions"]}
    got = r.read(lambda s: _assignments(s, "m1"))
    assert got["machine"]["id"] == "m1"
    assert [(p["job"], p["version"], p["spec"]) for p in got["placements"]] == [("web", 1, stored[1])]
    assert stored[1]["env"] == {} and stored[2]["env"] == {"V": "2"}
    assert r.read(lambda s: _assignments(s, "m2"))["placements"] == []
    r.state.jobs.pop("web")  # a placement whose job is gone (as it may be, briefly, in a view) gets no spec
    assert [p["spec"] for p in r.read(lambda s: _assignments(s, "m1"))["placements"]] == [None]
