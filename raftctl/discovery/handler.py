"""`GET /v1/discovery/{service}` on a control replica (DESIGN §5): the lookup every client of a service makes.

The answer of a service changes only when its discovery-table index does (every command that changes its
endpoints bumps it), so its bytes are encoded once per change, on the first read after it, and served from
``Answers`` until the index moves: a lookup takes the apply lock once (to read the index), finds the bytes and
copies a prepared header set. Blocking queries (``?index=N&wait=D``), ``?consistent=1`` and ``?near=`` go through
the same read modes as every other read (raftctl.node.http.read_mode); health filtering and the order of the
endpoints are view.lookup's, unchanged.
"""
from __future__ import annotations

import json
from typing import Any

import cbor2
from aiohttp import web
from multidict import CIMultiDict

from raftctl.discovery.view import lookup, parse_near, service_index
from raftctl.node.http import perm, read_mode

JSON = "application/json; charset=utf-8"
CBOR = "application/cbor"


class Answer:
    """One encoded answer: the state index it shows and its response headers (all but the leader's)."""
    __slots__ = ("index", "body", "headers")

    def __init__(self, index: int, body: bytes, content_type: str) -> None:
        self.index = index
        self.body = body
        self.headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type, "X-Raftctl-Index": str(index)})


class Answers:
    """The latest encoded answer per (service, near, format), at most ``limit`` of them (oldest dropped first).

    Only the latest index of each key is kept: a change replaces the entry, so the cache never holds more than
    one answer per service and form, however often the service changes."""

    def __init__(self, limit: int = 4096) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._by_key: dict[tuple[str, str | None, bool], Answer] = {}
        self.encoded = 0   # answers encoded (misses), for tests and benchmarks

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, service: str, near: str | None, cbor: bool, index: int) -> Answer | None:
        """The encoded answer of ``service`` at exactly ``index``, if one is kept."""
        found = self._by_key.get((service, near, cbor))
        return found if found is not None and found.index == index else None

    def put(self, service: str, near: str | None, cbor: bool, data: dict[str, Any]) -> Answer:
        """Encode ``data`` (a view.lookup answer) and keep it as the latest of its key."""
        if cbor:
            answer = Answer(data["index"], cbor2.dumps(data), CBOR)
        else:
            answer = Answer(data["index"], json.dumps(data, separators=(",", ":")).encode(), JSON)
        key = (service, near, cbor)
        self._by_key.pop(key, None)    # re-inserted last: the eviction order is the order of the last change
        self._by_key[key] = answer
        while len(self._by_key) > self.limit:
            del self._by_key[next(iter(self._by_key))]
        self.encoded += 1
        return answer


class Lookups:
    """The handler of one replica's app: ``r.add_get("/v1/discovery/{service}", Lookups(replica).handle)``."""

    def __init__(self, replica: Any, answers: Answers | None = None) -> None:
        self.replica = replica
        self.answers = answers if answers is not None else Answers()

    @perm("read")
    async def handle(self, request: web.Request) -> web.Response:
        """The whole of `GET /v1/discovery/{service}` after the middleware checked the token."""
        replica = self.replica
        service = request.match_info["service"]
        cbor = CBOR in request.headers.get("Accept", "")
        near: str | None = None
        if request.query_string:  # ?near=, ?index=&wait= (a blocking query), ?consistent=
            near = request.query.get("near")
            near_levels = parse_near(near) if near is not None else None  # a bad near is a 400 before any wait
            index = await read_mode(request, lambda s: service_index(s.discovery, service))
        else:
            near_levels = None
            index = replica.read(lambda s: service_index(s.discovery, service))
        answer = self.answers.get(service, near, cbor, index)
        if answer is None:
            # read whole under the lock: if the service changed since its index was read, this is the newer answer
            data = replica.read(lambda s: lookup(s.discovery, s.machines, service, near_levels))
            answer = self.answers.put(service, near, cbor, data)
        response = web.Response(body=answer.body, headers=answer.headers)
        if replica.raft is not None:
            response.headers["X-Raftctl-Leader"] = replica.raft.leader_address() or ""
        return response
