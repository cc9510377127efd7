"""DNS for discovery, like Consul's: SRV and A/AAAA records for `<service>.service.raftctl`.

An authoritative-only server for the zone `service.raftctl` (RFC 1035, 6891, 8482, 8906).
Names answered (case-insensitive):

- `<service>.service.raftctl` (and the RFC 2782 form `_<service>._tcp.service.raftctl`):
  SRV (priority 1, weight 1, the endpoint's port, target `<placement>.<service>.service.raftctl`
  with its address in the additional section) and A/AAAA (the endpoints' addresses).
- `<placement>.<service>.service.raftctl`: A/AAAA of that endpoint (the SRV targets resolve).
- `service.raftctl`, the apex: its SOA.

Answers come from ``lookup_fn(service) -> [endpoint dicts]`` (sync, or a coroutine
function), the same entries as HTTP lookups. What the answers follow:

- Header: AA set on every answer for the zone; RA never set (no recursion); AD and CD
  never set (no DNSSEC); RD copied (RFC 1035 4.1.1). An opcode other than QUERY: NOTIMP.
- Malformed queries get FORMERR, never silence: no question or more than one (no
  question section in the answer), more than one OPT, a label with a non-ASCII octet
  (none of our names has one), bytes dnslib cannot decode past a valid header.
  Fewer than 12 bytes (no header to answer) and responses (QR set) are dropped.
- Class other than IN (CH, ANY, ...): REFUSED (RFC 8906 3.1.3: we serve no zone in that
  class). Names outside the zone: REFUSED without AA (authoritative only). Zone
  transfers (AXFR/IXFR): REFUSED.
- A name that does not exist (a service with no endpoints, an unknown placement, a
  label no job could have, a NUL byte included): NXDOMAIN with the zone's SOA in the
  authority section; a name that exists without records of the asked type: NOERROR
  with no answer and the SOA (NODATA, RFC 2308). Negative TTL = the record TTL.
- ANY: one synthesized `HINFO "RFC8482" ""` (RFC 8482 4.2), never the full set.
- EDNS (RFC 6891): an OPT in the query gets an OPT in the answer, over UDP and TCP
  (version 0, payload size ``UDP_MAX``); EDNS version > 0 gets BADVERS (extended
  rcode 16) with an OPT and no records.
- Amplification (UDP only, the client's address is not authenticated): answers are
  capped at min(client's EDNS size, ``UDP_MAX`` = 1232) bytes, 512 without EDNS; a
  longer one is cut (additional records first, then answers) and flagged TC so the
  client retries over TCP. Per-source response-rate limiting (``RateLimiter``): a token
  bucket of ``RRL_RATE`` = 20 answers/s, burst ``RRL_BURST`` = 40, per /24 (IPv4) or /56
  (IPv6); over the limit every ``RRL_SLIP``-th query gets a bare TC=1 answer (a real
  client retries over TCP), the others are dropped. At most ``RRL_SOURCES`` = 10,000
  sources are tracked (least recently seen evicted first).
- TCP is not rate limited (the handshake proves the source address) but bounded: at
  most ``TCP_MAX_CONNS`` = 64 connections at once (more are closed at once), each idle
  at most ``TCP_IDLE_S`` = 10 s and open at most ``TCP_LIFETIME_S`` = 120 s.

The server answers without a token: what it tells (service endpoints' addresses and
ports) is meant for every client of a service; bind it to an address only trusted
clients reach (loopback in development). docs/control-plane.md, "DNS".
"""
from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import re
import struct
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Union

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RD, RR, SOA, SRV, A, DNSHeader, DNSLabel, DNSRecord

log = logging.getLogger("raftctl.discovery.dns")

DOMAIN = "service.raftctl"
Endpoints = list[dict[str, Any]]
LookupFn = Callable[[str], Union[Endpoints, Awaitable[Endpoints]]]

UDP_MIN = 512        # without EDNS (RFC 1035 4.2.1)
UDP_MAX = 1232       # with EDNS: the DNS flag day 2020 size, no IP fragmentation
TCP_IDLE_S = 10.0
TCP_LIFETIME_S = 120.0
TCP_MAX_CONNS = 64
RRL_RATE = 20.0      # answers per second per source block
RRL_BURST = 40.0
RRL_SLIP = 2         # every 2nd limited query gets a bare TC=1 answer, the rest are dropped
RRL_SOURCES = 10_000

