"""The discovery client: lookups, watches and round-robin picks that survive control-plane outages.

It rotates across control replicas when one fails and keeps serving its
last-known-good answer, saying how old it is, when none answers: discovery must
not fail closed because the control plane is down. Authentication errors are
raised, never masked by a cached answer. ``Client`` is asyncio; ``SyncClient``
wraps it for threaded code with a private event loop in a thread.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp

from raftctl.errors import Forbidden, NotFound, RaftctlError, Unauthorized, Unavailable

log = logging.getLogger("raftctl.discovery")


@dataclass
class Answer:
    service: str
    index: int
    endpoints: list[dict[str, Any]]
    source: str
    fetched_at: float = field(default_factory=time.monotonic)
    stale: bool = False

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.fetched_at


class Client:
    def __init__(self, servers: list[str], token: str | None, *, timeout: float = 5.0, ssl: Any = None) -> None:
        if not servers:
            raise ValueError("at least one server is required")
        self.servers = [s if "://" in s else "http://" + s for s in servers]
        self.token = token
        self.timeout = timeout
        self.ssl = ssl
        self._next = 0
        self._good: dict[tuple[str, str | None], Answer] = {}
        self._rr: dict[str, int] = {}
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
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def _get(self, service: str, params: dict[str, str], timeout: float) -> Answer:
        last: Exception | None = None
        for i in range(len(self.servers)):
            url = self.servers[(self._next + i) % len(self.servers)]
            try:
                async with self._http().get(f"{url}/v1/discovery/{service}", params=params, ssl=self.ssl,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    data = await r.json(content_type=None)
                    if r.status == 200:
                        self._next = (self._next + i) % len(self.servers)
                        return Answer(service, data["index"], data["endpoints"], url)
                    err = (data or {}).get("error") or {}
                    if r.status == 401:
                        raise Unauthorized(err.get("message", "unauthorized"))
                    if r.status == 403:
                        raise Forbidden(err.get("message", "forbidden"))
                    if r.status == 404:
                        raise NotFound(err.get("message", "not found"))
                    if r.status < 500:
                        raise RaftctlError(err.get("message", f"HTTP {r.status}"), field=err.get("field"),
                                           code=err.get("code", "error"), http_status=r.status)
                    last = RaftctlError(err.get("message", f"HTTP {r.status}"), http_status=r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last = exc
        self._next = (self._next + 1) % len(self.servers)
        raise Unavailable(f"no control replica answered: {last}")

    async def lookup(self, service: str, near: str | None = None) -> Answer:
        """Healthy endpoints of ``service``; the last-known-good answer (stale=True) if no replica answers."""
        params = {"near": near} if near else {}
        key = (service, near)
        try:
            ans = await self._get(service, params, self.timeout)
        except Unavailable:
            good = self._good.get(key)
            if good is None:
                raise
            log.warning("control plane unreachable; serving %s from %.1fs ago", service, good.age_s)
            return Answer(good.service, good.index, good.endpoints, good.source, good.fetched_at, stale=True)
        self._good[key] = ans
        return ans

    async def watch(self, service: str, near: str | None = None, wait_s: float = 30.0) -> AsyncIterator[Answer]:
        """Yield the current answer, then a new one every time the service's endpoints change."""
        index = -1
        backoff = 0.1
        while True:
            params = {"index": str(max(index, 0)), "wait": f"{int(wait_s)}s"} if index >= 0 else {}
            if near:
                params["near"] = near
            try:
                ans = await self._get(service, params, wait_s + self.timeout)
                backoff = 0.1
            except Unavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._good[(service, near)] = ans
            if ans.index != index:
                index = ans.index
                yield ans

    async def pick(self, service: str, near: str | None = None) -> dict[str, Any]:
        """One endpoint, round robin over the healthy ones."""
        ans = await self.lookup(service, near)
        if not ans.endpoints:
            raise Unavailable(f"service {service!r} has no healthy endpoints")
        i = self._rr.get(service, 0)
        self._rr[service] = i + 1
        return ans.endpoints[i % len(ans.endpoints)]


class SyncClient:
    """The same API for threaded code: a private event loop runs in a daemon thread."""

    def __init__(self, servers: list[str], token: str | None, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raftctl-discovery", daemon=True)
        self._thread.start()
        self._client = Client(servers, token, **kw)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def lookup(self, service: str, near: str | None = None) -> Answer:
        return self._run(self._client.lookup(service, near))

    def pick(self, service: str, near: str | None = None) -> dict[str, Any]:
        return self._run(self._client.pick(service, near))

    def watch(self, service: str, near: str | None = None):  # type: ignore[no-untyped-def]
        """A blocking iterator over changes."""
        agen = self._client.watch(service, near)
        while True:
            yield self._run(agen.__anext__())

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
