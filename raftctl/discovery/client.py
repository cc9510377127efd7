"""The discovery client: lookups, watches and round-robin picks that survive control-plane outages.

Against `GET /v1/discovery/{service}` (DESIGN §5). The client sticks to the
replica that last answered and rotates to the next one when it fails (connection
error, timeout, 5xx including 503 "no leader", an answer that is not JSON). When
none answers it serves its last-known-good answer with ``stale=True`` and its age
(``age_s``): discovery must not fail closed because the control plane is down.
401/403 and other 4xx are raised, never masked by a cached answer.

``Client`` is asyncio. ``SyncClient`` has the same methods for threaded code: it
runs a ``Client`` on a private event loop in a daemon thread and blocks on it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Iterator, Mapping

import aiohttp

from raftctl.discovery.view import distance, parse_near
from raftctl.errors import Forbidden, NotFound, RaftctlError, Unauthorized, Unavailable, ValidationError

log = logging.getLogger("raftctl.discovery")

Near = str | Mapping[str, str] | None


class NoEndpoints(Unavailable):
    """The service has no healthy endpoint to pick."""

    code = "no_endpoints"


@dataclass
class Answer:
    """One discovery answer. ``age_s`` grows from the moment it was received."""

    service: str
    index: int
    endpoints: list[dict[str, Any]]
    source: str  # the server URL that answered
    fetched_at: float = field(default_factory=time.monotonic)  # time.monotonic() when received
    stale: bool = False  # True: served from the last-known-good cache, no replica answered

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.fetched_at


def _near_str(near: Near) -> str | None:
    if not near:
        return None
    if isinstance(near, str):
        return near
    return ",".join(f"{k}={v}" for k, v in near.items())


def _error(status: int, data: Any) -> RaftctlError:
    err = data.get("error") if isinstance(data, dict) else None
    err = err if isinstance(err, dict) else {}
    msg = str(err.get("message") or f"HTTP {status}")
    fld = err.get("field")
    kinds: dict[int, type[RaftctlError]] = {400: ValidationError, 401: Unauthorized, 403: Forbidden, 404: NotFound}
    cls = kinds.get(status)
    if cls is not None:
        return cls(msg, field=fld, code=err.get("code"))
    return RaftctlError(msg, field=fld, code=err.get("code") or "error", http_status=status)


class _Retry(Exception):
    """This replica failed; try the next one."""


class Client:
    """Async discovery client over a list of control replicas (``http://host:port``; scheme optional).

    ``timeout`` bounds one attempt against one replica; ``ssl`` goes to aiohttp
    (an ``ssl.SSLContext``, ``False`` to skip verification, or None);
    ``cache_s`` lets ``lookup``/``pick`` reuse an answer younger than that instead
    of asking again (0: always ask).
    """

    def __init__(self, servers: list[str], token: str | None, *, timeout: float = 5.0, ssl: Any = None,
                 cache_s: float = 0.0) -> None:
        if not servers:
            raise ValueError("at least one server is required")
        self.servers = [(s if "://" in s else "http://" + s).rstrip("/") for s in servers]
        self.token = token
        self.timeout = timeout
        self.ssl = ssl
        self.cache_s = cache_s
        self._next = 0  # the replica tried first: the one that last answered
        self._good: dict[tuple[str, str | None], Answer] = {}  # last-known-good per (service, near)
        self._rr: dict[tuple[str, str | None], int] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _once(self, url: str, service: str, params: dict[str, str], timeout: float) -> Answer:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        path = "/v1/discovery/" + urllib.parse.quote(service, safe="")
        try:
            async with self._http().get(url + path, params=params, headers=headers, ssl=self.ssl,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _Retry(f"{url}: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 500 or status == 429:
            raise _Retry(f"{url}: HTTP {status}")
        if status != 200:
            raise _error(status, data)
        if not isinstance(data, dict) or not isinstance(data.get("index"), int) \
                or not isinstance(data.get("endpoints"), list):
            raise _Retry(f"{url}: answer is not a discovery answer")
        return Answer(service, data["index"], data["endpoints"], url)

    async def _get(self, service: str, params: dict[str, str], timeout: float) -> Answer:
        """One answer from the first replica that gives one, starting with the last good one."""
        failures: list[str] = []
        n = len(self.servers)
        for i in range(n):
            k = (self._next + i) % n
            try:
                ans = await self._once(self.servers[k], service, params, timeout)
            except _Retry as exc:
                failures.append(str(exc))
                continue
            if i:
                log.info("discovery: %s answered after %s", self.servers[k], "; ".join(failures))
            self._next = k
            return ans
        self._next = (self._next + 1) % n
        raise Unavailable("no control replica answered: " + "; ".join(failures))

    @staticmethod
    def _params(near: str | None, consistent: bool) -> dict[str, str]:
        params: dict[str, str] = {}
        if near:
            params["near"] = near
        if consistent:
            params["consistent"] = "1"
        return params

    async def lookup(self, service: str, near: Near = None, *, consistent: bool = False) -> Answer:
        """Healthy endpoints of ``service`` (near-domain first if ``near``, e.g. "zone=z1" or {"zone": "z1"}).

        If no replica answers, the last-known-good answer with ``stale=True``;
        Unavailable if there is none.
        """
        key = (service, _near_str(near))
        good = self._good.get(key)
        if good is not None and not good.stale and self.cache_s > 0 and good.age_s < self.cache_s and not consistent:
            return good
        try:
            ans = await self._get(service, self._params(key[1], consistent), self.timeout)
        except Unavailable:
            if good is None:
                raise
            log.warning("discovery: control plane unreachable; serving %s (index %d) from %.1fs ago",
                        service, good.index, good.age_s)
            return Answer(good.service, good.index, good.endpoints, good.source, good.fetched_at, stale=True)
        self._remember(key, ans)
        return ans

    def _remember(self, key: tuple[str, str | None], ans: Answer) -> None:
        self._good[key] = ans

    async def watch(self, service: str, near: Near = None, *, wait_s: float = 30.0,
                    max_backoff_s: float = 5.0) -> AsyncGenerator[Answer, None]:
        """Yield the current answer, then a new one each time the service's endpoints change.

        Driven by blocking queries (`?index=N&wait=30s`). While no replica answers
        it backs off (jittered, up to ``max_backoff_s``) and resumes when one does;
        an answer older than one already yielded (a lagging replica) is skipped.
        401/403 and other 4xx end the iteration with the error.
        """
        near_s = _near_str(near)
        key = (service, near_s)
        index: int | None = None
        backoff = 0.05
        while True:
            params = self._params(near_s, False)
            if index is not None:
                params.update(index=str(index), wait=f"{wait_s:g}s")
            try:
                ans = await self._get(service, params, wait_s + wait_s / 16 + self.timeout)
            except Unavailable as exc:
                delay = backoff * random.uniform(0.5, 1.0)
                log.warning("discovery: watch %s: %s; retrying in %.2fs", service, exc, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, max_backoff_s)
                continue
            backoff = 0.05
            if index is not None and ans.index <= index:
                continue  # wait elapsed with no change, or a replica behind what we already have
            index = ans.index
            self._remember(key, ans)
            yield ans

    async def pick(self, service: str, near: Near = None) -> dict[str, Any]:
        """One endpoint, round robin over the healthy ones (over the nearest ones when ``near`` is given).

        Served from the last-known-good answer when the control plane is down;
        NoEndpoints when the service has none.
        """
        near_s = _near_str(near)
        ans = await self.lookup(service, near_s)
        endpoints = ans.endpoints
        if near_s and endpoints:
            want = parse_near(near_s)
            best = min(distance(e.get("fault_domain") or {}, want) for e in endpoints)
            endpoints = [e for e in endpoints if distance(e.get("fault_domain") or {}, want) == best]
        if not endpoints:
            raise NoEndpoints(f"service {service!r} has no healthy endpoints")
        key = (service, near_s)
        i = self._rr.get(key, 0)
        self._rr[key] = i + 1
        return endpoints[i % len(endpoints)]


class SyncClient:
    """``Client`` for threaded code: a private event loop runs in a daemon thread; each call blocks on it.

    Do not call it from inside a running event loop's thread with a server on that
    same loop (it would block that loop); use ``Client`` there.
    """

    def __init__(self, servers: list[str], token: str | None, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raftctl-discovery", daemon=True)
        self._thread.start()
        self._client = Client(servers, token, **kw)

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def lookup(self, service: str, near: Near = None, *, consistent: bool = False) -> Answer:
        return self._run(self._client.lookup(service, near, consistent=consistent))

    def pick(self, service: str, near: Near = None) -> dict[str, Any]:
        return self._run(self._client.pick(service, near))

    def watch(self, service: str, near: Near = None, **kw: Any) -> Iterator[Answer]:
        """A blocking iterator over changes; closing it (or breaking out of a for loop) ends the watch."""
        agen = self._client.watch(service, near, **kw)
        try:
            while True:
                yield self._run(agen.__anext__())
        finally:
            if self._loop.is_running():
                self._run(agen.aclose())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