CLASS_IN = 1
OPT = 41
HINFO = 13
BADVERS = 16
ZONE_TRANSFERS = (251, 252)  # IXFR, AXFR
LABEL_RE = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,62}$")  # job names, placement ids (and `_svc`, `_tcp`)
RFC8482 = RD(b"\x07RFC8482\x00")  # HINFO: cpu "RFC8482", os ""


class Name:
    """What a query name means in the zone."""

    OUTSIDE = "outside"    # not under service.raftctl
    APEX = "apex"          # service.raftctl
    EMPTY = "empty"        # _tcp.service.raftctl: exists only as the parent of _<svc>._tcp
    SERVICE = "service"
    PLACEMENT = "placement"
    NONE = "none"          # under the zone, but no such name can exist


def parse_name(qname: DNSLabel) -> tuple[str, str | None, str | None]:
    """(kind, service, placement) of a query name; labels compared case-insensitively.
    A label with a non-ASCII octet raises UnicodeDecodeError (the caller answers FORMERR)."""
    labels = [bytes(lab).decode("ascii").lower() for lab in qname.label]
    zone = DOMAIN.split(".")
    if labels[-len(zone):] != zone:
        return Name.OUTSIDE, None, None
    head = labels[:-len(zone)]
    if not head:
        return Name.APEX, None, None
    if not all(LABEL_RE.match(lab) for lab in head):
        return Name.NONE, None, None  # NUL bytes, dots inside labels, spaces...: no job has such a name
    if head == ["_tcp"]:
        return Name.EMPTY, None, None
    if len(head) == 1 and not head[0].startswith("_"):
        return Name.SERVICE, head[0], None
    if len(head) == 2 and head[0].startswith("_") and head[1] == "_tcp" and len(head[0]) > 1 \
            and not head[0][1:].startswith("_"):
        return Name.SERVICE, head[0][1:], None
    if len(head) == 2 and not head[1].startswith("_"):
        return Name.PLACEMENT, head[1], head[0]
    return Name.NONE, None, None


def _addr_rr(name: Any, address: Any, ttl: int) -> RR | None:
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        log.warning("dns: endpoint address %r is not an IP address; left out", address)
        return None
    if ip.version == 6:
        return RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(str(ip)))
    return RR(name, QTYPE.A, ttl=ttl, rdata=A(str(ip)))


def soa(ttl: int) -> RR:
    """The zone's SOA; its minimum (the negative-caching TTL, RFC 2308) is the record TTL."""
    return RR(DOMAIN, QTYPE.SOA, ttl=ttl, rdata=SOA(f"ns.{DOMAIN}", f"hostmaster.{DOMAIN}",
                                                    (1, 3600, 600, 86400, ttl)))


def empty_reply(query: DNSRecord, rcode: int, *, question: bool = True, aa: bool = True) -> DNSRecord:
    """A reply header for ``query``: QR, AA as asked, RD copied, RA/AD/CD clear."""
    h = query.header
    header = DNSHeader(id=h.id, qr=1, opcode=h.opcode, aa=int(aa), tc=0, rd=h.rd, ra=0, rcode=rcode & 0xF)
    reply = DNSRecord(header)
    if question and query.questions:
        reply.add_question(*query.questions[:1])
    return reply


def build_reply(query: DNSRecord, kind: str, service: str | None, placement: str | None,
                endpoints: Endpoints, ttl: int = 0) -> DNSRecord:
    """The answer for a parsed in-zone name given its service's endpoints (pure)."""
    qname = query.q.qname
    qtype = query.q.qtype
    if kind == Name.PLACEMENT:
        endpoints = [e for e in endpoints if str(e.get("placement", "")).lower() == placement]
    exists = kind in (Name.APEX, Name.EMPTY) or (kind in (Name.SERVICE, Name.PLACEMENT) and bool(endpoints))
    if not exists:
        reply = empty_reply(query, RCODE.NXDOMAIN)
        reply.add_auth(soa(ttl))
        return reply
    reply = empty_reply(query, RCODE.NOERROR)
    if qtype == QTYPE.ANY:
        reply.add_answer(RR(qname, HINFO, ttl=ttl, rdata=RFC8482))
        return reply
    if kind == Name.APEX and qtype == QTYPE.SOA:
        reply.add_answer(soa(ttl))
        return reply
    if qtype == QTYPE.SRV and kind == Name.SERVICE:
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
    elif qtype in (QTYPE.A, QTYPE.AAAA) and kind in (Name.SERVICE, Name.PLACEMENT):
        seen: set[str] = set()
        for e in endpoints:
            rr = _addr_rr(qname, e.get("address"), ttl)
            if rr is None or str(rr.rdata) in seen or rr.rtype != qtype:
                continue
            seen.add(str(rr.rdata))
            reply.add_answer(rr)
    if not reply.rr:
        reply.add_auth(soa(ttl))  # NODATA
    return reply


