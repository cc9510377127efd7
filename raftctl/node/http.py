"""What every HTTP handler module of a control replica shares (DESIGN §5): the app keys, encoding a reply,
decoding a body through the gate, a command's result, the request id, read modes, the permission decorator,
forwarding a write to the leader, and the Guard every route's handler is wrapped in when it is added (limits,
token, forwarding, errors, metrics). api.py and each handler module (agent_api, blobs, efficiency, members,
metrics, snapshot, ui) import it at module level; api.make_app imports the handler modules, none of them imports
api."""
from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import json
import logging
import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp
import cbor2
from aiohttp import web

from raftctl import gate
from raftctl.aio import unless
from raftctl.errors import OutcomeUnknown, RaftctlError, Unauthorized, Unavailable, ValidationError
from raftctl.node import auth
from raftctl.node.admission import RESERVED_ROLES, Reserved, reserved_refusal
from raftctl.node.proposer import RefusedByRaft
from raftctl.statemachine.apply import Result
from raftctl.statemachine.units import parse_duration

log = logging.getLogger("raftctl.api")
REPLICA: web.AppKey = web.AppKey("replica", object)
BODY_LIMIT: web.AppKey = web.AppKey("body_limit", int)
# What the Guard and the forwarding keep on a request (aiohttp's typed request storage: a str key warns).
TOKEN: web.RequestKey = web.RequestKey("token", dict)
"""The caller's token record (name, role, machine), set by the Guard once the token holds the route's permission."""
GENERATED_REQUEST_ID: web.RequestKey = web.RequestKey("generated_request_id", str)
"""The request id a replica invented for a write that came without X-Request-Id, so a retry is applied once."""
MAX_BODY = 1 << 20  # default cap on JSON/CBOR request bodies (raftctl server --max-body)
STREAMED_BODIES = {"/v1/images/blobs/{digest}"}  # streamed to disk with their own limit (blobs.MAX_BLOB)
MAX_WAIT_S = 300.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_FOR_CODE = {"not_found": 404, "conflict": 409, "cas_failed": 409, "stale_epoch": 409, "forbidden": 403,
                   "request_id_conflict": 409,
                   "unauthorized": 401, "invalid": 400, "invalid_spec": 400, "bad_command": 400,
                   "unknown_op": 400, "unknown_version": 400, "internal": 500}


# -- encoding ------------------------------------------------------------------

_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps with separators built an encoder per answer
_ENCODE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="raftctl-encode")   # encode_off_loop's


def encode(request: web.Request, data: Any, *, status: int = 200, index: int | None = None) -> web.Response:
    cbor = _wants_cbor(request)
    return _answer(request, _encoded(data, cbor), cbor, status=status, index=index)


async def encode_off_loop(request: web.Request, build: Callable[[], Any], *, index: int | None = None) -> web.Response:
    """``encode(request, build(), index=index)`` with ``build()`` and the encoding on a worker thread: for answers
    that grow with the fleet. At 30,000 machines GET /v1/machines is 13.7 MB of JSON: its rows took 0.3-0.7 s and
    the encoding 0.2-0.3 s more (session 29, one process on an idle machine), on the event loop that answers
    heartbeats. ``build`` must not read the live state: give it copies taken under the apply lock. The work runs on
    a pool of its own (``_ENCODE_POOL``, 2 threads): many clients listing at once queue there, not in the default
    pool where the scheduler's passes and the /metrics scrapes run."""
    cbor = _wants_cbor(request)
    body = await asyncio.get_running_loop().run_in_executor(_ENCODE_POOL, lambda: _encoded(build(), cbor))
    return _answer(request, body, cbor, index=index)


def _wants_cbor(request: web.Request) -> bool:
    return "application/cbor" in request.headers.get("Accept", "")


def _encoded(data: Any, cbor: bool) -> bytes:
    return cbor2.dumps(data) if cbor else _COMPACT.encode(data).encode()


def _answer(request: web.Request, body: bytes, cbor: bool, *, status: int = 200,
            index: int | None = None) -> web.Response:
    """The answer holding ``body`` (``_encoded``), with the index and leader headers."""
    replica = request.app[REPLICA]
    headers = {}
    if index is not None:
        headers["X-Raftctl-Index"] = str(index)
    if replica.raft is not None:
        headers["X-Raftctl-Leader"] = replica.raft.leader_address() or ""
    if cbor:
        return web.Response(body=body, status=status, content_type="application/cbor", headers=headers)
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8", headers=headers)


