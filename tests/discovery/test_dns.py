"""DNS SRV/A/AAAA over real UDP and TCP sockets on 127.0.0.1, checked against the HTTP answer, and the
server's conformance (RFC 1035, 6891, 8482, 8906) and amplification bounds with dnspython as the client."""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import dns.flags as dflags
import dns.message as dmsg
import dns.name as dname
import dns.opcode as dopcode
import dns.query as dquery
import dns.rcode as drcode
import dns.rdataclass as dclass
import dns.rdatatype as dtype
import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from raftctl.discovery.client import Client
from raftctl.discovery.dns import DnsServer, RateLimiter
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
    for name in ("web-9999.web.service.raftctl", "a.b.web.service.raftctl"):
        assert (await ask(dns.port, name, "A")).header.rcode == RCODE.NXDOMAIN, name
    assert (await ask(dns.port, "nope.example.com", "A")).header.rcode == RCODE.REFUSED  # not our zone


async def test_empty_service_is_nxdomain_and_other_types_are_nodata(dns: DnsServer) -> None:
    assert (await ask(dns.port, "not-yet.service.raftctl", "SRV")).header.rcode == RCODE.NXDOMAIN
    for name, qtype in (("web.service.raftctl", "TXT"), ("web.service.raftctl", "AAAA"),
                        ("service.raftctl", "A"), ("web-0001.web.service.raftctl", "SRV")):
        reply = await ask(dns.port, name, qtype)
        assert reply.header.rcode == RCODE.NOERROR and not reply.rr, (name, qtype)
        assert [QTYPE[r.rtype] for r in reply.auth] == ["SOA"], (name, qtype)


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
    assert edns.header.tc and len(edns.pack()) <= 1232 and len(udp.rr) < len(edns.rr) < 40
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


# -- RFC 1035 / 6891 / 8482 / 8906 conformance, with dnspython as the client ------------------


async def dp(port: int, q: dmsg.Message, tcp: bool = False, source: str | None = None) -> dmsg.Message:
    """Send with dnspython over UDP (or TCP) and return its parsed answer."""
    fn = dquery.tcp if tcp else dquery.udp
    return await asyncio.to_thread(fn, q, "127.0.0.1", timeout=2, port=port, source=source)


def query(name: str | dname.Name, qtype: str = "A", **kw: Any) -> dmsg.Message:
    return dmsg.make_query(name, qtype, **kw)


@pytest.mark.parametrize("tcp", [False, True])
async def test_header_is_authoritative_without_recursion_or_dnssec_bits(dns: DnsServer, tcp: bool) -> None:
    q = query("web.service.raftctl", "A")
    q.flags |= dflags.AD | dflags.CD | dflags.RD
    r = await dp(dns.port, q, tcp=tcp)
    assert r.rcode() == drcode.NOERROR and len(r.answer[0]) == 2
    assert r.flags & dflags.AA and r.flags & dflags.RD  # RD is copied
    assert not r.flags & (dflags.RA | dflags.AD | dflags.CD)
    q = query("web.service.raftctl", "A")
    q.flags &= ~dflags.RD
    assert not (await dp(dns.port, q, tcp=tcp)).flags & (dflags.RD | dflags.RA)


async def test_opcode_other_than_query_is_notimp(dns: DnsServer) -> None:
    for opcode in (dopcode.STATUS, dopcode.NOTIFY, dopcode.UPDATE):
        q = query("web.service.raftctl", "SOA")
        q.set_opcode(opcode)
        r = await dp(dns.port, q)
        assert r.rcode() == drcode.NOTIMP and r.opcode() == opcode, opcode
        assert not r.flags & dflags.RA and not r.answer


@pytest.mark.parametrize("tcp", [False, True])
async def test_edns_version_above_zero_is_badvers_with_an_opt(dns: DnsServer, tcp: bool) -> None:
    r = await dp(dns.port, query("web.service.raftctl", "A", use_edns=1, payload=1232), tcp=tcp)
    assert r.rcode() == drcode.BADVERS and r.edns == 0 and not r.answer


