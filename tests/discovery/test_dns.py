"""DNS SRV/A/AAAA over real UDP and TCP sockets on 127.0.0.1, checked against the HTTP answer."""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from raftctl.discovery.client import Client
from raftctl.discovery.dns import DnsServer
from raftctl.discovery.view import lookup
from tests.discovery.conftest import TOKEN, Cluster, endpoint


async def ask(port: int, name: str, qtype: str, tcp: bool = False, edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=edns))
    raw = await asyncio.to_thread(q.send, "127.0.0.1", port, tcp=tcp, timeout=2)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == q.header.id
    return reply


@pytest.fixture
async def dns(cluster: Cluster):
    server = DnsServer(lambda svc: lookup(cluster.discovery, cluster.machines, svc)["endpoints"], "127.0.0.1", 0)
    await server.start()
    assert server.port != 0
    yield server
    await server.stop()


@pytest.mark.parametrize("tcp", [False, True])
async def test_srv_and_a_match_the_http_answer(dns: DnsServer, replicas, cluster: Cluster, tcp: bool) -> None:
    await cluster.publish("web", endpoint("web-0003", "m2", "127.0.0.2", 31003))  # two ports on one address
    async with Client([replicas[0].url], TOKEN) as dc:
        http = (await dc.lookup("web")).endpoints
    reply = await ask(dns.port, "web.service.raftctl", "SRV", tcp=tcp)
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
    srv = sorted((str(r.rdata.target), r.rdata.port, r.rdata.priority, r.rdata.weight, r.ttl)
                 for r in reply.rr if r.rtype == QTYPE.SRV)
    assert srv == sorted((f"{e['placement']}.web.service.raftctl.", e["port"], 1, 1, 0) for e in http)
    glue = sorted((str(r.rname), str(r.rdata)) for r in reply.ar if r.rtype == QTYPE.A)
    assert glue == sorted((f"{e['placement']}.web.service.raftctl.", e["address"]) for e in http)

    reply = await ask(dns.port, "WEB.Service.Raftctl", "A", tcp=tcp)
    assert all(r.rtype == QTYPE.A and r.ttl == 0 for r in reply.rr)
    assert sorted(str(r.rdata) for r in reply.rr) == sorted({e["address"] for e in http})  # no duplicates


async def test_placement_names_resolve_and_unknown_names_do_not(dns: DnsServer) -> None:
    reply = await ask(dns.port, "web-0002.web.service.raftctl", "A")
    assert [str(r.rdata) for r in reply.rr] == ["127.0.0.2"]
    reply = await ask(dns.port, "_web._tcp.service.raftctl", "SRV")
    assert len(reply.rr) == 2
    for name in ("nope.example.com", "web-9999.web.service.raftctl", "a.b.web.service.raftctl", "service.raftctl"):
        assert (await ask(dns.port, name, "A")).header.rcode == RCODE.NXDOMAIN, name


async def test_empty_service_and_other_types_are_nodata(dns: DnsServer) -> None:
    for name, qtype in (("not-yet.service.raftctl", "SRV"), ("web.service.raftctl", "TXT"),
                        ("web.service.raftctl", "AAAA")):
        reply = await ask(dns.port, name, qtype)
        assert reply.header.rcode == RCODE.NOERROR and not reply.rr, (name, qtype)


async def test_answers_follow_changes(dns: DnsServer, cluster: Cluster) -> None:
    await cluster.unpublish("web", "web-0001")
    await cluster.publish("web", endpoint("web-0007", "m7", "fd00::7", 31007))
    reply = await ask(dns.port, "web.service.raftctl", "SRV")
    assert sorted(str(r.rdata.target) for r in reply.rr) == ["web-0002.web.service.raftctl.",
                                                             "web-0007.web.service.raftctl."]
    assert {QTYPE[r.rtype] for r in reply.ar} == {"A", "AAAA"}
    reply = await ask(dns.port, "web.service.raftctl", "AAAA")
    assert [str(r.rdata) for r in reply.rr] == ["fd00::7"]


async def test_big_answers_truncate_on_udp_and_are_whole_over_tcp(dns: DnsServer, cluster: Cluster) -> None:
    for i in range(40):
        await cluster.publish("big", endpoint(f"big-{i:04d}", f"m{i}", f"10.1.0.{i + 1}", 32000 + i))
    udp = await ask(dns.port, "big.service.raftctl", "SRV")
    assert udp.header.tc and len(udp.pack()) <= 512 and 0 < len(udp.rr) < 40
    edns = await ask(dns.port, "big.service.raftctl", "SRV", edns=4096)
    assert not edns.header.tc and len(edns.rr) == 40
    tcp = await ask(dns.port, "big.service.raftctl", "SRV", tcp=True)
    assert not tcp.header.tc and len(tcp.rr) == 40 and len(tcp.ar) == 40


async def test_ttl_async_lookup_and_servfail() -> None:
    async def fn(service: str) -> list[dict[str, Any]]:
        if service == "boom":
            raise RuntimeError("lookup failed")
        await asyncio.sleep(0)
        return [endpoint("x-1", "m1", "10.2.0.1", 80)]

    server = DnsServer(fn, "127.0.0.1", 0, ttl=7)
    await server.start()
    try:
        reply = await ask(server.port, "x.service.raftctl", "SRV")
        assert [r.ttl for r in reply.rr + reply.ar] == [7, 7]
        assert (await ask(server.port, "boom.service.raftctl", "A")).header.rcode == RCODE.SERVFAIL
    finally:
        await server.stop()


async def test_garbage_and_responses_are_dropped_and_stop_closes_idle_tcp(dns: DnsServer) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for junk in (b"\x00\x01garbage", DNSRecord.question("web.service.raftctl").reply().pack()):
            await loop.sock_sendto(sock, junk, ("127.0.0.1", dns.port))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(sock, 512), 0.2)
    finally:
        sock.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", dns.port)
    q = DNSRecord.question("web.service.raftctl", "A").pack()
    writer.write(struct.pack("!H", len(q)) + q)
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    assert len(DNSRecord.parse(await reader.readexactly(size)).rr) == 2
    await asyncio.wait_for(dns.stop(), 2)  # an idle keep-alive connection does not hold it up
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