async def body(request: web.Request) -> Any:
    """The request body, decoded through the one gate for untrusted bytes (raftctl/gate.py): CBOR for
    ``application/cbor``, JSON otherwise; anything a spec cannot hold is a 400 naming the field."""
    raw = await request.read()
    return gate.decode_body(raw, request.content_type, max_bytes=request.app[BODY_LIMIT])


CLIENT_GONE = 499
"""The status a request whose client closed before its answer is logged with (nginx's 499); never sent."""


def client_gone(request: web.Request) -> bool:
    """True when the client has closed its side of the connection and nothing of it is left unread: it gave up
    waiting (nginx's 499 check, one non-blocking ``recv(MSG_PEEK)``). The transport's own state cannot tell in
    time: a request read together with the client's FIN runs its handler before the loop reads the FIN. A
    half-closed client that still waits for its answer is taken for gone too (no agent does that). TLS: a
    close_notify still unread counts as data, so such a client is not detected (the check only saves work, never
    changes state). The peek is called holding the GIL (``_PEEK``): through ``socket.recv``, which lets it go, it
    waited for the scheduler's thread to hand it back, a quarter of the heartbeat handler in py-spy (session 22)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return True
    raw = transport.get_extra_info("socket")
    if raw is None:
        return False
    n = _PEEK(raw.fileno(), _PEEKED, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    if n != -1:
        return n == 0            # 0: the client's FIN and nothing before it; > 0: a request still unread
    return ctypes.get_errno() in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE)   # EAGAIN: open, waiting


_PEEK = ctypes.PyDLL(None, use_errno=True).recv      # PyDLL: called without releasing the GIL
_PEEK.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_PEEK.restype = ctypes.c_ssize_t
_PEEKED = ctypes.create_string_buffer(1)


def gone_answer(request: web.Request) -> web.Response:
    """The answer to a request whose client is gone (``client_gone``): the connection is closed without writing
    (the API metrics count it under ``CLIENT_GONE``)."""
    protocol = request.protocol
    if protocol is not None:
        protocol.force_close()
    return web.Response(status=CLIENT_GONE)


def result_value(res: Result) -> dict[str, Any]:
    if res.ok:
        return res.value
    err = res.error
    assert err is not None
    raise RaftctlError(err.message, field=err.field, code=err.code, http_status=STATUS_FOR_CODE.get(err.code, 400))


def request_id(request: web.Request) -> str:
    rid = request.headers.get("X-Request-Id", "") or request.get(GENERATED_REQUEST_ID, "")
    if rid and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid):
        raise ValidationError("X-Request-Id must be 1-64 characters of [A-Za-z0-9._-]", field="X-Request-Id")
    return rid


async def read_mode(request: web.Request, index_fn: Callable[[Any], int],
                    wait: Callable[[int, float], Awaitable[int]] | None = None) -> int:
    """Apply ?consistent=1 and ?index=N&wait=D; return the resource index to report. ``wait(after, wait_s)``
    replaces the generic blocking query (Replica.wait_for on index_fn), e.g. a machine's own watch."""
    replica = request.app[REPLICA]
    q = request.query
    if q.get("consistent") in ("1", "true", "yes"):
        await replica.barrier()
    if "index" in q:
        try:
            after = int(q["index"])
        except ValueError:
            raise ValidationError(f"index {q['index']!r} is not an integer", field="index") from None
        wait_s = 30.0
        if "wait" in q:
            try:
                wait_s = parse_duration(q["wait"]) / 1000.0
            except RaftctlError as exc:
                raise ValidationError(str(exc.message), field="wait") from None
        wait_s = min(max(wait_s, 0.0), MAX_WAIT_S)
        if wait is not None:
            return await wait(after, wait_s)
        return await replica.wait_for(index_fn, after, wait_s)
    return replica.read(index_fn)


F = TypeVar("F", bound=Callable[..., Any])