@pytest.mark.parametrize("tcp", [False, True])
async def test_an_opt_in_the_query_gets_an_opt_in_the_answer(dns: DnsServer, tcp: bool) -> None:
    r = await dp(dns.port, query("web.service.raftctl", "SRV", use_edns=0, payload=4096), tcp=tcp)
    assert r.rcode() == drcode.NOERROR and r.edns == 0 and r.payload == 1232
    assert len(r.answer[0]) == 2
    plain = await dp(dns.port, query("web.service.raftctl", "SRV"), tcp=tcp)
    assert plain.edns == -1  # no OPT asked, none given


@pytest.mark.parametrize("rdclass", [dclass.CH, dclass.ANY, dclass.HS])
async def test_classes_other_than_in_are_refused(dns: DnsServer, rdclass: int) -> None:
    r = await dp(dns.port, query("web.service.raftctl", "A", rdclass=rdclass))
    assert r.rcode() == drcode.REFUSED and not r.answer and not r.additional


async def test_a_non_ascii_label_is_formerr_not_silence(dns: DnsServer) -> None:
    name = dname.Name([b"w\xc3\xa9b", b"service", b"raftctl", b""])
    r = await dp(dns.port, query(name, "A"))
    assert r.rcode() == drcode.FORMERR and not r.answer
    r = await dp(dns.port, query(dname.Name([b"web", b"\xffservice", b"raftctl", b""]), "SRV"), tcp=True)
    assert r.rcode() == drcode.FORMERR


@pytest.mark.parametrize("tcp", [False, True])
async def test_no_question_or_two_questions_are_formerr_without_a_question(dns: DnsServer, tcp: bool) -> None:
    empty = dmsg.Message()
    r = await dp(dns.port, empty, tcp=tcp)
    assert r.rcode() == drcode.FORMERR and r.question == [] and r.id == empty.id
    two = query("web.service.raftctl", "A")
    two.find_rrset(two.question, dname.from_text("db.service.raftctl"), dclass.IN,
                   dtype.A, create=True, force_unique=True)
    assert len(two.question) == 2
    raw = await asyncio.to_thread(dquery.udp, two, "127.0.0.1", timeout=2, port=dns.port,
                                  ignore_unexpected=True) if not tcp else await dp(dns.port, two, tcp=True)
    assert raw.rcode() == drcode.FORMERR and raw.question == [] and not raw.answer


@pytest.mark.parametrize("name", ["nope.service.raftctl", "web\x00.service.raftctl", "x.nope.service.raftctl",
                                  "web-9999.web.service.raftctl", "_nope._tcp.service.raftctl",
                                  "a.b.web.service.raftctl"])
async def test_names_that_do_not_exist_are_nxdomain_with_the_soa(dns: DnsServer, name: str) -> None:
    qname = dname.Name([lab.encode() for lab in name.split(".")] + [b""])
    calls: list[str] = []
    orig = dns.lookup_fn

    def spy(svc: str) -> Any:
        calls.append(svc)
        return orig(svc)

    dns.lookup_fn = spy
    for qtype in ("A", "SRV", "ANY"):
        r = await dp(dns.port, query(qname, qtype))
        assert r.rcode() == drcode.NXDOMAIN and r.flags & dflags.AA and not r.answer, (name, qtype)
        assert [(rr.rdtype, rr.name.to_text()) for rr in r.authority] == [(dtype.SOA, "service.raftctl.")]
    assert "web\x00" not in calls  # a label no job can have is not looked up


