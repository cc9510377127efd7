"""The last slots of the connection limit are kept for admin and operator tokens (raftctl/node/admission.py).

Session 19's first 10,000-machine run stopped because every slot was held by the agents' requests in progress, so
the operator's status call was refused ``overloaded`` for a minute. A real AdmittingRunner and Listener on loopback,
a limit of 4 with 1 slot kept: a connection admitted there is served by a ``Reserved`` handler (the Guard decides
per request, tests/integration/test_admission_reserve.py); past the whole limit, a connection is refused as before;
an idle connection is still closed to make room before a reserved slot is used."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from raftctl.node.admission import AdmittingRunner, Listener, default_reserve
from tests.unit import test_admission_evict as evict
from tests.unit.test_admission_evict import LIMIT, closed_by_server, connect, get, turns

RESERVE = 1


def serving(reserve: int = RESERVE):
    return evict.serving(reserve)


async def test_past_the_shared_slots_a_connection_is_admitted_as_reserved_and_past_the_limit_refused():
    async with serving() as (server, port, release):
        parked = []
        for _ in range(LIMIT - RESERVE):          # every shared slot held by a request in progress
            conn = await connect(port)
            assert (await get(conn, "/kind")).endswith(b"JsonErrors")
            parked.append(asyncio.create_task(get(conn, "/park")))
        await turns()
        kept = await connect(port)
        assert (await get(kept, "/kind")).endswith(b"Reserved")
        assert server.reserved == 1 and server.refused == 0
        parked.append(asyncio.create_task(get(kept, "/park")))
        await turns()
        over = await connect(port)                 # the whole limit held: refused at once, as without a reserve
        answer = await asyncio.wait_for(over[0].read(), 5)
        assert answer.startswith(b"HTTP/1.1 503") and b'"overloaded"' in answer
        assert server.refused == 1 and server.live == LIMIT
        release.set()
        assert all(a.endswith(b"released") for a in await asyncio.gather(*parked))


async def test_an_idle_connection_makes_room_before_a_reserved_slot_is_used():
    async with serving() as (server, port, _):
        conns = [await connect(port) for _ in range(LIMIT - RESERVE)]
        for conn in conns:
            assert (await get(conn, "/kind")).endswith(b"JsonErrors")
        await turns()
        newcomer = await connect(port)             # the shared slots are taken, but by idle connections
        assert (await get(newcomer, "/kind")).endswith(b"JsonErrors")
        assert await closed_by_server(conns[0])
        assert (server.evicted, server.reserved) == (1, 0)


async def test_with_every_slot_held_by_idle_connections_a_newcomer_gets_a_shared_slot(monkeypatch):
    # the fresh-clone CI at f9ad462: a flood left the reserved slots held by connections that never sent a
    # request; closing one idle connection then still left the shared slots full, so every newcomer was admitted
    # as Reserved and an agent's request refused. Enough idle connections are closed to free a shared slot.
    monkeypatch.setattr(Listener, "RESCAN_S", 0.0)   # the kept slot's scan found none idle: look again at once
    async with serving() as (server, port, release):
        conns, parked = [], []
        for _ in range(LIMIT - RESERVE):
            conns.append(await connect(port))
            parked.append(asyncio.create_task(get(conns[-1], "/park")))
        await turns()
        kept = await connect(port)
        assert (await get(kept, "/kind")).endswith(b"Reserved")
        release.set()                              # now every slot, shared and kept, is held by an idle connection
        await asyncio.gather(*parked)
        await turns()
        newcomer = await connect(port)
        assert (await get(newcomer, "/kind")).endswith(b"JsonErrors")
        assert (server.reserved, server.refused, server.evicted) == (1, 0, 2)
        assert await closed_by_server(kept) and await closed_by_server(conns[0])   # the two idle longest


async def test_without_a_reserve_the_limit_behaves_as_before():
    async with serving(reserve=0) as (server, port, release):
        parked = []
        for _ in range(LIMIT):
            conn = await connect(port)
            parked.append(asyncio.create_task(get(conn, "/park")))
        await turns()
        over = await connect(port)
        assert (await asyncio.wait_for(over[0].read(), 5)).startswith(b"HTTP/1.1 503")
        assert (server.reserved, server.refused) == (0, 1)
        release.set()
        await asyncio.gather(*parked)


@pytest.mark.parametrize("limit, reserve", [(4, 0), (7, 0), (8, 1), (250, 31), (256, 32), (19_488, 32)])
def test_the_default_reserve_is_an_eighth_of_the_limit_at_most_32(limit, reserve):
    assert default_reserve(limit) == reserve


@pytest.mark.parametrize("reserve", [-1, 4, 5])
def test_a_reserve_that_leaves_no_shared_slot_is_refused(reserve):
    with pytest.raises(ValueError, match="reserve"):
        AdmittingRunner(web.Application(), limit=4, reserve=reserve)