def perm(name: str, *, write: bool = False, forward: bool = True) -> Callable[[F], F]:
    """Name the permission a route needs. A ``write`` route is forwarded to the leader (its HTTP request proxied
    there) unless ``forward=False``: a handler that builds its command from the request alone (it reads nothing of
    the replica's state or memory) proposes it where the request arrived, and pysyncobj carries the command to the
    leader inside Raft, as etcd's followers do (docs/raft.md, Writes through a follower). (On a method, a bound
    method reads its function's attributes, so ``Lookups(replica).handle`` carries its ``perm``.)"""
    def deco(fn: F) -> F:
        fn.perm = name  # type: ignore[attr-defined]
        fn.write = write  # type: ignore[attr-defined]
        fn.forward = write and forward  # type: ignore[attr-defined]  # what the Guard proxies to the leader
        return fn
    return deco


BEHIND_ENTRIES = 1000
"""A replica whose applied index trails the commit index it knows of by more than this proxies even the writes it
would propose itself: it answers a write it proposes only once it has applied it, which a replica still replaying
a long log (a restart, a snapshot install) would do only after seconds."""


def behind(raft: Any) -> bool:
    """Whether the replica of ``raft`` (a RaftNode, or None before it started) is too far behind its log to
    propose a write itself: not ready yet (still replaying what it held at start) or more than BEHIND_ENTRIES
    entries behind the commit index it knows of. Never blocks (the status is the tick thread's last)."""
    if raft is None:
        return False
    if not raft.is_ready():
        return True
    rs = raft.raft_status()
    return (rs.get("commit_index") or 0) - (rs.get("applied_index") or 0) > BEHIND_ENTRIES


FORWARDED = "X-Raftctl-Forwarded"
HOP_HEADERS = {"authorization", "content-type", "x-request-id", "accept"}


async def forward_to_leader(request: web.Request) -> web.Response | None:
    """Proxy a request to the leader's API (writes, so the leader batches them; requests with a token this
    replica has not applied yet); None to handle it here (leading, no leader known, already forwarded)."""
    replica = request.app[REPLICA]
    if request.headers.get(FORWARDED) or replica.raft is None:
        return None
    rs = replica.raft.raft_status()
    if rs["state"] == "leader" or not rs["leader"]:
        return None  # leading, or no leader known: pysyncobj queues the command until one is
    leader_api = replica.read(lambda s: s.members.get(rs["leader"], {}).get("api"))
    if not leader_api:
        return None
    headers = {k: v for k, v in request.headers.items() if k.lower() in HOP_HEADERS}
    headers[FORWARDED] = replica.cfg.node_id
    if not request.headers.get("X-Request-Id"):
        # One id for the proxied copy and for the local fallback below: a proxy that timed out may still
        # reach a paused leader later, and without an id that copy was applied a second time, after
        # writes acknowledged in between (jepsen-style, writes without X-Request-Id).
        request[GENERATED_REQUEST_ID] = headers["X-Request-Id"] = uuid.uuid4().hex
    payload_in = await request.read()  # outside the try: a body over --max-body is a 413, never half-read

    async def proxy() -> web.Response:
        async with replica.http.request(request.method, leader_api + request.rel_url.path_qs,
                                        data=payload_in, headers=headers) as resp:
            payload = await resp.read()
            out = web.Response(body=payload, status=resp.status,
                               content_type=resp.content_type or "application/json")
            for h in ("X-Raftctl-Index", "X-Raftctl-Leader"):
                if h in resp.headers:
                    out.headers[h] = resp.headers[h]
            return out

    # A paused or cut-off leader holds the proxy until the session's timeout (15 s) although a new leader is
    # elected in ~1.5 s (jepsen-style finding 7): give up the proxy as soon as the leader moves, and handle the
    # request here (pysyncobj routes it to the new leader; the shared request id deduplicates a late copy).
    moved = replica.leadership.leader_moved(rs["leader"]) if replica.leadership is not None else asyncio.Event()
    sent = await unless(proxy(), moved.wait())
    if sent is None:
        log.info("leader moved away from %s while a request was proxied to it; handling it here", rs["leader"])
        request[PROXIED_TO] = leader_api
        return None
    exc = sent.exception()
    if exc is not None:  # the leader is unreachable from here: let pysyncobj route it
        log.info("forward to leader %s failed (%s); proposing locally", leader_api, exc)
        if not isinstance(exc, aiohttp.ClientConnectorError):  # past the connect, the leader may have it
            request[PROXIED_TO] = leader_api
        return None
    return sent.result()


PROPOSE_ATTEMPTS = 3
"""How often a write handled where it arrived (perm(forward=False)) is proposed when the leader it was handed to
loses leadership before answering: the first time and twice more, each to the leader after it."""