async def test_a_name_without_records_of_the_type_is_nodata_with_the_soa(dns: DnsServer) -> None:
    for name, qtype in (("web.service.raftctl", "AAAA"), ("web.service.raftctl", "MX"),
                        ("web-0001.web.service.raftctl", "SRV"), ("_tcp.service.raftctl", "SRV")):
        r = await dp(dns.port, query(name, qtype))
        assert r.rcode() == drcode.NOERROR and r.flags & dflags.AA and not r.answer, (name, qtype)
        assert [rr.rdtype for rr in r.authority] == [dtype.SOA], (name, qtype)
    r = await dp(dns.port, query("service.raftctl", "SOA"))
    assert [rr.rdtype for rr in r.answer] == [dtype.SOA]


@pytest.mark.parametrize("tcp", [False, True])
async def test_any_gets_a_minimal_rfc8482_answer(dns: DnsServer, cluster: Cluster, tcp: bool) -> None:
    for i in range(30):
        await cluster.publish("many", endpoint(f"many-{i:04d}", f"m{i}", f"10.3.0.{i + 1}", 33000 + i))
    r = await dp(dns.port, query("many.service.raftctl", "ANY", use_edns=0, payload=4096), tcp=tcp)
    assert r.rcode() == drcode.NOERROR and len(r.answer) == 1 and len(r.answer[0]) == 1
    hinfo = r.answer[0][0]
    assert r.answer[0].rdtype == dtype.HINFO and hinfo.cpu == b"RFC8482" and hinfo.os == b""
    assert not r.additional or all(rr.rdtype == dtype.OPT for rr in r.additional)


async def test_udp_answers_are_capped_and_truncated(dns: DnsServer, cluster: Cluster) -> None:
    for i in range(100):
        await cluster.publish("wide", endpoint(f"wide-{i:04d}", f"m{i}", f"10.4.{i // 250}.{i % 250 + 1}", 34000 + i))
    q = query("wide.service.raftctl", "SRV", use_edns=0, payload=4096)
    wire = await asyncio.to_thread(_udp_raw, dns.port, q.to_wire())
    r = dmsg.from_wire(wire)
    assert len(wire) <= 1232 and r.flags & dflags.TC
    assert len(wire) / len(q.to_wire()) < 30  # was 85x with the 4096-byte answers
    plain = await asyncio.to_thread(_udp_raw, dns.port, query("wide.service.raftctl", "SRV").to_wire())
    assert len(plain) <= 512 and dmsg.from_wire(plain).flags & dflags.TC
    small = await asyncio.to_thread(_udp_raw, dns.port, query("wide.service.raftctl", "SRV", use_edns=0,
                                                               payload=100).to_wire())
    assert len(small) <= 512  # below 512 counts as 512 (RFC 6891 6.2.5)
    full = await dp(dns.port, query("wide.service.raftctl", "SRV"), tcp=True)
    assert len(full.answer[0]) == 100 and not full.flags & dflags.TC


def _udp_raw(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        return s.recv(65535)


def _burst(port: int, n: int, source: str) -> tuple[int, int, float]:
    """Send n queries back to back from ``source``; (full answers, TC slips, seconds taken)."""
    full = slips = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(0.5)
        t0 = time.monotonic()
        for _ in range(n):
            s.sendto(query("web.service.raftctl", "A").to_wire(), ("127.0.0.1", port))
        while True:
            try:
                r = dmsg.from_wire(s.recv(65535))
            except socket.timeout:
                break
            if r.flags & dflags.TC and not r.answer:
                slips += 1
            elif len(r.answer) == 1:
                full += 1
        return full, slips, time.monotonic() - t0


async def test_udp_answers_are_rate_limited_per_source_block(dns: DnsServer) -> None:
    full, slips, took = await asyncio.to_thread(_burst, dns.port, 200, "127.0.0.1")
    assert 40 <= full <= 40 + 20 * took + 1, (full, took)  # burst 40, then 20/s
    assert slips >= 40 and full + slips < 200, (full, slips)  # every 2nd limited query slips, the rest drop
    other, _, _ = await asyncio.to_thread(_burst, dns.port, 30, "127.0.1.1")  # another /24: its own bucket
    assert other == 30
    r = await dp(dns.port, query("web.service.raftctl", "A"), tcp=True)  # TCP is not limited
    assert r.rcode() == drcode.NOERROR and len(r.answer[0]) == 2
    assert dns.limited["drop"] > 0 and dns.limited["slip"] == slips


async def test_tcp_answers_are_not_rate_limited_but_connections_are_bounded(cluster: Cluster) -> None:
    server = DnsServer(lambda svc: lookup(cluster.discovery, cluster.machines, svc)["endpoints"], "127.0.0.1", 0,
                       tcp_max_conns=2, tcp_idle_s=0.5)
    await server.start()
    try:
        for _ in range(60):
            assert len((await dp(server.port, query("web.service.raftctl", "A"), tcp=True)).answer[0]) == 2
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 1) == b""  # a third connection is closed at once
        writer.close()
        for r, _ in held:  # idle ones are closed after tcp_idle_s
            assert await asyncio.wait_for(r.read(), 2) == b""
        for _, w in held:
            w.close()
    finally:
        await server.stop()