def edns_of(query: DNSRecord) -> RR | None:
    opts = [r for r in query.ar if r.rtype == OPT]
    return opts[0] if opts else None


def udp_limit(query: DNSRecord) -> int:
    """What a UDP answer may weigh: 512 without EDNS, else the client's size within [512, 1232]."""
    opt = edns_of(query)
    return UDP_MIN if opt is None else max(UDP_MIN, min(UDP_MAX, int(opt.rclass)))


def finish(query: DNSRecord, reply: DNSRecord, udp: bool) -> bytes:
    """Add the OPT the query asked for (RFC 6891 7), then pack; over UDP, cut to ``udp_limit``
    and set TC when the whole answer does not fit."""
    if edns_of(query) is not None and not any(r.rtype == OPT for r in reply.ar):
        reply.add_ar(EDNS0(udp_len=UDP_MAX))
    data = bytes(reply.pack())
    if not udp:
        return data
    limit = udp_limit(query)
    if len(data) <= limit:
        return data
    reply.header.tc = 1
    reply.ar = [r for r in reply.ar if r.rtype == OPT]
    reply.auth = []
    # The most answer records that fit, by bisection: a few packs, not one per record dropped.
    records, lo, hi = list(reply.rr), 0, len(reply.rr)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        reply.rr = records[:mid]
        if len(reply.pack()) <= limit:
            lo = mid
        else:
            hi = mid - 1
    reply.rr = records[:lo]
    return bytes(reply.pack())


def early_reply(data: bytes) -> tuple[DNSRecord | None, DNSRecord | None]:
    """(query, reply) when ``data`` is answered without a lookup (reply set), or (query, None)
    for a well-formed QUERY of one IN name in the zone. (None, None): drop it."""
    if len(data) < 12:
        return None, None  # no header: nothing to answer to
    id_, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:
        return None, None  # a response: never answer those (no reflection loops)
    try:
        query = DNSRecord.parse(data)
    except Exception:
        # Undecodable past a valid header: FORMERR with the header alone (RFC 1035 4.1.1).
        bare = DNSRecord(DNSHeader(id=id_, qr=0, opcode=(flags >> 11) & 0xF, rd=(flags >> 8) & 1))
        return bare, empty_reply(bare, RCODE.FORMERR, question=False)
    if query.header.opcode != 0:
        return query, empty_reply(query, RCODE.NOTIMP, question=False)
    if len(query.questions) != 1:
        return query, empty_reply(query, RCODE.FORMERR, question=False)
    opts = [r for r in query.ar if r.rtype == OPT]
    if len(opts) > 1 or (opts and opts[0].rname.label):
        return query, empty_reply(query, RCODE.FORMERR)  # RFC 6891 6.1.1: one OPT, owner root
    if opts and (opts[0].ttl >> 16) & 0xFF > 0:
        reply = empty_reply(query, 0, aa=False)  # BADVERS = 16: 0 in the header, 1 in the OPT
        reply.add_ar(EDNS0(udp_len=UDP_MAX, ext_rcode=BADVERS >> 4))
        return query, reply
    try:
        parse_name(query.q.qname)
    except UnicodeDecodeError:
        return query, empty_reply(query, RCODE.FORMERR, aa=False)
    if query.q.qclass != CLASS_IN:
        return query, empty_reply(query, RCODE.REFUSED, aa=False)
    if parse_name(query.q.qname)[0] == Name.OUTSIDE or query.q.qtype in ZONE_TRANSFERS:
        return query, empty_reply(query, RCODE.REFUSED, aa=False)
    return query, None


