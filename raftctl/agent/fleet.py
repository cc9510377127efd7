"""Many simulated machines in one process: the scale bed's hollow machines (like kubemark's hollow nodes).

``raftctl agent --runtime sim --count N`` plays machines ``ID-0000`` ... each with the real agent loop
(``loop.Agent``: register, heartbeat at the interval the leader tells, the blocking assignment watch, stats,
reports) and its own in-memory ``SimDriver``, so the control plane sees the traffic of real agents. What
makes a simulated machine cheap enough to play thousands of them on one core (issue 15):

- the sim driver is called on the event loop (``SimDriver.inline``, supervisor.call_driver), and a supervisor
  waits for a driver call to change its container instead of polling it ten times a second;
- every machine's ControlClient uses one keep-alive connection pool (control.shared_pool), not a pool each,
  with bounds for a process whose event loop answers late (10 s to connect, 10 s for a heartbeat), and
  talks to http:// replicas through ``LeanHTTP`` (the same requests; aiohttp's client cost 200-300 µs of
  CPU per request here, as much as the leader spends answering it), and decodes the answers with msgspec
  instead of the gate (``trusted_json``: a 34 KB assignment answer took 1.8 ms through the gate, 0.14 ms so;
  the fleet's control plane is its own, on loopback), and like any agent asks for each job version's spec once
  per answer (``?specs=ref``; loop.Agent converts each once, converge.typed);
- machines start spread over ``spread_s`` (the first heartbeats and registrations are not in phase);
- the level-triggered reconcile pass runs every ``reconcile_s`` (10 s, not the real agent's 1 s: it sends
  nothing to the control plane unless a stop failed, and a sim stop cannot fail or hang).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import random
import signal
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgspec

from raftctl.agent.config import AgentConfig
from raftctl.agent.control import shared_pool
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.sim import SimDriver
from raftctl.errors import ValidationError

log = logging.getLogger("raftctl.agent.fleet")

__all__ = ["LeanHTTP", "trusted_json", "FLEET_CONNECT_S", "FLEET_HEARTBEAT_S", "FLEET_RECONCILE_S", "START_PER_S", "machines", "run_agents"]

FLEET_RECONCILE_S = 10.0
FLEET_CONNECT_S = 10.0
"""A fleet process's connect bound (a lone agent's is 1 s, control.CONNECT_S): see control.shared_pool."""
FLEET_HEARTBEAT_S = 10.0
"""A fleet process's bound on one heartbeat (a lone agent's is 2 s): a late answer still counts at the leader,
while a heartbeat given up and sent again costs both sides a new connection."""
START_PER_S = 100.0
"""Machines a fleet process starts per second at most (each registers, a Raft write, and opens connections), so
one process of 500 machines spreads its start over 5 s."""


def trusted_json(payload: bytes) -> Any:
    """An answer of the fleet's own control plane, decoded without the gate's checks (a real agent keeps them)."""
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc}", field="answer") from None


class LeanHTTP:
    """A small HTTP/1.1 client with keep-alive for the fleet's http:// replicas (control.Fetch): the same request
    line, headers (Host, the bearer token, Content-Type, Content-Length) and JSON body aiohttp sends, a
    Content-Length or chunked answer read in full. Idle connections are kept per replica, the most recently used
    taken first (so the rest age out), dropped after ``idle_s`` (a replica's server closes them at 75 s). A
    reused connection that turns out closed by the server before answering is replaced once by a new one.
    Anything that does not complete raises OSError (ConnectionError) or TimeoutError, and its connection is
    closed.

    ``source``: connect from this local address. On loopback the kernel gives connect() one range of ephemeral
    ports (28,232 here) per destination, and every listening port bound from that range (a simulated machine's
    own endpoint) is taken out of it for all destinations: 10,000 machines in one bed ran out of ports
    (errno 99) with 14,391 connections up and 29,132 in TIME-WAIT. A port bound to a source address of its own
    (127.0.K.1 per fleet process) comes from that address's own range."""

    def __init__(self, idle_s: float = 60.0, source: str | None = None) -> None:
        self.idle_s = idle_s
        self.source = source   # the local address connections are made from (None: the kernel's choice)
        self.idle: dict[tuple[str, int], list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self.opened = 0    # connections opened (for tests and the bench)
        # connections closed, by (why, "host:port request"; "host:port" alone for an idle one): "timeout" (the
        # request's bound passed), "cancelled" (its caller gave up: an abandoned watch), "server" (the answer
        # said close, or found closed), "cut" (closed or garbled mid-answer), "aged" (idle past idle_s), "not
        # opened"
        self.closed: collections.Counter[tuple[str, str]] = collections.Counter()

    async def __call__(self, method: str, url: str, body: Any, params: dict | None, headers: dict[str, str],
                       total: float, connect: float) -> tuple[int, bytes]:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = (parts.path or "/") + ("?" + urlencode(params) if params else "")
        data = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(data)}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode() + data
        segs = (parts.path or "/").strip("/").split("/")
        # which request a close cut: /v1/agent/heartbeat -> heartbeat, /v1/agent/assignments/m -> assignments
        where = f"{host}:{port} {segs[2] if segs[:2] == ['v1', 'agent'] and len(segs) > 2 else segs[-1]}"
        async with asyncio.timeout(total) as bound:
            while True:
                conn = self._take((host, port))
                reused = conn is not None
                if conn is None:
                    try:
                        async with asyncio.timeout(connect):
                            conn = await asyncio.open_connection(
                                host, port, local_addr=(self.source, 0) if self.source else None)
                    except (OSError, TimeoutError):
                        self.closed["not opened", where] += 1
                        raise
                    self.opened += 1
                reader, writer = conn
                keep = False
                why = "cut"
                try:
                    writer.write(message)
                    try:
                        line = await reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError as exc:
                        if reused and not exc.partial:
                            why = "server"
                            continue     # the server closed it while idle: once more on a new connection
                        raise ConnectionResetError("connection closed before the answer's head") from None
                    status, keep, payload = await self._answer(line, reader)
                    why = "server"
                    return status, payload
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                    raise ConnectionError(f"bad or cut HTTP answer from {host}:{port}: {exc}") from None
                except asyncio.CancelledError:
                    why = "timeout" if bound.expired() else "cancelled"
                    raise
                finally:
                    if keep:
                        self.idle.setdefault((host, port), []).append((time.monotonic(), reader, writer))
                    else:
                        writer.close()
                        self.closed[why, where] += 1

    def _take(self, key: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        conns = self.idle.get(key)
        now = time.monotonic()
        where = f"{key[0]}:{key[1]}"
        while conns:
            at, reader, writer = conns.pop()
            if now - at < self.idle_s and not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
            self.closed["aged" if now - at >= self.idle_s else "server", where] += 1
        if conns:
            for _, _, w in conns:   # older than the one just dropped: aged out too
                w.close()
            self.closed["aged", where] += len(conns)
            conns.clear()
        return None

    def mark(self) -> tuple[int, collections.Counter[tuple[str, str]]]:
        """What ``summary`` counts from: (connections opened, a copy of the closed ones) as of now."""
        return self.opened, collections.Counter(self.closed)

    def summary(self, since: tuple[int, collections.Counter[tuple[str, str]]]) -> tuple[str, bool]:
        """(one line of what changed since ``since`` = a ``mark`` taken earlier, whether any connection was
        opened or closed in it: a steady fleet reuses its connections and does neither)."""
        opened, closed = since
        delta = self.closed - closed
        parts = [f"{where} {why} {n}" for (why, where), n in sorted(delta.items(), key=lambda kv: kv[0][::-1])]
        return (f"connections opened {self.opened - opened}, closed: {', '.join(parts) or 'none'}",
                bool(delta) or self.opened != opened)

    @staticmethod
    async def _answer(head: bytes, reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
        """(status, keep the connection, body) of an answer whose head was read."""
        lines = head.decode("latin-1").split("\r\n")
        version, code = lines[0].split(" ", 2)[:2]
        fields = {}
        for ln in lines[1:]:
            if ln:
                k, _, v = ln.partition(":")
                fields[k.strip().lower()] = v.strip()
        keep = version == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        if fields.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            return int(code), keep, b"".join(c[:-2] for c in chunks)
        if int(code) in (204, 304) or 100 <= int(code) < 200:
            return int(code), keep, b""
        if "content-length" in fields:
            return int(code), keep, await reader.readexactly(int(fields["content-length"]))
        return int(code), False, await reader.read()


def machines(cfg: AgentConfig, count: int, *, reconcile_s: float = FLEET_RECONCILE_S) -> list[Agent]:
    """The ``count`` simulated machines of ``cfg``: ids ``ID-0000``..., data dirs ``DATA/0000``..., a SimDriver
    each, a seeded rng each (machine i: Random(i))."""
    width = max(4, len(str(count - 1)))
    out = []
    for i in range(count):
        sub = dataclasses.replace(cfg, machine=f"{cfg.machine}-{i:0{width}d}",
                                  data_dir=os.path.join(cfg.data_dir, f"{i:0{width}d}"))
        a = Agent(sub, SimDriver(), rng=random.Random(i))
        a.reconcile_s = reconcile_s
        out.append(a)
    return out


async def run_agents(cfg: AgentConfig, count: int, *, reconcile_s: float = FLEET_RECONCILE_S,
                     spread_s: float | None = None, stop: asyncio.Event | None = None,
                     source: str | None = None) -> None:
    """Play ``count`` machines until SIGINT/SIGTERM (or ``stop`` is set). Machine i starts at
    ``i / count * spread_s`` (default: the heartbeat interval, or longer so at most START_PER_S start a second).
    ``source``: the local address every connection to the replicas is made from (LeanHTTP; http:// only).
    One machine's agent failing (a refused token) is logged by its task and does not end the others. Every
    SUMMARY_S the connections opened and closed (why, to which replica) are logged, at warning when there
    were any (connection churn costs the replicas an accept and a handshake each)."""
    agents = machines(cfg, count, reconcile_s=reconcile_s)
    spread = spread_s if spread_s is not None else max(cfg.heartbeat_s, count / START_PER_S)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    ssl_ctx = None
    if cfg.tls_ca or any(s.startswith("https://") for s in cfg.servers):
        from raftctl.tls import client_context

        ssl_ctx = client_context(cfg.tls_ca)

    async def one(i: int, a: Agent) -> None:
        await asyncio.sleep(i / count * spread)
        try:
            await a.run()
        except Exception as exc:
            log.error("simulated machine %s stopped: %s: %s", a.cfg.machine, exc.__class__.__name__, exc)

    if source is not None and ssl_ctx is not None:
        raise ValidationError("a source address needs http:// replicas (the lean client)", field="--source-address")
    lean = None if ssl_ctx is not None else LeanHTTP(source=source)
    async with shared_pool(ssl_ctx, connect_s=FLEET_CONNECT_S, heartbeat_s=FLEET_HEARTBEAT_S, lean=lean,
                           decode=trusted_json):   # the tasks below carry the pool in their context
        tasks = [asyncio.create_task(one(i, a), name=f"machine-{a.cfg.machine}") for i, a in enumerate(agents)]
        if lean is not None:
            tasks.append(asyncio.create_task(_summaries(lean), name="connection summaries"))
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


SUMMARY_S = 30.0


async def _summaries(lean: LeanHTTP) -> None:
    """Log the fleet's connection churn every SUMMARY_S (one bad pass is logged; the next one goes on)."""
    since = lean.mark()
    while True:
        await asyncio.sleep(SUMMARY_S)
        try:
            line, churn = lean.summary(since)
            log.log(logging.WARNING if churn else logging.INFO, "%s", line)
            since = lean.mark()
        except Exception:
            log.exception("connection summary failed")
