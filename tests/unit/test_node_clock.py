"""Issue 14: the node's handlers take their time from the replica's one clock (``replica.clock``), not from
``time``: a FakeClock on the replica is the time the snapshot is stamped with and a drain deadline counts from."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from raftctl.clock import FakeClock
from raftctl.node import api, snapshot
from raftctl.node.http import BODY_LIMIT, REPLICA
from raftctl.statemachine import backup
from raftctl.statemachine import commands as c
from tests.unit.fake_replica import FakeReplica, machine

WALL_MS = 1_234_567_000   # far from today's time: a handler reading time.time() cannot match it


class SnapshotReplica(FakeReplica):
    """FakeReplica plus what the handlers need: a barrier (every write is applied at once here), a node id, and
    no raft (the answer carries no raft index)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.cfg = SimpleNamespace(node_id="n1")
        self.raft = None
        self.barriers = 0

    async def barrier(self) -> int:
        self.barriers += 1
        return self.state.index


@contextlib.asynccontextmanager
async def node_api(clock: FakeClock) -> AsyncIterator[tuple[TestClient, SnapshotReplica]]:
    """The two handlers under test on a bare app (no auth middleware: their permissions are not the point)."""
    r = SnapshotReplica(clock)
    assert (await r.propose(machine("m1"))).ok
    app = web.Application()
    app[REPLICA] = r
    app[BODY_LIMIT] = 1 << 20
    app.router.add_get("/v1/snapshot", snapshot.handler)
    app.router.add_post("/v1/machines/{id}/drain", api.drain_machine)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, r


async def test_a_snapshot_is_stamped_with_the_replicas_clock():
    clock = FakeClock(wall_ms=WALL_MS)
    async with node_api(clock) as (client, r):
        first = await client.get("/v1/snapshot")
        assert first.status == 200, await first.text()
        clock.advance(90)
        second = await client.get("/v1/snapshot")
        assert second.status == 200, await second.text()
        taken = [backup.decode(await first.read()), backup.decode(await second.read())]
    assert [b.saved_at for b in taken] == [WALL_MS, WALL_MS + 90_000]
    assert r.barriers == 2 and taken[0].node == "n1"


async def test_a_drain_deadline_counts_from_the_replicas_clock():
    clock = FakeClock(wall_ms=WALL_MS)
    async with node_api(clock) as (client, r):
        resp = await client.post("/v1/machines/m1/drain", json={"deadline": "30s"})
        assert resp.status == 200, await resp.text()
    (drain,) = r.of(c.DrainMachine)
    assert drain.machines == ["m1"] and drain.drain and drain.deadline == WALL_MS + 30_000