def answer(query: DNSRecord, lookup_fn: Callable[[str], Endpoints], ttl: int = 0) -> DNSRecord:
    """The reply to one parsed query with a synchronous ``lookup_fn`` (pure apart from it)."""
    _, early = early_reply(bytes(query.pack()))
    if early is not None:
        return early
    kind, service, placement = parse_name(query.q.qname)
    endpoints = lookup_fn(service) if service is not None else []
    return build_reply(query, kind, service, placement, endpoints, ttl)


def _block(addr: Any) -> str:
    host = addr[0] if isinstance(addr, tuple) else str(addr)
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 56
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class RateLimiter:
    """Per-source-block token buckets for UDP answers: ``take(addr)`` says "answer", "slip"
    (a bare TC=1 answer) or "drop". At most ``sources`` blocks are tracked, least recently
    seen forgotten first (a forgotten block starts again with a full bucket)."""

    def __init__(self, rate: float = RRL_RATE, burst: float = RRL_BURST, slip: int = RRL_SLIP,
                 sources: int = RRL_SOURCES, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.slip, self.sources, self.clock = rate, burst, slip, sources, clock
        self.table: OrderedDict[str, list[float]] = OrderedDict()  # block -> [tokens, last, limited]

    def take(self, addr: Any) -> str:
        key = _block(addr)
        now = self.clock()
        entry = self.table.pop(key, None)
        if entry is None:
            entry = [self.burst, now, 0.0]
            while len(self.table) >= self.sources:
                self.table.popitem(last=False)
        self.table[key] = entry
        entry[0] = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
        entry[1] = now
        if entry[0] >= 1.0:
            entry[0] -= 1.0
            return "answer"
        entry[2] += 1
        return "slip" if self.slip and entry[2] % self.slip == 0 else "drop"


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
        out = await self.server.handle(data, udp=True, source=addr)
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


class DnsServer:
    """UDP and TCP DNS on ``host:port`` (port 0: any free one; ``port`` holds the bound one after start)."""

    def __init__(self, lookup_fn: LookupFn, host: str, port: int, ttl: int = 0,
                 limiter: RateLimiter | None = None, tcp_max_conns: int = TCP_MAX_CONNS,
                 tcp_idle_s: float = TCP_IDLE_S, tcp_lifetime_s: float = TCP_LIFETIME_S) -> None:
        self.lookup_fn = lookup_fn
        self.host = host
        self.port = port
        self.ttl = ttl
        self.limiter = limiter or RateLimiter()
        self.tcp_max_conns = tcp_max_conns
        self.tcp_idle_s = tcp_idle_s
        self.tcp_lifetime_s = tcp_lifetime_s
        self.limited = {"slip": 0, "drop": 0}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Future[Any]] = set()

    async def handle(self, data: bytes, udp: bool = False, source: Any = None) -> bytes | None:
        """The packed reply to one packed query; None to drop it (no header, a response, or
        over the rate limit)."""
        query, reply = early_reply(data)
        if query is None:
            return None
        if udp and source is not None:
            verdict = self.limiter.take(source)
            if verdict != "answer":
                self.limited[verdict] += 1
                if verdict == "drop":
                    return None
                slip = empty_reply(query, RCODE.NOERROR, aa=reply is None or bool(reply.header.aa))
                slip.header.tc = 1
                return bytes(slip.pack())
        if reply is None:
            kind, service, placement = parse_name(query.q.qname)
            try:
                endpoints: Any = []
                if service is not None:
                    endpoints = self.lookup_fn(service)
                    if inspect.isawaitable(endpoints):
                        endpoints = await endpoints
                reply = build_reply(query, kind, service, placement, endpoints, self.ttl)
            except Exception:
                log.exception("dns: answering %s failed", query.q.qname)
                reply = empty_reply(query, RCODE.SERVFAIL)
        return finish(query, reply, udp)

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
        if len(self._writers) >= self.tcp_max_conns:
            writer.close()
            return
        self._writers.add(writer)
        deadline = time.monotonic() + self.tcp_lifetime_s
        try:
            while True:
                left = min(self.tcp_idle_s, deadline - time.monotonic())
                if left <= 0:
                    break
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), left))[0]
                out = await self.handle(await asyncio.wait_for(reader.readexactly(size), left))
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
