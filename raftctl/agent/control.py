"""The agent's link to the control plane: rotation across replicas, leader-following heartbeats."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import http.client
import logging
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote
from typing import IO, Any, AsyncIterator, Awaitable, Callable, TypeVar

import aiohttp

from raftctl import gate
from raftctl.clock import SYSTEM, Clock
from raftctl.errors import Forbidden, RaftctlError, Unauthorized, Unavailable, ValidationError
from raftctl.oci import ImageError, split_digest

log = logging.getLogger("raftctl.agent.control")
T = TypeVar("T")
# Answers from the control plane pass the gate too (no NaN, lone surrogates, huge integers, absurd depth); bounds
# wide enough for a machine's assignments with every spec.
ANSWER_LIMITS = gate.Limits(max_bytes=64 << 20, max_items=1_000_000, max_string=1 << 20, max_nodes=20_000_000)
CONNECT_S = 1.0   # a replica that does not accept within this is cut off (a blackholed SYN), whatever the read bound
POOL_KEEPALIVE_S = 60.0
"""How long the shared pool keeps an idle connection (aiohttp's default 15 s closed and reopened connections
of a pool reused oldest first; a replica's server keeps one 75 s)."""
HEARTBEAT_S = 2.0   # bound on one heartbeat request of a lone agent


Fetch = Callable[[str, str, Any, "dict | None", "dict[str, str]", float, float], Awaitable[tuple[int, bytes]]]
"""fetch(method, url, json body or None, query params or None, headers, total bound, connect bound) -> (status,
body): one HTTP exchange; raises OSError or TimeoutError when it did not complete."""


@dataclass(frozen=True)
class Pool:
    """A connection pool shared by every ControlClient opened in its context, with the bounds they use; ``lean``:
    a leaner HTTP client used instead of the aiohttp session (the fleet's, for http:// replicas); ``decode``: the
    answers' decoder instead of gate.decode_json (the fleet's: it trusts its own control plane on loopback)."""
    session: aiohttp.ClientSession
    connect_s: float = CONNECT_S
    heartbeat_s: float = HEARTBEAT_S
    lean: Fetch | None = None
    decode: Callable[[bytes], Any] | None = None   # answers' decoder instead of the gate (the fleet's)


SHARED_POOL: contextvars.ContextVar[Pool | None] = contextvars.ContextVar("raftctl_agent_shared_pool", default=None)
"""The pool every ControlClient opened in this context uses instead of its own session (``shared_pool``)."""


@contextlib.asynccontextmanager
async def shared_pool(ssl: Any = None, *, connect_s: float = CONNECT_S, heartbeat_s: float = HEARTBEAT_S,
                      lean: Fetch | None = None, decode: Callable[[bytes], Any] | None = None) -> AsyncIterator[Pool]:
    """One keep-alive connection pool for every ControlClient opened inside (the tasks created meanwhile carry
    the context): a process playing thousands of machines reuses idle connections across them instead of
    holding a pool per machine, and has no cap on connections (each parked assignment watch holds one).
    ``connect_s`` and ``heartbeat_s`` replace the lone agent's bounds: a process of thousands of machines
    answers its sockets late by its own event loop's lag, and a connect given up after 1 s under that lag
    was tried again, closed and reopened for ever (a reconnect storm past a replica's 128-deep accept queue)."""
    connector = aiohttp.TCPConnector(limit=0, ssl=ssl if ssl is not None else True, keepalive_timeout=POOL_KEEPALIVE_S)
    async with aiohttp.ClientSession(connector=connector) as session:
        pool = Pool(session, connect_s=connect_s, heartbeat_s=heartbeat_s, lean=lean, decode=decode)
        token = SHARED_POOL.set(pool)
        try:
            yield pool
        finally:
            SHARED_POOL.reset(token)


class ControlClient:
    def __init__(self, servers: list[str], token: str, *, timeout: float = 10.0, ssl: Any = None) -> None:
        if not servers:
            raise ValueError("at least one --server is required")
        self.servers = [s if "://" in s else "http://" + s for s in servers]
        self.token = token
        self.timeout = timeout
        self.ssl = ssl  # an ssl.SSLContext verifying https:// replicas, or None for the default checks
        self.leader: str | None = None
        self.live: str | None = None      # the replica that answered the last heartbeat (the leader)
        self._live_changed = asyncio.Event()
        self._next = 0
        self._session: aiohttp.ClientSession | None = None
        self._owned = False           # the session is this client's own (not the context's shared pool)
        self._auth = {"Authorization": f"Bearer {token}"}
        self.connect_s = CONNECT_S
        self.heartbeat_s = HEARTBEAT_S
        self._lean: Fetch | None = None
        self._decoder: Callable[[bytes], Any] = self._gated
        self._memo: tuple[tuple[int, bytes], Any] | None = None   # the last watch answer: (length, hash), value
        self._followers_said: set[str] = set()   # replicas that answered not_leader in the last _request

    async def __aenter__(self) -> "ControlClient":
        pool = SHARED_POOL.get()
        if pool is not None:
            self._session, self.connect_s, self.heartbeat_s = pool.session, pool.connect_s, pool.heartbeat_s
            self._lean, self._decoder = pool.lean, pool.decode or self._gated
            return self
        connector = aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None
        self._session, self._owned = aiohttp.ClientSession(connector=connector), True
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session and self._owned:
            await self._session.close()

    async def request(self, method: str, path: str, json: Any = None, *, params: dict | None = None,
                      timeout: float | None = None, server: str | None = None) -> Any:
        """Try ``server`` (or the replicas in turn) until one answers; raise Unavailable if none does."""
        data, _ = await self._request(method, path, json, params=params, timeout=timeout, server=server)
        return data

    async def watch(self, path: str, params: dict[str, str], *, timeout: float,
                    server: str | None = None) -> tuple[Any, str]:
        """A blocking GET on ``server`` (falling back to the replicas in turn if it does not answer);
        the answer and the replica that gave it.

        An answer byte for byte the same as this client's previous watch answer is not decoded again: the
        previous value is returned (the same object: callers read it, never change it). A watch that timed out
        with nothing changed answers the same bytes, and decoding a machine's assignments through the gate
        was 72 % of a simulated fleet's CPU (1,000 machines, 10 placements each, renewed every 10 s)."""
        if server:
            try:
                return await self._request("GET", path, params=params, timeout=timeout, server=server, memo=True)
            except RaftctlError as exc:
                if exc.http_status is not None and exc.http_status < 500:
                    raise
                log.info("watch on %s failed (%s); asking the other replicas, the leader last", server, exc)
            # a watch belongs on a follower: in turn from the first, it parked half the machines whose follower
            # died with the leader on the new leader (12 % of its samples building their answers)
            return await self._request("GET", path, params=params, timeout=timeout, memo=True, skip=server,
                                       at_end=self.live)
        return await self._request("GET", path, params=params, timeout=timeout, memo=True)

    def avoid(self, url: str) -> None:
        """Rotate past ``url`` (it gave a stale answer): the next rotating request asks the replica after it."""
        if url in self.servers and self.servers[self._next] == url:
            self._next = (self._next + 1) % len(self.servers)

    def _set_live(self, url: str) -> None:
        if url != self.live:
            self.live = url
            self._live_changed.set()

    async def live_moved_from(self, url: str | None) -> None:
        """Return once a replica other than ``url`` answers heartbeats."""
        while self.live is None or self.live == url:
            self._live_changed.clear()
            await self._live_changed.wait()

    async def _fetch(self, method: str, url: str, json: Any, params: dict | None, total: float) -> tuple[int, bytes]:
        """One HTTP exchange: the status and the body (through the pool's lean client when it has one)."""
        connect = min(self.connect_s, total)
        if self._lean is not None:
            return await self._lean(method, url, json, params, self._auth, total, connect)
        assert self._session is not None
        bounds = aiohttp.ClientTimeout(total=total, sock_connect=connect)
        async with self._session.request(method, url, json=json, params=params, timeout=bounds,
                                         headers=self._auth) as r:
            return r.status, await r.read()

    @staticmethod
    def _gated(payload: bytes) -> Any:
        return gate.decode_json(payload, limits=ANSWER_LIMITS, root="answer")

    def _decode(self, payload: bytes, memo: bool) -> Any:
        if not payload.strip():
            return None
        if not memo:
            return self._decoder(payload)
        digest = (len(payload), hashlib.blake2b(payload, digest_size=16).digest())
        if self._memo is not None and self._memo[0] == digest:
            return self._memo[1]
        data = self._decoder(payload)
        self._memo = (digest, data)
        return data

    async def _request(self, method: str, path: str, json: Any = None, *, params: dict | None = None,
                       timeout: float | None = None, server: str | None = None,
                       memo: bool = False, skip: str | None = None,
                       at_end: str | None = None, stamp: str | None = None) -> tuple[Any, str]:
        """``server``, or the replicas in turn from the last one that answered, without ``skip``, ``at_end``
        asked last. ``stamp``: a key of the ``json`` object set to this process's monotonic clock in ms as each
        copy is sent (a heartbeat's ``sent_ms``: the leader counts the heartbeat from then)."""
        order = [server] if server else [self.servers[(self._next + i) % len(self.servers)]
                                         for i in range(len(self.servers))
                                         if self.servers[(self._next + i) % len(self.servers)] != skip]
        if at_end in order and not server:
            order.remove(at_end)
            order.append(at_end)
        last: Exception | None = None
        self._followers_said = set()
        for url in order:
            try:
                sent = json if stamp is None else {**json, stamp: int(time.monotonic() * 1000)}
                status, payload = await self._fetch(method, url + path, sent, params, timeout or self.timeout)
                data = self._decode(payload, memo and status == 200)
                if status == 200:
                    if not server:
                        self._next = self.servers.index(url)
                    return data, url
                err = (data or {}).get("error") or {}
                if status == 401:
                    raise Unauthorized(err.get("message", "unauthorized"))
                if status == 403:
                    raise Forbidden(err.get("message", "forbidden"))
                if status == 503 and err.get("code") == "not_leader":
                    self.leader = (err.get("details") or {}).get("leader_api")
                    self._followers_said.add(url)
                exc: Exception = RaftctlError(err.get("message", f"HTTP {status}"), code=err.get("code", "error"),
                                              field=err.get("field"), http_status=status, details=err.get("details"))
                if status < 500:
                    raise exc
                last = exc
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValidationError) as e:
                last = e  # ValidationError: an answer the gate refused; that replica counts as not answering
            if not server:
                self._next = (self._next + 1) % len(self.servers)
        raise Unavailable(f"no control replica answered: {last}")

    async def heartbeat(self, machine: str, stats: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Heartbeat the leader, following it when a follower names another one; ``stats``: usage samples that
        ride on it (the answer's ``stats_accepted`` says the leader took them). Each copy sent carries
        ``sent_ms`` (this process's monotonic clock): the leader counts it from then, not from when it read it.

        A leader that did not answer is not asked again in this call: the others are asked who leads, and when
        they still name it the heartbeat is given up (the loop tries again after half the interval). Sending
        it again at once doubled an overloaded leader's work: the 10,000-machine bed's leader, placing, saw
        123 heartbeats a second time out and come back on new connections (250 accepts a second)."""
        payload: dict[str, Any] = {"machine": machine} if not stats else {"machine": machine, "stats": stats}
        silent: str | None = None    # the leader that did not answer in this call
        for _ in range(3):
            target = self.leader     # never ``silent``: an answer naming it ends the call below
            self.leader = None       # a follower's not_leader answer in this try names the leader here
            try:
                data, url = await self._request("POST", "/v1/agent/heartbeat", payload, server=target,
                                                timeout=self.heartbeat_s, skip=silent, stamp="sent_ms")
                self.leader = url
                self._set_live(url)
                return data
            except RaftctlError as exc:
                if exc.http_status is not None and exc.http_status < 500:
                    raise
                if target is not None and (target not in self._followers_said or self.leader == target):
                    # it did not answer (paused, cut off, gone, overloaded, just elected and not leading yet, or
                    # named itself): ask the others who leads, never it again in this call (two 2 s bounds on
                    # it outlived a new leader's TTL)
                    silent = target
                    self.avoid(target)
                if self.leader is not None and self.leader == silent:
                    raise Unavailable(f"the leader {silent} did not take the heartbeat and the others still "
                                      "name it") from exc
                if self.leader is not None or target is not None:
                    continue         # to the leader a follower named, or to the replicas in turn
                raise
        raise Unavailable("no leader took the heartbeat")


class BlobFetcher:
    """Pulls image blobs from the control replicas (``GET /v1/images/blobs/{digest}`` with the agent
    token), rotating over them. Synchronous: the runc driver pulls on a worker thread, never on the
    event loop. The consumer verifies the digest; a copy that fails it is refused and the next
    replica is asked."""

    def __init__(self, servers: list[str], token: str, *, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not servers:
            raise ValueError("at least one server is required")
        self.servers = [s if "://" in s else "http://" + s for s in servers]
        self.token = token
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._next = 0

    def fetch(self, digest: str, consume: Callable[[IO[bytes]], T]) -> T:
        split_digest(digest)                      # a digest, never a path
        problems = []
        for i in range(len(self.servers)):
            url = self.servers[(self._next + i) % len(self.servers)]
            req = urllib.request.Request(f"{url}/v1/images/blobs/{digest}",
                                         headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl_context) as resp:
                    out = consume(resp)
                self._next = (self._next + i) % len(self.servers)
                return out
            except urllib.error.HTTPError as exc:
                problems.append(f"{url}: HTTP {exc.code}")
            except ImageError as exc:
                log.warning("blob %s from %s refused: %s", digest, url, exc)
                problems.append(f"{url}: {exc}")
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                problems.append(f"{url}: {exc}")
        self._next = (self._next + 1) % len(self.servers)
        raise ImageError(f"could not pull blob {digest}: {'; '.join(problems)}")


async def cluster_identity(servers: list[str], token: str, machine: str, *, ssl: Any = None,
                           patience_s: float | None = None, clock: Clock = SYSTEM) -> tuple[bool, str | None]:
    """The cluster's id, from the ``cluster`` field of the machine's assignment answer (a read: nothing is written
    before the agent decided to run): (True, id) once a replica answered (id None from a control plane without a
    secret); (False, None) when none answered within ``patience_s`` (None: keep asking). A refused token is
    raised. The retries wait on ``clock``."""
    deadline = None if patience_s is None else clock.monotonic() + patience_s
    delay = 0.2
    async with ControlClient(servers, token, ssl=ssl) as control:
        while True:
            try:
                ans = await control.request("GET", f"/v1/agent/assignments/{quote(machine, safe='')}", timeout=5.0)
                cluster = ans.get("cluster") if isinstance(ans, dict) else None
                return True, (str(cluster) if cluster is not None else None)
            except (Unauthorized, Forbidden):
                raise
            except RaftctlError as exc:
                if exc.http_status is not None and 400 <= exc.http_status < 500:
                    raise
                log.warning("asking the control plane for the cluster id: %s; retrying", exc)
            if deadline is not None and clock.monotonic() + delay > deadline:
                return False, None
            await clock.sleep(delay)
            delay = min(delay * 2, 5.0)
