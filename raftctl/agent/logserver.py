"""The agent's own small HTTP endpoint: container logs (`raftctl logs`) and Prometheus metrics (`/metrics`).

Callers present a control-plane token; the agent checks it by asking the
control plane (``GET /v1/status`` with that token), so the agent holds no token
database of its own. A token the control plane accepted is trusted for
``TOKEN_CACHE_S`` (1 s) and then asked about again, so a revoked token stops
working here within 1 s of the revocation reaching the replica asked; a
``follow`` stream re-checks its token at the same pace and ends once it is
refused. The cache keeps at most ``TOKEN_CACHE_MAX`` entries, keyed by a hash
of the token (never the token itself).

Whoever reaches the endpoint chooses the tokens it presents, so each unknown one would have made the agent ask
the control plane: a refused token is remembered for the same ``TOKEN_CACHE_S`` (no second question), and at
most ``CHECKS_AT_ONCE`` questions are in flight per agent; past that a request with a token not in the cache is
answered 503 ``overloaded`` at once, and a cached token still works. At most ``FOLLOW_STREAMS_MAX`` follow streams
are open at once (each holds a file and a connection for as long as it follows); past that, 503 ``overloaded``
naming ``follow``. A log is read off the event loop in pieces
of ``READ_PIECE`` bytes, so a request holds at most one piece in memory and never stalls the loop that
heartbeats.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any, Callable

from aiohttp import web

from raftctl.agent.runtime import logs
from raftctl.clock import SYSTEM, Clock

AGENT: web.AppKey[Any] = web.AppKey("agent")
FOLLOW_POLL_S = 0.2         # a follow stream looks for new log bytes this often
TOKEN_CACHE_S = 1.0         # how long an accepted token is trusted before the control plane is asked again
TOKEN_CACHE_MAX = 1024      # entries; the oldest are dropped first
MAX_TAIL = 64 << 20  # bytes a log request may ask to start back from the end
CHECKS_AT_ONCE = 8          # control-plane token checks in flight per agent; more are answered 503 at once
READ_PIECE = 1 << 20        # bytes of a log read (on a worker thread) and sent at a time
FOLLOW_MAX_BYTES = 8 << 20  # a follow stream sends at most this much between two checks of its token
FOLLOW_STREAMS_MAX = 32     # follow streams open at once per agent (each holds a file and a connection); more: 503


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


class TokenCache:
    """What the control plane said of each token, for ``ttl``: accepted (``until``) or refused (``refused``);
    each bounded (oldest dropped first)."""

    def __init__(self, ttl: float = TOKEN_CACHE_S, max_entries: int = TOKEN_CACHE_MAX,
                 clock: Callable[[], float] = SYSTEM.monotonic) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self.until: dict[str, float] = {}
        self.refused: dict[str, float] = {}
        self.checking = 0   # control-plane checks in flight

    @staticmethod
    def key(header: str) -> str:
        return hashlib.sha256(header.encode("utf-8", "surrogateescape")).hexdigest()

    def valid(self, header: str) -> bool:
        return self.until.get(self.key(header), 0.0) > self.clock()

    def refused_recently(self, header: str) -> bool:
        return self.refused.get(self.key(header), 0.0) > self.clock()

    def accept(self, header: str) -> None:
        self.refused.pop(self.key(header), None)
        self._put(self.until, header)

    def refuse(self, header: str) -> None:
        self.until.pop(self.key(header), None)
        self._put(self.refused, header)

    def _put(self, table: dict[str, float], header: str) -> None:
        now = self.clock()
        key = self.key(header)
        table.pop(key, None)
        if len(table) >= self.max_entries:
            kept = {k: t for k, t in table.items() if t > now}
            table.clear()
            table.update(kept)
            while len(table) >= self.max_entries:
                del table[next(iter(table))]
        table[key] = now + self.ttl


class Streams:
    """How many follow streams are open on this agent."""

    def __init__(self) -> None:
        self.open = 0


TOKENS = web.AppKey("tokens", TokenCache)
STREAMS = web.AppKey("streams", Streams)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")


async def _authorized(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise _fail(web.HTTPUnauthorized, "unauthorized", "a bearer token is needed", "Authorization")
    ok = await _token_ok(request.app, header)
    if ok is None:
        raise _fail(web.HTTPServiceUnavailable, "overloaded", f"{CHECKS_AT_ONCE} token checks are under way on "
                    "this agent; retry in a moment", "Authorization")
    if not ok:
        raise _fail(web.HTTPForbidden, "forbidden", "the control plane refused this token", "Authorization")


async def _token_ok(app: web.Application, header: str) -> bool | None:
    """True if the control plane accepts the token (cached for TOKEN_CACHE_S), False if it refused it (cached
    too) or could not be asked, None when CHECKS_AT_ONCE checks are already in flight."""
    agent: Any = app[AGENT]
    cache = app[TOKENS]
    if cache.valid(header):
        return True
    if cache.refused_recently(header):
        return False
    if cache.checking >= CHECKS_AT_ONCE:
        return None
    cache.checking += 1
    try:
        for server in agent.cfg.servers:
            url = server if "://" in server else "http://" + server
            try:
                async with agent.http.get(f"{url}/v1/status", headers={"Authorization": header},
                                          timeout=5) as r:
                    if r.status == 200:
                        cache.accept(header)
                        return True
                    if r.status in (401, 403):
                        cache.refuse(header)
                        break
            except Exception:
                continue
        return False
    finally:
        cache.checking -= 1


async def _copy(resp: web.StreamResponse, f: Any, limit: int) -> int:
    """Send at most ``limit`` bytes of ``f`` from where it is, READ_PIECE at a time, each read on a worker
    thread; the bytes sent."""
    sent = 0
    while sent < limit:
        piece = await asyncio.to_thread(f.read, min(READ_PIECE, limit - sent))
        if not piece:
            break
        await resp.write(piece)
        sent += len(piece)
    return sent


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
    follow = request.query.get("follow") in ("1", "true")
    streams = request.app[STREAMS]
    if follow and streams.open >= FOLLOW_STREAMS_MAX:
        raise _fail(web.HTTPServiceUnavailable, "overloaded", f"{FOLLOW_STREAMS_MAX} follow streams are open on this "
                    "agent; retry later or read without follow", "follow")
    streams.open += follow
    try:
        return await _stream(request, path, tail, follow)
    finally:
        streams.open -= follow


async def _stream(request: web.Request, path: str, tail: int, follow: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - tail))
        await _copy(resp, f, tail)
        header = request.headers.get("Authorization", "")
        clock = request.app[CLOCK]
        while follow:
            # a client that went away: aiohttp does not cancel the handler, and with nothing new to write the
            # stream would hold its file and its place among FOLLOW_STREAMS_MAX until the log grew
            if request.transport is None or request.transport.is_closing():
                break
            # answered by the cache until the token's entry expires, then by the control plane: a token revoked
            # while following ends the stream within TOKEN_CACHE_S (and so does one this agent cannot check now)
            if not await _token_ok(request.app, header):
                break
            if not await _copy(resp, f, FOLLOW_MAX_BYTES):
                if os.path.getsize(path) < f.tell():  # rotated (truncated): start over
                    f.seek(0)
                await clock.sleep(FOLLOW_POLL_S)
    if request.transport is not None and not request.transport.is_closing():   # else nobody to tell
        await resp.write_eof()
    return resp


async def get_metrics(request: web.Request) -> web.Response:
    await _authorized(request)
    body = request.app[AGENT].metrics.text()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def start_log_server(agent: Any, clock: Clock | None = None) -> web.AppRunner:
    """Serve ``agent``'s logs and metrics; ``clock`` ages the token cache and paces follow streams."""
    clock = clock or SYSTEM
    app = web.Application()
    app[AGENT] = agent
    app[CLOCK] = clock
    app[TOKENS] = TokenCache(clock=clock.monotonic)
    app[STREAMS] = Streams()
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
