"""A bound on the API's open connections, so a flood of clients cannot take the file descriptors the Raft log needs.

At 10,000 simulated machines every replica reached its 20,000 descriptors in two minutes (clients that gave up
and tried again, each on a new connection): ``accept()`` failed with EMFILE ~1,000 times a minute, and so did the
Raft thread's write of the term/vote file (``raft.journal.meta.tmp``), in the middle of elections. Every client
can open connections; none may make the durable journal fail.

``Listener`` is the API's accept loop: it takes one connection at a time and, while ``limit`` connections are open
(``AdmittingServer.live``), answers the new one at once with ``503 overloaded`` (``Retry-After: 1``,
``Connection: close``; over TLS it is only closed) and closes it, before reading anything, so a refused
connection holds its descriptor for one write. asyncio's own accept loop (what aiohttp's TCPSite uses) accepts up
to the backlog's worth of connections per wake-up before any protocol sees one, so a check in the protocol
factory comes after the descriptors are gone. An accept that fails (EMFILE, ENFILE, ENOBUFS) is retried after a
pause, never ends the loop. The limit's default leaves ``RESERVE_FDS`` of the process's descriptor limit to the
journal, snapshots, the Raft peers' sockets and outbound HTTP (``default_limit``); ``raise_fd_limit`` first lifts
the soft limit to the hard one, as Go's runtime does for every Go server (etcd's included).

At the limit, idle keep-alive connections make room before anyone is refused (session 11): the connections that
wait for a request (between an agent's heartbeats, or opened and never used) are closed, the longest idle first,
``EVICT_SHARE`` of the limit at a time, and the new connection is admitted. HTTP lets either end close an idle
persistent connection at any time (RFC 9112, 9.5); a client whose request crossed the close sends it again on a new
connection (the fleet's client does so at once, the agent's tries again). At 10,000 machines the leader's slots were
held by the agents' pools (each keeps what a burst opened, reused newest first, for 60 s): the operator's job PUT
was answered 503 overloaded again and again and the bench gave up. Only connections with a request in progress (a
parked watch, a write being committed) are never closed to make room; when none is idle the new one is refused as
before, and the idle ones are not looked for again for ``Listener.RESCAN_S``, so a flood over a limit of parked requests
costs one scan a second, not one per connection.

Connections kept for operators (session 20): the first 10,000-machine run of session 19 stopped because every slot
was held by the agents' requests in progress (parked watches, heartbeats behind a held loop), so the operator's
``GET /v1/status`` was refused ``overloaded`` for a minute: the people who could fix the cluster could not see it.
The last ``reserve`` slots of the limit (``--reserved-connections``; by default ``default_reserve``: an eighth of
the limit, at most 32) are kept for ``RESERVED_ROLES``, as Kubernetes' API priority and fairness keeps seats for
its exempt level. Who calls is known only from a request's token, after the connection is accepted: a connection
accepted into those slots is served by a ``Reserved`` handler, and its requests are answered (the Guard, in
raftctl/node/http.py) only when their token's role is one of them; any other request on it is answered
``503 overloaded`` with ``Retry-After: 1`` and the connection is closed, which gives the slot back at once. A
newcomer takes a reserved slot only after no idle connection could make room for it. Idle connections may hold
the kept slots too (a flood's newcomers that never sent a request): a shared slot is made by closing as many idle
ones as bring the slots taken under the shared count, not one (the fresh-clone CI at f9ad462 found each newcomer
admitted as ``Reserved`` after one close left the shared slots full, and an ordinary request refused).
"""
from __future__ import annotations

import asyncio
import heapq
import json
import logging
import resource
import socket
import ssl as ssl_module
import time
from typing import Any, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from raftctl.errors import RaftctlError

log = logging.getLogger("raftctl.node")

__all__ = ["AdmittingRunner", "AdmittingServer", "EVICT_SHARE", "Listener", "RESERVE_FDS", "RESERVED_ROLES",
           "Reserved", "default_limit", "default_reserve", "idle_since", "raise_fd_limit", "REFUSAL", "refusal",
           "reserved_refusal"]

