"""The leader's heartbeat answer tells the machine's assignment change index (``assignments_index``), the same
index its assignment route answers: an agent whose watch is parked on a follower leaves that follower when it
does not bring the change the leader told (agent/watchtarget.py). Only the machine's own changes move it."""
from __future__ import annotations

from raftctl.statemachine import commands as c

from .test_heartbeat_stats import api, leader_with_web


async def test_the_heartbeat_tells_the_index_the_assignment_route_answers_and_only_the_machines_changes_move_it():
    r, (p1, _) = await leader_with_web()
    async with api(r) as client:
        async def told() -> int:
            got = await (await client.post("/v1/agent/heartbeat", json={"machine": "m1"})).json()
            return got["assignments_index"]

        async def route() -> int:
            return (await (await client.get("/v1/agent/assignments/m1")).json())["index"]

        first = await told()
        assert first == await route() == r.state.machine_change_index("m1") > 0
        other = c.Plan(epoch=1, place=[{"job": "web", "version": 1, "replica": 5, "machine": "m2",
                                        "resources": {"cpu": 500}, "ports": {}}])
        assert (await r.propose(other)).ok
        assert await told() == first                    # m2's placement: not m1's change
        assert (await r.propose(c.Plan(epoch=1, stop=[{"placement": p1, "reason": "scaled down"}]))).ok
        moved = await told()
        assert moved > first and moved == await route() == r.state.index
