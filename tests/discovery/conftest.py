"""An in-process fake control replica implementing the discovery HTTP contract (DESIGN §5).

`GET /v1/discovery/{service}` with bearer auth, `?index=N&wait=Ds` blocking on the
service's own index, `?near=`, `?consistent=1`; JSON errors; 503 when "no leader".
Answers come from the real pure view (`raftctl.discovery.view.lookup`) over a
discovery table shaped as docs/state.md, so the client is tested against the same
answer the server will build.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web

from raftctl.discovery.view import lookup, parse_near, service_index
from raftctl.errors import RaftctlError

TOKEN = "rct_good"
READONLY_BANNED = "rct_banned"  # a valid token without the read permission


def endpoint(placement: str, machine: str, address: str, port: int | None, zone: str = "z1",
             region: str = "r1", rack: str = "k1", version: int = 1) -> dict[str, Any]:
    return {"address": address, "port": port, "placement": placement, "machine": machine, "version": version,
            "fault_domain": {"region": region, "zone": zone, "rack": rack}}


class Cluster:
    """The shared replicated state of the fake replicas: a discovery table and an index."""

    def __init__(self) -> None:
        self.index = 10
        self.discovery: dict[str, dict[str, Any]] = {}
        self.machines: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Condition()

    async def publish(self, service: str, e: dict[str, Any]) -> int:
        async with self.changed:
            self.index += 1
            svc = self.discovery.setdefault(service, {"index": self.index, "endpoints": {}})
            svc["endpoints"][e["placement"]] = dict(e)
            svc["index"] = self.index
            self.changed.notify_all()
            return self.index

    async def unpublish(self, service: str, placement: str) -> int:
        async with self.changed:
            self.index += 1
            svc = self.discovery[service]
            del svc["endpoints"][placement]
            svc["index"] = self.index
            self.changed.notify_all()
            return self.index

    async def unrelated_change(self) -> None:
        async with self.changed:
            self.index += 1
            self.changed.notify_all()


def _wait_s(v: str) -> float:
    if v.endswith("ms"):
        return float(v[:-2]) / 1000
    if v.endswith("s"):
        return float(v[:-1])
    if v.endswith("m"):
        return float(v[:-1]) * 60
    return float(v)


def _err(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "field": field}}, status=status)


class FakeReplica:
    """One replica's HTTP API. ``mode``: "ok", "no_leader" (503), "garbage" (502 HTML)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.mode = "ok"
        self.requests: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application()
        app.router.add_get("/v1/discovery/{service}", self.discovery)
        self.app = app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def discovery(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return _err(401, "unauthorized", "a bearer token is required")
        if auth[7:] == READONLY_BANNED:
            return _err(403, "forbidden", "token lacks the read permission")
        if auth[7:] != TOKEN:
            return _err(401, "unauthorized", "unknown token")
        if self.mode == "no_leader":
            return _err(503, "unavailable", "no leader")
        if self.mode == "garbage":
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        service = request.match_info["service"]
        q = request.query
        try:
            near = parse_near(q["near"]) if q.get("near") else None
            after = int(q["index"]) if "index" in q else None
            wait = min(_wait_s(q.get("wait", "300s")), 600.0)
        except RaftctlError as exc:
            return web.json_response({"error": exc.to_dict()}, status=exc.http_status)
        except ValueError:
            return _err(400, "invalid", "index and wait must be numbers", "index")
        c = self.cluster
        if after is not None:
            async with c.changed:
                try:
                    await asyncio.wait_for(c.changed.wait_for(lambda: service_index(c.discovery, service) > after),
                                           wait)
                except asyncio.TimeoutError:
                    pass
        data = lookup(c.discovery, c.machines, service, near)
        return web.json_response(data, headers={"X-Raftctl-Index": str(data["index"])})


def closed_port() -> int:
    """A port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def cluster() -> Cluster:
    c = Cluster()
    await c.publish("web", endpoint("web-0001", "m1", "127.0.0.1", 31001, zone="z1"))
    await c.publish("web", endpoint("web-0002", "m2", "127.0.0.2", 31002, zone="z2"))
    await c.publish("db", endpoint("db-0001", "m3", "127.0.0.3", 5432, zone="z1"))
    return c


@pytest.fixture
async def replicas(cluster: Cluster):
    rs = [FakeReplica(cluster) for _ in range(2)]
    for r in rs:
        await r.start()
    yield rs
    for r in rs:
        await r.stop()