LEADER_MOVE_WAIT_S = 2.0
"""How long a write the leader refused as "not the leader" (handing over) waits for the next leader before it is
answered 503 unavailable (nothing applied; the client may retry)."""


async def propose_here(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler of a write that is proposed where it arrived (pysyncobj carries its entry to the leader).

    When the leader it went to lost leadership before answering (paused, cut off, handing over on SIGTERM), the
    write is proposed again, to the next leader, up to PROPOSE_ATTEMPTS in all, as the proxy did when the leader
    moved under it:
    - outcome unknown and the leader moved: proposed again under the same request id, so the dedup table applies
      it at most once whichever copy commits; a replica that is not the leader invents an id when the client sent
      none, as forward_to_leader does for what it proxies (the leader's own anonymous writes are not retried);
    - refused as not applied by a leader handing over (NOT_LEADER): proposed again once the leader moved (at most
      LEADER_MOVE_WAIT_S later), with or without an id, since nothing was applied.
    "The leader it went to" is the one the proposer handed it to (``Unavailable.handed_to``), which differs from
    the one named when the attempt began when it began during an election."""
    replica = request.app[REPLICA]
    raft = replica.raft
    if raft is None:
        return await handler(request)
    has_id = bool(request.headers.get("X-Request-Id") or request.get(GENERATED_REQUEST_ID))
    if not has_id and not raft.is_leader():
        request[GENERATED_REQUEST_ID] = uuid.uuid4().hex
        has_id = True
    unknown: OutcomeUnknown | None = None   # an earlier attempt whose fate is unknown: it may have been applied
    for attempt in range(1, PROPOSE_ATTEMPTS + 1):
        leader = raft.leader_address()
        try:
            return await handler(request)
        except Unavailable as exc:
            if isinstance(exc, OutcomeUnknown):
                unknown = exc
            # the leader the write was handed to: an attempt begun during an election waits for its winner
            # (the proposer) and is handed to it; with none named here at the start, a move of that winner
            # was answered 503 instead of proposing the write again (a flaky test in CI, twice)
            leader = exc.handed_to or leader
            retry = attempt < PROPOSE_ATTEMPTS and leader is not None and (
                (isinstance(exc, OutcomeUnknown) and has_id and raft.leader_address() != leader)
                or (isinstance(exc, RefusedByRaft)
                    and (raft.leader_address() != leader or await _leader_moves(replica, leader))))
            if not retry:
                if unknown is not None and not isinstance(exc, OutcomeUnknown):
                    # "nothing was applied" is true of this attempt only: an earlier one may have been
                    raise unknown_after(f"{unknown.message}; proposed again", exc.message,
                                        "the first attempt may have been applied") from None
                raise
            log.info("the leader moved from %s while a write was proposed through it (%s); proposing it again "
                     "(attempt %d of %d)", leader, exc.message, attempt + 1, PROPOSE_ATTEMPTS)
    raise AssertionError("unreachable")


async def _leader_moves(replica: Any, leader: str) -> bool:
    """Wait until the leader is no longer ``leader`` (at most LEADER_MOVE_WAIT_S); whether it moved."""
    if replica.leadership is None:
        return False
    moved = replica.leadership.leader_moved(leader)
    try:
        await asyncio.wait_for(moved.wait(), LEADER_MOVE_WAIT_S)
    except asyncio.TimeoutError:
        return False
    return True


PROXIED_TO: web.RequestKey = web.RequestKey("proxied_to", str)
"""The leader API a write was proxied to without an answer before it was handled here."""


def after_proxy(request: Any, exc: RaftctlError) -> RaftctlError:
    """The error to answer for a write handled here after its proxied copy went unanswered: "not applied"
    (503 unavailable) is true of the local attempt only, the leader may have applied the proxied copy (the
    request id makes a retry safe), so it is an unknown outcome. Other errors pass through."""
    leader_api = request.get(PROXIED_TO)
    if leader_api is None or not isinstance(exc, Unavailable) or isinstance(exc, OutcomeUnknown):
        return exc
    return unknown_after(f"the write was sent to the leader at {leader_api}, which did not answer", exc,
                         "the leader may have applied it")


def unknown_after(before: str, then: object, maybe: str) -> OutcomeUnknown:
    """The answer for a write whose last attempt was refused (nothing applied by it) after an earlier attempt's
    fate was left unknown (``before``): the outcome is unknown, and the request id makes a retry safe."""
    return OutcomeUnknown(f"{before}, and then {then}; {maybe} (retry with the same request id is safe)")


# -- the middleware ----------------------------------------------------------------

Observe = Callable[[str, int, float], None]
"""``observe(route, status, seconds)``: where the middleware reports each request (metrics.ApiMetrics.observe)."""


def too_large(limit: int) -> RaftctlError:
    return RaftctlError(f"the request body is larger than this server's limit of {limit} bytes (--max-body)",
                        code="too_large", http_status=413, field="body")


class TokenMemo:
    """The sha256 of an Authorization header that named a known token, remembered (at most ``limit`` headers,
    forgotten all at once when full): a client sends the same header on every request, and hashing it was a
    tenth of a cached lookup's cost. Only the hash is remembered; the record is read from the replicated
    tokens table on every request, so a revoked token is refused at once."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._hashes: dict[str, str] = {}

    def authorize(self, tokens: dict[str, dict], header: str | None, perm: str) -> dict:
        """What auth.authorize answers (the record, or its 401/403), without hashing a header seen before."""
        digest = self._hashes.get(header) if header is not None else None
        if digest is not None:
            record = tokens.get(digest)
            if record is not None and perm in auth.PERMISSIONS.get(record["role"], ()):
                return record
        record = auth.authorize(tokens, header, perm)  # raises the 401/403 with its message
        if header is not None:
            if len(self._hashes) >= self.limit:
                self._hashes.clear()
            self._hashes[header] = auth.token_hash(auth.bearer(header))
        return record


class Guard:
    """What every route of one replica's API runs around its handler (api.make_app): a body over ``limit`` is
    a 413 before auth; the token must hold the route's permission (``perm``); writes that read the replica's
    state (``perm(write=True)``), every write while this replica is ``behind`` its log, and tokens this replica
    has not applied yet, are forwarded to the leader; errors become ``{"error": ...}`` JSON; every request is
    observed (route, status, seconds). On a connection admitted into the slots kept for admin and operator tokens
    (``admission.Reserved``) only their requests are served; any other is answered 503 overloaded (``not_kept_for``).

    It wraps each handler once, when its route is added (``routes``), and is not an aiohttp middleware: a
    middleware is looked up and awaited per request behind aiohttp's own current-app middleware, three
    coroutine layers around a discovery lookup where a bare handler has none. What a route needs (its
    permission, whether it writes, its body limit, its metrics label) is read when it is added. A request no
    route matches gets the same JSON 404 or 405 from the catch-all route ``add_unmatched`` adds last."""

    def __init__(self, replica: Any, observe: Observe, limit: int) -> None:
        self.replica = replica
        self.observe = observe
        self.limit = limit
        self.tokens = TokenMemo()
        self.reserved_refused = 0   # requests refused on a reserved connection (not_kept_for)

    def wrap(self, handler: Handler, method: str, name: str) -> Handler:
        """``handler`` behind the guard; ``method name`` is its metrics label (``name``: the route's path)."""
        replica, observe, tokens = self.replica, self.observe, self.tokens
        limit = None if name in STREAMED_BODIES else self.limit  # streamed to disk with their own limit
        required = getattr(handler, "perm", None)
        write = bool(getattr(handler, "write", False))
        forward = bool(getattr(handler, "forward", write))
        labels = {method: f"{method} {name}"}

        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            started = time.monotonic()
            try:
                if limit is not None and request.content_length is not None and request.content_length > limit:
                    raise too_large(limit)  # before auth and before reading a byte of it
                response = None
                kept = type(request.protocol) is Reserved   # admitted into the slots kept for RESERVED_ROLES
                if required is not None:
                    header = request.headers.get("Authorization")
                    try:
                        request[TOKEN] = replica.read(lambda s: tokens.authorize(s.tokens, header, required))
                    except Unauthorized as refused:
                        response = self.not_kept_for() if kept else await self.unknown_token(request, header, refused)
                    else:
                        if kept and request[TOKEN]["role"] not in RESERVED_ROLES:
                            response = self.not_kept_for()
                        elif forward or (write and behind(replica.raft)):
                            response = await forward_to_leader(request)
                        elif write:
                            response = await propose_here(request, handler)
                elif kept:
                    response = self.not_kept_for()
                if response is None:
                    response = await handler(request)
            except Exception as exc:  # noqa: BLE001 -- every error is a JSON answer (an unexpected one is logged)
                response = self.error(request, exc)
            m = request.method
            observe(labels.get(m) or labels.setdefault(m, f"{m} {name}"), response.status, time.monotonic() - started)
            return response
        return guarded

    def not_kept_for(self) -> web.StreamResponse:
        """The answer to a request on a connection admitted into the slots kept for RESERVED_ROLES when its token
        has none of them (or no token, or one not known here): 503 overloaded, ``Retry-After: 1``, and the
        connection closed so that the slot is free again at once (raftctl/node/admission.py)."""
        self.reserved_refused += 1
        response = web.json_response({"error": reserved_refusal().to_dict()}, status=503,
                                     headers={"Retry-After": "1"})
        response.force_close()
        return response

    async def unknown_token(self, request: web.Request, header: str | None,
                            refused: Unauthorized) -> web.StreamResponse:
        """The answer to a request whose token this replica does not know, or that lacks the permission."""
        replica = self.replica
        if replica.raft is not None and not replica.raft.is_ready():
            # a replica still replaying its log may not know the token yet: let the client retry
            raise Unavailable("this replica is still catching up with the leader; try another")
        if header:
            # a token created a moment ago may be committed on the leader but not yet applied here (Consul's
            # followers likewise ask the leader about tokens they cannot resolve): the leader decides, and a
            # token it does not know either is refused there with the same 401
            forwarded = await forward_to_leader(request)
            if forwarded is not None:
                return forwarded
        raise refused

    def error(self, request: web.Request, exc: Exception) -> web.StreamResponse:
        """The JSON answer for what a guarded handler raised (a redirect is raised on, for aiohttp to send)."""
        if isinstance(exc, RaftctlError):
            exc = after_proxy(request, exc)
            return web.json_response({"error": exc.to_dict()}, status=exc.http_status)
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise exc
            if exc.status == 413:  # a chunked body that grew past client_max_size while being read
                return web.json_response({"error": too_large(self.limit).to_dict()}, status=413)
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response({"error": {"code": code, "message": exc.reason, "field": None}},
                                     status=exc.status, headers=allow)
        log.error("internal error on %s %s", request.method, request.path, exc_info=exc)
        return web.json_response({"error": {"code": "internal",
                                            "message": "internal error (a bug: see the server log)",
                                            "field": None}}, status=500)


GUARD: web.AppKey = web.AppKey("guard", Guard)


class Routes:
    """Where a handler module adds its routes (``routes(app)``): each handler behind the app's Guard when
    api.make_app set one, as given otherwise (a test's app with its own middleware)."""

    def __init__(self, router: web.UrlDispatcher, guard: Guard | None) -> None:
        self.router = router
        self.guard = guard

    def add(self, method: str, path: str, handler: Handler) -> None:
        """``handler`` for ``method path`` (GET also answers HEAD, as aiohttp's add_get)."""
        resource = self.router.add_resource(path)
        if self.guard is not None:
            handler = self.guard.wrap(handler, method, resource.canonical)
        if method == "GET":
            resource.add_route("HEAD", handler)
        resource.add_route(method, handler)

    def add_get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def add_put(self, path: str, handler: Handler) -> None:
        self.add("PUT", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def add_delete(self, path: str, handler: Handler) -> None:
        self.add("DELETE", path, handler)


def routes(app: web.Application) -> Routes:
    """The app's routes, guarded when the app has a Guard (``app[GUARD]``, set by api.make_app)."""
    return Routes(app.router, app.get(GUARD))


def add_unmatched(app: web.Application) -> None:
    """The catch-all route, added after every other: a request no route matches is a JSON 404, or a 405 naming
    the methods its path has (Allow), through the app's Guard like any other answer. Its pattern takes newlines
    too (the API fuzzer sent a path with %0A, which ``.*`` left to aiohttp's text/plain 404). Only an
    asterisk-form target (``OPTIONS *``), which no route can match, still gets aiohttp's own 404."""
    async def unmatched(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        own = request.match_info.route.resource
        for resource in request.app.router.resources():
            if resource is not own:
                _, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()
    app.router.add_route("*", r"/{tail:[\s\S]*}", app[GUARD].wrap(unmatched, "*", "unmatched"))  # newlines too