def test_rate_limiter_refills_and_tracks_a_bounded_number_of_sources() -> None:
    now = [100.0]
    rl = RateLimiter(rate=2, burst=4, slip=2, sources=3, clock=lambda: now[0])
    assert [rl.take(("10.0.0.1", 53)) for _ in range(6)] == ["answer"] * 4 + ["drop", "slip"]
    assert rl.take(("10.0.0.200", 9)) == "drop"  # the same /24
    now[0] += 1.0  # 2 tokens back
    assert [rl.take(("10.0.0.7", 1)) for _ in range(3)] == ["answer", "answer", "slip"]
    for i in range(10):
        rl.take((f"10.0.{i + 1}.1", 53))
    assert len(rl.table) == 3
    assert rl.take(("2001:db8::1", 53)) == "answer" and "2001:db8::/56" in rl.table


def test_cutting_a_long_udp_answer_packs_a_few_times_not_once_per_record(monkeypatch) -> None:
    from raftctl.discovery import dns as mod

    eps = [endpoint(f"many-{i:04d}", f"m{i}", f"10.5.{i // 250}.{i % 250 + 1}", 30000 + i) for i in range(1000)]
    q = DNSRecord.question("many.service.raftctl", "SRV")
    q.add_ar(EDNS0(udp_len=4096))
    reply = mod.answer(q, lambda svc: eps)
    packs = []
    real = DNSRecord.pack
    monkeypatch.setattr(DNSRecord, "pack", lambda self: packs.append(1) or real(self))
    data = mod.finish(q, reply, udp=True)
    cut = DNSRecord.parse(data)
    assert len(data) <= 1232 and cut.header.tc and 0 < len(cut.rr) < 1000
    assert len(packs) <= 15, len(packs)  # bisection: ~log2(1000) + 2 (one pack per record dropped: ~1000)


@pytest.mark.parametrize("tcp", [False, True])
async def test_bytes_dnslib_cannot_decode_after_a_header_get_formerr(dns: DnsServer, tcp: bool) -> None:
    q = dmsg.make_query("web.service.raftctl", "A")
    wire = q.to_wire()
    for bad in (wire[:-3],                                   # the question cut short
                wire[:12] + b"\xc0\x0c\x00\x01\x00\x01"):    # a name that points at itself (a loop)
        if tcp:
            reader, writer = await asyncio.open_connection("127.0.0.1", dns.port)
            writer.write(struct.pack("!H", len(bad)) + bad)
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
            raw = await reader.readexactly(size)
            writer.close()
        else:
            raw = await asyncio.to_thread(_udp_raw, dns.port, bad)
        r = dmsg.from_wire(raw)
        assert r.id == q.id and r.rcode() == drcode.FORMERR and r.flags & dflags.QR and not r.question, bad
