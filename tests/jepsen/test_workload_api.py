"""The workload's HTTP client: a write the server received is never recorded as a certain fail."""
from __future__ import annotations

import asyncio

from aiohttp import web

from workload import Api, classify_write, setup


async def test_a_write_whose_server_dies_mid_request_is_info_not_refused() -> None:
    # a server that reads one request and dies without answering (kill -9 mid-request): its port then refuses
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(65536))
        server.close()
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with Api("t", 5.0) as api:
        status, body, err = await api.call("PUT", f"http://127.0.0.1:{port}/v1/jobs/r1", {"name": "r1"})
    assert len(got) == 1 and got[0].startswith(b"PUT /v1/jobs/r1")  # the server had the write
    # before: aiohttp sent it again, that connect was refused, and "refused" made it a fail
    assert err != "refused" and classify_write(status, body, err) == "info", (status, err)


async def test_setup_takes_a_new_token_name_when_a_lost_answer_left_the_first_one_taken() -> None:
    async def tokens(request: web.Request) -> web.Response:
        name = (await request.json())["name"]
        if name == "agent-a1":  # created by an attempt whose answer was lost: its secret is gone
            return web.json_response({"error": {"code": "conflict", "message": "exists", "field": "name"}}, status=409)
        return web.json_response({"token": f"secret-of-{name}"})

    async def job(request: web.Request) -> web.Response:
        return web.json_response({"name": "web"})

    app = web.Application()
    app.router.add_post("/v1/tokens", tokens)
    app.router.add_put("/v1/jobs/web", job)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        out = await setup({"token": "t", "apis": {"n1": f"http://127.0.0.1:{port}"}, "agents": ["a1"],
                           "container_python": "python3", "web_replicas": 1})
    finally:
        await runner.cleanup()
    assert out["agent_tokens"] == {"a1": "secret-of-agent-a1-1"}  # before: a SystemExit after 90 s of 409s
