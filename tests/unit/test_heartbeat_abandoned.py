"""A heartbeat whose agent gave up waiting before the leader read it (issue 15: an overloaded leader at 10,000
machines found about half its heartbeats abandoned) still counts for the machine's life, but its samples are not
stored and no answer is written (``http.client_gone``, nginx's 499). The same bytes from an agent still waiting
are answered and their samples stored.

Against the real routes on loopback over a raw socket: the request and the client's FIN reach the server before
its loop runs the handler, as they do when an agent's bound expired while the request sat in the leader's queue."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest

from .test_heartbeat_stats import api, leader_with_web, recorded


def raw_heartbeat(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/agent/heartbeat HTTP/1.1\r\nHost: leader\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data)) + data


async def read_all(sock: socket.socket) -> bytes:
    loop, got = asyncio.get_running_loop(), b""
    async with asyncio.timeout(5):
        while chunk := await loop.sock_recv(sock, 65536):
            got += chunk
            if b"\r\n\r\n" in got and got.startswith(b"HTTP/1.1 200"):
                head, _, rest = got.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                if len(rest) >= length:
                    return got
    return got


@pytest.mark.parametrize("gone", [False, True], ids=["agent-waiting", "agent-gone"])
async def test_an_abandoned_heartbeat_counts_for_life_but_stores_no_samples_and_is_not_answered(gone):
    r, (p1, _) = await leader_with_web()
    mon = r.leadership  # type: ignore[attr-defined]
    r.clock.advance(2.0)   # type: ignore[attr-defined]
    now, before = r.clock.monotonic(), mon.last_seen.get("m1")   # type: ignore[attr-defined]
    async with api(r) as client:
        sock = socket.create_connection((client.server.host, client.server.port))
        try:
            sock.sendall(raw_heartbeat({"machine": "m1", "stats": [{"placement": p1, "job": "web", "cpu": 0.5}]}))
            if gone:
                sock.shutdown(socket.SHUT_WR)    # the agent's bound expired: its FIN follows the request
            sock.setblocking(False)
            answer = await read_all(sock)
        finally:
            sock.close()
    assert mon.last_seen["m1"] == now != before                  # noted either way
    if gone:
        assert answer == b"" and recorded(r) == []               # closed without a word, no samples
    else:
        assert answer.startswith(b"HTTP/1.1 200") and json.loads(answer.partition(b"\r\n\r\n")[2])["stats_accepted"] == 1
        assert recorded(r) == [(p1, 0.5)]
