"""The workload's HTTP client: a write the server received is never recorded as a certain fail."""
from __future__ import annotations

import asyncio

from workload import Api, classify_write


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
