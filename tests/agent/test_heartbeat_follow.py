"""Whom a heartbeat goes to: the leader, or the one the others name when it does not answer, and never the
same silent leader twice in one heartbeat (an overloaded leader must not get each heartbeat again at once on a
new connection); and where a watch goes when its follower is gone: another follower, the leader last. Three
scripted replicas on loopback, the real ControlClient and its real HTTP."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from raftctl.agent.control import ControlClient
from raftctl.errors import Unavailable


class Replica:
    """Answers heartbeats as the leader (slowly, if ``delay``) or 503 not_leader naming ``names``."""

    def __init__(self) -> None:
        self.url = ""
        self.leads = False
        self.delay = 0.0
        self.names: str | None = None
        self.asked = 0
        self.watched = 0
        self.not_yet = False
        self.runner: web.AppRunner | None = None

    async def assignments(self, request: web.Request) -> web.Response:
        self.watched += 1
        return web.json_response({"index": 7, "placements": []})

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.asked += 1
        if self.not_yet:       # just elected, its epoch not claimed: the replica's answer since session 12
            return web.json_response({"error": {"code": "unavailable", "message": "not leading yet"}}, status=503)
        if not self.leads:
            return web.json_response({"error": {"code": "not_leader", "message": "not the leader",
                                                "details": {"leader_api": self.names}}}, status=503)
        await asyncio.sleep(self.delay)
        return web.json_response({"machine": "m1", "status": "up", "interval_s": 1.0, "ttl_s": 3.0})

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/v1/agent/heartbeat", self.heartbeat),
                        web.get("/v1/agent/assignments/{machine}", self.assignments)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    rs = [Replica() for _ in range(3)]
    for r in rs:
        await r.start()
    yield rs
    for r in rs:
        assert r.runner is not None
        await r.runner.cleanup()


def lead(rs: list[Replica], i: int, *, delay: float = 0.0, named: int | None = None) -> None:
    """Replica i leads (answering after ``delay``); the others name replica ``named`` (default i)."""
    for j, r in enumerate(rs):
        r.leads, r.delay, r.asked = j == i, delay, 0
        r.names = rs[i if named is None else named].url


async def beat(rs: list[Replica], leader: str | None) -> Any:
    async with ControlClient([r.url for r in rs], "tok") as c:
        c.heartbeat_s = 0.3
        c.leader = leader
        return await c.heartbeat("m1"), c


async def test_the_known_leader_takes_it_and_no_one_else_is_asked(replicas: list[Replica]) -> None:
    lead(replicas, 1)
    ans, c = await beat(replicas, replicas[1].url)
    assert ans["status"] == "up" and c.live == replicas[1].url
    assert [r.asked for r in replicas] == [0, 1, 0]


async def test_a_follower_named_as_leader_sends_it_on_to_the_leader(replicas: list[Replica]) -> None:
    lead(replicas, 2)
    ans, c = await beat(replicas, replicas[0].url)
    assert ans["status"] == "up" and c.live == replicas[2].url and c.leader == replicas[2].url
    assert [r.asked for r in replicas] == [1, 0, 1]


async def test_a_silent_leader_the_others_still_name_is_asked_once_and_the_heartbeat_given_up(
        replicas: list[Replica]) -> None:
    lead(replicas, 1, delay=5.0)
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(Unavailable, match="still name it"):
        await beat(replicas, replicas[1].url)
    assert replicas[1].asked == 1                       # not a second time on a new connection
    assert replicas[0].asked == replicas[2].asked == 1  # the others were asked who leads
    assert asyncio.get_running_loop().time() - t0 < 2.0


async def test_a_silent_leader_the_others_have_replaced_sends_it_to_the_new_one(replicas: list[Replica]) -> None:
    lead(replicas, 0, named=2)          # 0 still thinks it leads but answers late; 1 names the new leader 2
    replicas[0].delay = 5.0
    replicas[2].leads = True
    replicas[2].delay = 0.0
    ans, c = await beat(replicas, replicas[0].url)
    assert ans["status"] == "up" and c.live == replicas[2].url
    assert replicas[0].asked == 1 and replicas[2].asked == 1


async def test_with_no_leader_known_the_replicas_are_asked_in_turn(replicas: list[Replica]) -> None:
    lead(replicas, 2)
    ans, c = await beat(replicas, None)
    assert ans["status"] == "up" and c.live == replicas[2].url and replicas[2].asked == 1


@pytest.mark.parametrize("rotation_at", [0, 1, 2])
async def test_a_watch_whose_follower_is_gone_goes_to_the_other_follower_not_the_leader(
        replicas: list[Replica], rotation_at: int) -> None:
    import socket

    gone = socket.socket()
    gone.bind(("127.0.0.1", 0))          # bound, not listening: the follower died with the old leader
    dead = "http://127.0.0.1:%d" % gone.getsockname()[1]
    try:
        async with ControlClient([dead, replicas[0].url, replicas[1].url], "tok") as c:
            c._next = rotation_at          # wherever the rotation stands, the leader is asked last
            c.live = replicas[0].url       # replicas[0] leads
            ans, server = await c.watch("/v1/agent/assignments/m1", {"index": "0"}, timeout=2.0, server=dead)
    finally:
        gone.close()
    assert ans["index"] == 7 and server == replicas[1].url
    assert (replicas[0].watched, replicas[1].watched) == (0, 1)


@pytest.mark.parametrize("answer", ["not leading yet", "names itself"])
async def test_a_replica_just_elected_is_asked_once_and_the_heartbeat_waits_for_the_next_try(
        replicas: list[Replica], answer: str) -> None:
    lead(replicas, 1)
    if answer == "not leading yet":
        replicas[1].not_yet = True
    else:                                    # a replica of the previous release: not_leader naming itself
        replicas[1].leads = False
    with pytest.raises(Unavailable, match="still name it"):
        await beat(replicas, replicas[1].url)
    assert replicas[1].asked == 1