RESERVE_FDS = 512
"""Descriptors kept from the API: the journal and its meta file, snapshots being written or sent, the Raft
peers' connections, outbound HTTP (write forwarding, blob copies), the DNS socket, logs."""


def raise_fd_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to its hard limit; the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, want, exc)
    return soft


def default_limit(fd_limit: int) -> int:
    """The API's connection limit for a process allowed ``fd_limit`` descriptors (at least 64)."""
    return max(64, fd_limit - RESERVE_FDS)


RESERVED_ROLES = frozenset({"admin", "operator"})
"""The roles whose requests are served on a connection admitted into the slots kept for them (``Reserved``)."""

MAX_DEFAULT_RESERVE = 32


def default_reserve(limit: int) -> int:
    """The slots of ``limit`` kept for RESERVED_ROLES when ``--reserved-connections`` is not given: an eighth of
    the limit, at most MAX_DEFAULT_RESERVE (none below a limit of 8)."""
    return min(MAX_DEFAULT_RESERVE, limit // 8)


def reserved_refusal() -> RaftctlError:
    """The answer to a request on a reserved connection whose token's role is not one of RESERVED_ROLES."""
    return RaftctlError("too many open connections to this replica: this one was admitted from those kept for "
                        f"{' and '.join(sorted(RESERVED_ROLES))} tokens; try another replica or again in a second",
                        code="overloaded", http_status=503)


def refusal() -> bytes:
    """The answer to a connection over the limit: an API error like every other (``{"error": {code, message,
    field}}``, the middleware's shape), 503 ``overloaded``."""
    error = RaftctlError("too many open connections to this replica; try another replica or again in a second",
                         code="overloaded", http_status=503)
    body = json.dumps({"error": error.to_dict()}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


REFUSAL = refusal()
"""Built once: a flood is when it is sent most."""


EVICT_SHARE = 0.01   # idle connections closed per scan, as a share of the limit (at least one)


def idle_since(handler: RequestHandler) -> float | None:
    """When ``handler``'s connection went idle (loop time its keep-alive timer counts from, less the timeout), or
    None while it has a request in progress or queued: aiohttp's own test for an idle connection
    (``RequestHandler._process_keepalive``: waiting for the next message)."""
    waiter = handler._waiter
    if waiter is None or waiter.done() or handler._messages:
        return None
    return handler._next_keepalive_close_time - handler.keepalive_timeout


class JsonErrors(RequestHandler):
    """aiohttp's request handler, whose own error answers are the API's ``{"error": {code, message, field}}``
    JSON, not text/plain: a request its HTTP parser refuses (``400``: Content-Length beside Transfer-Encoding, a
    header line too long, a bad method) never reaches a handler or the guard. The API fuzzer sent one (a
    ``transfer-encoding`` header) and got ``text/plain`` where the document says JSON. The connection is closed
    after it, as aiohttp does."""

    __slots__ = ()   # aiohttp's handler has slots: a subclass with a __dict__ could not take its place
    CODES = {400: "invalid", 413: "too_large", 431: "too_large"}

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)   # logs it; raises if an answer began
        if status >= 500:
            code, text = "internal", "internal error (a bug: see the server log)"
        else:
            code, text = self.CODES.get(status, "http_error"), (message or plain.reason or "").strip()
        answer = web.json_response({"error": {"code": code, "message": text[:500], "field": None}},
                                   status=plain.status)
        answer.force_close()
        return answer


class Reserved(JsonErrors):
    """The handler of a connection admitted into the slots kept for RESERVED_ROLES: the Guard serves its requests
    only for those roles (``type(request.protocol) is Reserved``, one test per request)."""

    __slots__ = ()


class AdmittingServer(web.Server):
    """aiohttp's Server counting the connections whose transport is open (``live``); ``Listener`` makes room by
    closing idle ones (``evicted`` counts them), else admits a new one into the last ``reserve`` slots of ``limit``
    as ``Reserved`` (``reserved`` counts them), else refuses it (``refused`` counts them). Its connections' handlers
    answer their own errors as JSON (``JsonErrors``)."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = JsonErrors   # built by aiohttp with the runner's keywords; only its errors differ
        return handler

    def reserved_handler(self) -> RequestHandler:
        """The protocol factory of a connection admitted into the reserved slots."""
        handler = self()
        handler.__class__ = Reserved
        self.reserved += 1
        return handler

    limit: int
    reserve: int      # the last slots of ``limit``, kept for RESERVED_ROLES
    live: int
    refused: int
    evicted: int
    reserved: int
    closing: set[RequestHandler]    # closed to make room, their connection_lost not yet seen (still in ``live``)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.live += 1
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.live -= 1
        self.closing.discard(handler)
        super().connection_lost(handler, exc)

    @property
    def taken(self) -> int:
        """The slots in use: live connections less those already closed to make room."""
        return self.live - len(self.closing)


class AdmittingRunner(web.AppRunner):
    """An AppRunner whose server is an :class:`AdmittingServer` with this ``limit``, of which ``reserve`` slots
    are kept for RESERVED_ROLES."""

    def __init__(self, app: web.Application, *, limit: int, reserve: int = 0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        if not 0 <= reserve < limit:
            raise ValueError(f"reserve: {reserve} must be at least 0 and less than the limit {limit}")
        self.limit = limit
        self.reserve = reserve

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # the application builds its own Server (its handler, request factory and the runner's keywords); the
        # subclass only adds the counting, so the instance changes class rather than being built a second way
        server.__class__ = AdmittingServer
        assert isinstance(server, AdmittingServer)
        server.limit, server.reserve = self.limit, self.reserve
        server.live, server.refused, server.evicted, server.reserved = 0, 0, 0, 0
        server.closing = set()
        return server

    @property
    def admitting(self) -> AdmittingServer | None:
        server = self.server
        return server if isinstance(server, AdmittingServer) else None


class Listener:
    """The accept loop of ``runner``'s API on ``host:port`` (see the module's docstring)."""

    RETRY_S = 0.1        # pause after a failed accept (EMFILE and the like)
    RESCAN_S = 1.0       # after a scan found none idle, refuse without scanning for this long
    CLOSES_S = 0.05      # how long a newcomer waits for the closes that make room for it to be seen

    def __init__(self, runner: AdmittingRunner, host: str, port: int, *, ssl: ssl_module.SSLContext | None = None,
                 backlog: int = 128) -> None:
        self.runner, self.host, self.port, self.ssl, self.backlog = runner, host, port, ssl, backlog
        self.sock: socket.socket | None = None
        self.task: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[None]] = set()   # accepted, not yet handed to the server (TLS handshakes)
        self.failed_accepts = 0
        self._last_warning = 0.0
        self._no_idle_until = 0.0      # a scan found none idle: refuse without scanning until then

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.create_server((self.host, self.port), family=family, backlog=self.backlog)
        self.sock.setblocking(False)
        self.task = asyncio.create_task(self._serve(), name=f"api-accept-{self.host}:{self.port}")

    async def stop(self) -> None:
        for t in [self.task, *self.pending]:
            if t is not None:
                t.cancel()
        await asyncio.gather(*[t for t in [self.task, *self.pending] if t is not None], return_exceptions=True)
        if self.sock is not None:
            self.sock.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        server = self.runner.admitting
        assert self.sock is not None and server is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:       # out of descriptors or buffers: the connections in the queue wait
                self.failed_accepts += 1
                if time.monotonic() - self._last_warning > 10:
                    self._last_warning = time.monotonic()
                    log.warning("API accept failed (%d so far): %s; %d connections open, limit %d",
                                self.failed_accepts, exc, server.live, server.limit)
                await asyncio.sleep(self.RETRY_S)
                continue
            shared = server.limit - server.reserve
            reserved = False
            if server.live + len(self.pending) >= shared and not await self._room_for(server, shared):
                if server.live + len(self.pending) >= server.limit:
                    server.refused += 1
                    self._refuse(conn)
                    continue
                reserved = True      # served only for RESERVED_ROLES (the Guard)
            # a task per connection: a TLS handshake must not hold the accept loop (nor a slow client's)
            task = asyncio.create_task(self._connect(loop, conn, server.reserved_handler if reserved else server))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _connect(self, loop: asyncio.AbstractEventLoop, conn: socket.socket,
                       factory: Callable[[], RequestHandler]) -> None:
        """Hand ``conn`` to the server through ``factory`` (the server itself, or its ``reserved_handler``)."""
        try:
            await loop.connect_accepted_socket(factory, conn, ssl=self.ssl)
        except Exception as exc:         # a TLS handshake that failed, a peer already gone: this connection only
            log.debug("API connection dropped before its first request: %s", exc)
            conn.close()

    async def _room_for(self, server: AdmittingServer, limit: int) -> bool:
        """Whether the connection just accepted can have one of ``limit``'s slots: idle ones closed to make room
        when every slot is taken, then their closes seen (a loop turn or two, at most CLOSES_S) before it is admitted. A connection
        closed to make room holds its descriptor until then, and the accept loop does not yield while the
        backlog holds connections: admitted at once, a burst took one descriptor more per newcomer (a replica
        with 400 descriptors and a limit of 250 ran out with 152 connections open)."""
        if server.taken + len(self.pending) >= limit and not self._room_made(server, limit):
            return False
        deadline = time.monotonic() + self.CLOSES_S
        while server.live + len(self.pending) >= limit and server.closing:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0)
        return server.live + len(self.pending) < limit

    def _room_made(self, server: AdmittingServer, limit: int) -> bool:
        """``_make_room``, which reads aiohttp's private handler state: should that ever fail, the newcomer is
        refused (the limit still holds) and the accept loop goes on."""
        try:
            return self._make_room(server, limit)
        except Exception as exc:  # noqa: BLE001 (logged; the connection is refused as without this feature)
            if time.monotonic() - self._last_warning > 10:
                self._last_warning = time.monotonic()
                log.warning("closing idle connections to make room failed: %s: %s", type(exc).__name__, exc)
            return False

    def _make_room(self, server: AdmittingServer, limit: int) -> bool:
        """Close the longest-idle keep-alive connections so the one accepted now can have one of ``limit``'s slots:
        as many as it takes to bring the slots taken under ``limit`` (the kept slots may hold idle connections
        too: a flood that filled them left the shared slots full after one close), at least EVICT_SHARE of the
        limit; False when too few are idle. A close is seen (``live`` falls) a loop turn later: the connections
        being closed (``server.closing``) are not counted meanwhile."""
        now = time.monotonic()
        if now < self._no_idle_until:
            return False
        need = server.taken + len(self.pending) - limit + 1
        idle = [(since, h) for h in server.connections
                if h not in server.closing and (since := idle_since(h)) is not None]
        if len(idle) < need:
            self._no_idle_until = now + self.RESCAN_S
            return False
        want = max(need, int(server.limit * EVICT_SHARE), 1)
        oldest = heapq.nsmallest(want, idle, key=lambda pair: pair[0])
        for _, handler in oldest:
            server.closing.add(handler)
            handler.force_close()
        server.evicted += len(oldest)
        return True

    def _refuse(self, conn: socket.socket) -> None:
        try:
            if self.ssl is None:
                conn.setblocking(False)
                conn.send(REFUSAL)       # a fresh socket's send buffer takes it whole
        except OSError:
            pass
        finally:
            conn.close()


def cannot_listen(addr: str) -> str | None:
    """Why nothing can listen on ``host:port`` now (address in use, not this machine's), or None. Checked before
    the replica starts: pysyncobj retries a failed bind forever and says nothing, so a replica whose Raft port
    another process holds would run deaf to its peers."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        return str(exc)
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both listeners do: TIME_WAIT is no obstacle
        try:
            s.bind(sockaddr)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
