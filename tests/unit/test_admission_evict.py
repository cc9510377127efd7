"""At the connection limit, idle keep-alive connections make room before a new one is refused
(raftctl/node/admission.py). At 10,000 machines the agents' idle pooled connections held the leader's slots and
the operator's job PUT was answered 503 overloaded until the bench gave up. A real AdmittingRunner and Listener on
loopback with a limit of 4; raw sockets as clients."""
from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from raftctl.node.admission import AdmittingRunner, Listener

LIMIT = 4


@contextlib.asynccontextmanager
async def serving(reserve: int = 0):
    """The listener and its server on loopback, with ``reserve`` of LIMIT's slots kept (test_admission_reserve)."""
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def kind(request: web.Request) -> web.Response:   # which handler class serves this connection
        return web.Response(text=type(request.protocol).__name__)

    async def park(request: web.Request) -> web.Response:   # a request in progress: a parked watch
        await release.wait()
        return web.Response(text="released")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/kind", kind)
    app.router.add_get("/park", park)
    runner = AdmittingRunner(app, limit=LIMIT, reserve=reserve, access_log=None)
    await runner.setup()
    listener = Listener(runner, "127.0.0.1", 0)
    await listener.start()
    assert listener.sock is not None
    try:
        yield runner.admitting, listener.sock.getsockname()[1], release
    finally:
        release.set()
        await listener.stop()
        await runner.cleanup()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def get(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str) -> bytes:
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def closed_by_server(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    try:
        return await asyncio.wait_for(conn[0].read(1), 2) == b""
    except (TimeoutError, asyncio.TimeoutError):
        return False
    except ConnectionResetError:
        return True


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0.01)


async def test_a_new_connection_at_the_limit_closes_the_longest_idle_one_and_is_served():
    async with serving() as (server, port, _):
        conns = [await connect(port) for _ in range(LIMIT)]
        for conn in conns:
            assert (await get(conn, "/ok")).startswith(b"HTTP/1.1 200")
        assert (await get(conns[0], "/ok")).startswith(b"HTTP/1.1 200")   # conns[0] used last: conns[1] idle longest
        await turns()
        assert server.live == LIMIT
        newcomer = await connect(port)
        assert (await get(newcomer, "/ok")).startswith(b"HTTP/1.1 200")
        assert await closed_by_server(conns[1])
        assert not await closed_by_server(conns[0])
        assert (server.evicted, server.refused) == (1, 0)
        await turns()
        assert server.live == LIMIT and server.taken == LIMIT


async def test_connections_with_a_request_in_progress_are_never_closed_and_the_new_one_is_refused():
    async with serving() as (server, port, release):
        conns = [await connect(port) for _ in range(LIMIT)]
        parked = [asyncio.create_task(get(conn, "/park")) for conn in conns]
        await turns()
        assert server.live == LIMIT
        for _ in range(3):                     # refused: one scan, then none for RESCAN_S
            newcomer = await connect(port)
            answer = await asyncio.wait_for(newcomer[0].read(), 5)
            assert answer.startswith(b"HTTP/1.1 503") and b'"overloaded"' in answer
        assert (server.evicted, server.refused) == (0, 3)
        release.set()
        assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"released") for a in await asyncio.gather(*parked))


async def test_a_flood_of_never_used_connections_keeps_the_limit_and_the_newest_are_served():
    """Connections opened and never used (a slowloris) are idle too: a flood of them rotates through the limit."""
    async with serving() as (server, port, _):
        flood = [await connect(port) for _ in range(3 * LIMIT)]
        await turns()
        assert server.live <= LIMIT
        assert (await get(flood[-1], "/ok")).startswith(b"HTTP/1.1 200")
        assert server.evicted >= 2 * LIMIT and server.refused == 0
        for _, w in flood:
            w.close()


async def test_if_finding_idle_connections_fails_the_newcomer_is_refused_and_the_listener_goes_on(monkeypatch):
    from raftctl.node import admission

    def broken(handler):
        raise AttributeError("_waiter")        # as if aiohttp renamed its handler's state
    monkeypatch.setattr(admission, "idle_since", broken)
    async with serving() as (server, port, _):
        conns = [await connect(port) for _ in range(LIMIT)]
        for conn in conns:
            assert (await get(conn, "/ok")).startswith(b"HTTP/1.1 200")
        newcomer = await connect(port)
        answer = await asyncio.wait_for(newcomer[0].read(), 5)
        assert answer.startswith(b"HTTP/1.1 503") and server.refused == 1
        conns[0][1].close()
        await turns()
        late = await connect(port)                  # the accept loop is still there
        assert (await get(late, "/ok")).startswith(b"HTTP/1.1 200")


async def test_a_burst_in_the_backlog_never_holds_more_descriptors_than_the_limit_and_the_newcomer(monkeypatch):
    """Connections queued in the backlog are accepted without the loop turning, while the ones closed to make room
    keep their descriptors until their close is seen: each newcomer waits for that, so the listener never holds
    more than the limit plus the one just accepted (a replica with 400 descriptors and a limit of 250 ran out
    with 152 open)."""
    import socket

    from raftctl.node.admission import Listener

    peak = [0]
    real = Listener._connect

    def counted(self, loop, conn, factory):   # called in the accept loop, as the newcomer is admitted
        server = self.runner.admitting
        peak[0] = max(peak[0], server.live + len(self.pending) + 1)
        return real(self, loop, conn, factory)
    monkeypatch.setattr(Listener, "_connect", counted)
    async with serving() as (server, port, _):
        first = [await connect(port) for _ in range(LIMIT)]
        for conn in first:
            assert (await get(conn, "/ok")).startswith(b"HTTP/1.1 200")
        await turns()
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(3 * LIMIT)]   # into the backlog
        await turns(50)
        assert peak[0] <= LIMIT + 1, peak[0]
        assert server.live <= LIMIT and server.evicted + server.refused >= 3 * LIMIT
        for s in burst:
            s.close()
