"""The agent's own small HTTP endpoint: container logs (`raftctl logs`) and Prometheus metrics (`/metrics`).

Callers present a control-plane token; the agent checks it by asking the
control plane (``GET /v1/status`` with that token, cached for 30 s), so the
agent holds no token database of its own.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from aiohttp import web

from raftctl.agent.runtime import logs

AGENT: web.AppKey = web.AppKey("agent", object)
TOKEN_CACHE_S = 30.0
MAX_TAIL = 64 << 20  # bytes a log request may ask to start back from the end


def _fail(error: type[web.HTTPError], code: str, message: str, field: str | None = None) -> web.HTTPError:
    """The API's error shape, ``{"error": {code, message, field}}``, as an aiohttp HTTP error to raise."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return error(text=json.dumps({"error": body}), content_type="application/json")


def _tail(value: str | None) -> int:
    try:
        tail = int(value) if value is not None else 65536
    except ValueError:
        tail = -1
    if not 0 <= tail <= MAX_TAIL:
        raise _fail(web.HTTPBadRequest, "invalid", f"tail must be a number of bytes from 0 to {MAX_TAIL}", "tail")
    return tail


async def _authorized(request: web.Request) -> None:
    agent = request.app[AGENT]
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise _fail(web.HTTPUnauthorized, "unauthorized", "a bearer token is needed", "Authorization")
    cache: dict[str, float] = agent.__dict__.setdefault("_token_cache", {})
    if cache.get(header, 0) > time.monotonic():
        return
    for server in agent.cfg.servers:
        url = server if "://" in server else "http://" + server
        try:
            async with agent.http.get(f"{url}/v1/status", headers={"Authorization": header},
                                      timeout=5) as r:  # type: ignore[union-attr]
                if r.status == 200:
                    cache[header] = time.monotonic() + TOKEN_CACHE_S
                    return
                if r.status in (401, 403):
                    break
        except Exception:
            continue
    raise _fail(web.HTTPForbidden, "forbidden", "the control plane refused this token", "Authorization")


async def get_logs(request: web.Request) -> web.StreamResponse:
    await _authorized(request)
    agent = request.app[AGENT]
    pid = request.match_info["placement"]
    stream = request.query.get("stream", "stdout")
    if stream not in logs.STREAMS:
        raise _fail(web.HTTPBadRequest, "invalid", "stream is stdout or stderr", "stream")
    log_dir = os.path.join(agent.cfg.data_dir, "logs", pid)
    if os.path.basename(pid) != pid or not os.path.isdir(log_dir):
        raise _fail(web.HTTPNotFound, "not_found", "no logs for that placement here", "placement")
    path = logs.paths(log_dir)[stream]
    tail = _tail(request.query.get("tail"))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - tail))
        await resp.write(f.read())
        while request.query.get("follow") in ("1", "true"):
            chunk = f.read()
            if chunk:
                await resp.write(chunk)
            else:
                if os.path.getsize(path) < f.tell():  # rotated (truncated): start over
                    f.seek(0)
                await asyncio.sleep(0.2)
    await resp.write_eof()
    return resp


async def get_metrics(request: web.Request) -> web.Response:
    await _authorized(request)
    body = request.app[AGENT].metrics.text()  # type: ignore[attr-defined]
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def start_log_server(agent: Any) -> web.AppRunner:
    app = web.Application()
    app[AGENT] = agent
    app.router.add_get("/v1/logs/{placement}", get_logs)
    app.router.add_get("/metrics", get_metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    ssl_ctx = None
    if agent.cfg.tls_cert:
        from raftctl.tls import server_context

        ssl_ctx = server_context(agent.cfg.tls_cert, agent.cfg.tls_key or "")
    site = web.TCPSite(runner, agent.cfg.address, agent.cfg.http_port, ssl_context=ssl_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    agent.cfg.api = f"{'https' if ssl_ctx else 'http'}://{agent.cfg.address}:{port}"
    return runner
