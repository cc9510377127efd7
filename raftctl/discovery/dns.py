"""DNS for discovery, like Consul's: SRV and A/AAAA records for `<service>.service.raftctl`.

Names answered (case-insensitive):

- `<service>.service.raftctl` (and the RFC 2782 form `_<service>._tcp.service.raftctl`):
  SRV (priority 1, weight 1, the endpoint's port, target `<placement>.<service>.service.raftctl`
  with its address in the additional section) and A/AAAA (the endpoints' addresses).
- `<placement>.<service>.service.raftctl`: A/AAAA of that endpoint (the SRV targets resolve).

Answers come from ``lookup_fn(service) -> [endpoint dicts]`` (sync, or a coroutine
function), the same entries as HTTP lookups. A service with no endpoints answers
NOERROR with no records (it may not be deployed yet, as HTTP answers 200); other
names, and unknown placements, NXDOMAIN. TTL 0 by default. UDP answers that do
not fit (512 bytes, or the client's EDNS0 size) are cut and flagged TC so the
client retries over TCP.
"""
from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import struct
from typing import Any, Awaitable, Callable, Union

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord

log = logging.getLogger("raftctl.discovery.dns")

DOMAIN = "service.raftctl"
Endpoints = list[dict[str, Any]]
LookupFn = Callable[[str], Union[Endpoints, Awaitable[Endpoints]]]

UDP_MIN = 512
UDP_MAX = 4096
TCP_IDLE_S = 10.0


def parse_name(qname: DNSLabel) -> tuple[str, str | None] | None:
    """`web.service.raftctl` -> ("web", None); `p1.web.service.raftctl` -> ("web", "p1"); others None."""
    try:
        labels = [lab.decode("ascii").lower() if isinstance(lab, bytes) else str(lab).lower() for lab in qname.label]
    except UnicodeDecodeError:
        return None
    if labels[-2:] != DOMAIN.split("."):
        return None
    head = labels[:-2]
    if len(head) == 1 and head[0]:
        return head[0], None
    if len(head) == 2 and head[0].startswith("_") and head[1] == "_tcp" and len(head[0]) > 1:
        return head[0][1:], None
    if len(head) == 2 and all(head):
        return head[1], head[0]
    return None


def _addr_rr(name: Any, address: Any, ttl: int) -> RR | None:
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        log.warning("dns: endpoint address %r is not an IP address; left out", address)
        return None
    if ip.version == 6:
        return RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(str(ip)))
    return RR(name, QTYPE.A, ttl=ttl, rdata=A(str(ip)))


def build_reply(query: DNSRecord, service: str, placement: str | None, endpoints: Endpoints,
                ttl: int = 0) -> DNSRecord:
    """The reply for a parsed name given the service's endpoints (pure)."""
    reply = query.reply()
    qname = query.q.qname
    qtype = QTYPE.get(query.q.qtype, "?")
    if placement is not None:
        endpoints = [e for e in endpoints if str(e.get("placement", "")).lower() == placement]
        if not endpoints:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
    if qtype in ("SRV", "ANY") and placement is None:
        for e in endpoints:
            if e.get("port") is None:
                continue
            target = DNSLabel(f"{e['placement']}.{service}.{DOMAIN}")
            addr = _addr_rr(target, e.get("address"), ttl)
            if addr is None:
                continue
            reply.add_answer(RR(qname, QTYPE.SRV, ttl=ttl,
                                rdata=SRV(priority=1, weight=1, port=int(e["port"]), target=target)))
            reply.add_ar(addr)
    if qtype in ("A", "AAAA", "ANY"):
        seen: set[str] = set()
        for e in endpoints:
            rr = _addr_rr(qname, e.get("address"), ttl)
            if rr is None or str(rr.rdata) in seen or (qtype != "ANY" and QTYPE[rr.rtype] != qtype):
                continue
            seen.add(str(rr.rdata))
            reply.add_answer(rr)
    return reply


def answer(query: DNSRecord, lookup_fn: Callable[[str], Endpoints], ttl: int = 0) -> DNSRecord:
    """The reply to one query with a synchronous ``lookup_fn`` (pure apart from it)."""
    parsed = parse_name(query.q.qname)
    if parsed is None:
        reply = query.reply()
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    return build_reply(query, parsed[0], parsed[1], lookup_fn(parsed[0]), ttl)


def fit_udp(query: DNSRecord, reply: DNSRecord) -> bytes:
    """Pack ``reply`` for UDP: within 512 bytes or the query's EDNS0 size, else cut and set TC."""
    limit = UDP_MIN
    opt = [r for r in query.ar if r.rtype == QTYPE.OPT]
    if opt:
        limit = max(UDP_MIN, min(UDP_MAX, int(opt[0].rclass)))
        reply.add_ar(EDNS0(udp_len=UDP_MAX))
    data = reply.pack()
    if len(data) <= limit:
        return data
    reply.header.tc = 1
    reply.ar = [r for r in reply.ar if r.rtype == QTYPE.OPT]
    while True:
        data = reply.pack()
        if len(data) <= limit or not reply.rr:
            return data
        reply.rr.pop()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: "DnsServer") -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self.server._tasks.add(task)
        task.add_done_callback(self.server._tasks.discard)

    async def _reply(self, data: bytes, addr: Any) -> None:
        out = await self.server.handle(data, udp=True)
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


class DnsServer:
    """UDP and TCP DNS on ``host:port`` (port 0: any free one; ``port`` holds the bound one after start)."""

    def __init__(self, lookup_fn: LookupFn, host: str, port: int, ttl: int = 0) -> None:
        self.lookup_fn = lookup_fn
        self.host = host
        self.port = port
        self.ttl = ttl
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Future[Any]] = set()

    async def handle(self, data: bytes, udp: bool = False) -> bytes | None:
        """The packed reply to one packed query; None to drop it (not DNS, or not a query)."""
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None
        if query.header.qr:
            return None  # a response, never answer those (no reflection loops)
        reply = query.reply()
        if query.header.opcode != 0:
            reply.header.rcode = RCODE.NOTIMP
            return reply.pack()
        if not query.questions:
            reply.header.rcode = RCODE.FORMERR
            return reply.pack()
        try:
            parsed = parse_name(query.q.qname)
            if parsed is None:
                reply.header.rcode = RCODE.NXDOMAIN
            else:
                endpoints = self.lookup_fn(parsed[0])
                if inspect.isawaitable(endpoints):
                    endpoints = await endpoints
                reply = build_reply(query, parsed[0], parsed[1], endpoints, self.ttl)
        except Exception:
            log.exception("dns: answering %s failed", query.q.qname)
            reply = query.reply()
            reply.header.rcode = RCODE.SERVFAIL
        return fit_udp(query, reply) if udp else reply.pack()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(20):  # port 0: UDP picks one, TCP must get the same
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.port))
            port = self._udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                self._udp.close()
                self._udp = None
                if self.port != 0 or attempt == 19:
                    raise
                continue
            self.port = port
            break
        log.info("dns: serving *.%s on %s:%d (udp, tcp)", DOMAIN, self.host, self.port)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S))[0]
                out = await self.handle(await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_S))
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for w in list(self._writers):
                w.close()
            await self._tcp.wait_closed()
            self._tcp = None
        for t in list(self._tasks):
            t.cancel()
