"""A request aiohttp's HTTP parser refuses never reaches a handler or the guard: the replica's server answers it
with the API's JSON error shape anyway (raftctl/node/admission.JsonErrors), not aiohttp's text/plain, and closes
the connection. The API fuzzer sent Content-Length beside Transfer-Encoding and got text/plain. A real
AdmittingRunner and Listener on loopback; raw sockets as clients."""
from __future__ import annotations

import asyncio
import json

import pytest

from tests.unit.test_admission_evict import serving


async def exchange(port: int, raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), 5)     # to the end: the server closes the connection
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return status.encode(), fields, body


@pytest.mark.parametrize("raw", [
    b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ]}\r\nContent-Length: 0\r\n\r\n",   # the fuzzer's
    b"G(T /ok HTTP/1.1\r\nHost: x\r\n\r\n",                                                  # a bad method
    b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",              # a header too long
])
async def test_a_request_the_parser_refuses_is_a_json_400_and_the_connection_closes(raw: bytes) -> None:
    async with serving() as (_, port, _):
        status, fields, body = await exchange(port, raw)
    assert status.split()[1].startswith(b"4")      # HTTP/1.0: aiohttp could not tell the version
    assert fields["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] in ("invalid", "too_large") and error["message"] and error["field"] is None
    # and the connection was closed: exchange read to its end (a 5 s bound)


async def test_a_good_request_on_the_same_server_is_answered_as_before() -> None:
    async with serving() as (_, port, _):
        status, fields, body = await exchange(port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK" and body == b"ok"
