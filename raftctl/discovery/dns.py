"""DNS for discovery, like Consul's: SRV and A records for `<service>.service.raftctl`.

Answers come from the same replicated entries as HTTP lookups (``lookup_fn``).
SRV targets are `<placement>.<service>.service.raftctl`, with their A records in
the additional section. Other names get NXDOMAIN. UDP and TCP, asyncio.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Callable

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord

log = logging.getLogger("raftctl.discovery.dns")
DOMAIN = "service.raftctl"
LookupFn = Callable[[str], list[dict[str, Any]]]


def answer(query: DNSRecord, lookup_fn: LookupFn, ttl: int = 0) -> DNSRecord:
    """The reply to one query (pure apart from ``lookup_fn``)."""
    reply = query.reply()
    qname = query.q.qname
    labels = [str(x, "ascii", "replace") if isinstance(x, bytes) else str(x) for x in qname.label]
    suffix = DOMAIN.split(".")
    if len(labels) < 3 or [lab.lower() for lab in labels[-2:]] != suffix:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    head = labels[:-2]
    service = head[-1].lower()
    placement = head[-2] if len(head) >= 2 else None
    endpoints = lookup_fn(service)
    if placement is not None:
        endpoints = [e for e in endpoints if e["placement"] == placement]
    if not endpoints and placement is not None:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    qtype = QTYPE[query.q.qtype]
    for e in endpoints:
        target = DNSLabel(f"{e['placement']}.{service}.{DOMAIN}")
        if qtype in ("SRV", "ANY") and placement is None:
            reply.add_answer(RR(qname, QTYPE.SRV, ttl=ttl, rdata=SRV(priority=1, weight=1, port=int(e["port"] or 0),
                                                                     target=target)))
            reply.add_ar(_addr_rr(target, e["address"], ttl))
        if qtype in ("A", "AAAA", "ANY"):
            rr = _addr_rr(qname, e["address"], ttl)
            if QTYPE[rr.rtype] == qtype or qtype == "ANY":
                reply.add_answer(rr)
    return reply


def _addr_rr(name: Any, address: str, ttl: int) -> RR:
    if ":" in address:
        return RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(address))
    return RR(name, QTYPE.A, ttl=ttl, rdata=A(address))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: "DnsServer") -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        out = self.server.handle(data)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


class DnsServer:
    def __init__(self, lookup_fn: LookupFn, host: str, port: int, ttl: int = 0) -> None:
        self.lookup_fn = lookup_fn
        self.host = host
        self.port = port
        self.ttl = ttl
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None

    def handle(self, data: bytes) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None  # not DNS: drop it
        try:
            return answer(query, self.lookup_fn, self.ttl).pack()
        except Exception:
            log.exception("dns answer failed")
            reply = query.reply()
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.port))
        self.port = self._udp.get_extra_info("sockname")[1]
        self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                out = self.handle(await reader.readexactly(size))
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
