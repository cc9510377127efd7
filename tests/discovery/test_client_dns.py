"""The discovery client and DNS against real replicas: rotation, last-known-good, watches, SRV/A."""
from __future__ import annotations

import asyncio
import signal

import pytest
from dnslib import QTYPE, DNSRecord

from raftctl.devcluster import LocalCluster, free_port
from raftctl.discovery.client import Client, SyncClient
from raftctl.errors import Unauthorized, Unavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    cl = LocalCluster(str(tmp_path_factory.mktemp("dc")), replicas=3)
    cl.dns_ports = {}
    for p in cl.servers:
        cl.dns_ports[p.id] = free_port()
        p.extra_args = ["--heartbeat-ttl", "1h", "--dns-port", str(cl.dns_ports[p.id])]
    cl.start(timeout=60)
    from raftctl.client import Client as Api

    api = Api(cl.urls, cl.token())
    for i in range(2):
        api.request("POST", "/v1/agent/register", {
            "machine": f"d{i}", "address": f"127.0.2.{i + 1}", "fault_domain": {"zone": f"z{i}"}, "labels": {},
            "resources": {"cpu": 4000, "memory": 4 << 30, "pids": 1000}, "ports": [31000, 31100], "runtime": "sim"})
    api.request("PUT", "/v1/jobs/web", {"name": "web", "image": "w:1", "command": ["serve"], "replicas": 2,
                                        "ports": [{"name": "http"}], "spread": [{"level": "zone", "mode": "hard"}]})
    import time
    for _ in range(100):
        # read through the leader: a follower may not have applied the PUT yet
        pl = api.request("GET", "/v1/jobs/web/placements", query={"consistent": "1"})["placements"]
        if len(pl) == 2:
            break
        time.sleep(0.1)
    for p in pl:
        api.request("POST", "/v1/agent/report", {"machine": p["machine"], "updates": [
            {"placement": p["id"], "state": "running", "health": "healthy"}]})
    for url in cl.urls:  # every replica has applied the reports (tests read from followers too)
        for _ in range(100):
            if len(Api([url], cl.token()).request("GET", "/v1/discovery/web")["endpoints"]) == 2:
                break
            time.sleep(0.05)
    cl.api = api
    cl.placements = pl
    yield cl
    cl.stop()


async def test_lookup_pick_round_robin_and_rotation(c):
    async with Client(["http://127.0.0.1:9"] + c.urls, c.token()) as dc:
        ans = await dc.lookup("web")
        assert len(ans.endpoints) == 2 and not ans.stale and ans.source != "http://127.0.0.1:9"
        picks = {(await dc.pick("web"))["placement"] for _ in range(4)}
        assert picks == {p["id"] for p in c.placements}


async def test_unauthorized_is_raised_not_masked(c):
    async with Client(c.urls, "rct_wrong") as dc:
        with pytest.raises(Unauthorized):
            await dc.lookup("web")


async def test_watch_wakes_on_change(c):
    async with Client(c.urls, c.token()) as dc:
        it = dc.watch("web").__aiter__()
        first = await it.__anext__()
        p = c.placements[0]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: c.api.request("POST", "/v1/agent/report", {
            "machine": p["machine"], "updates": [{"placement": p["id"], "state": "running", "health": "unhealthy"}]}))
        t0 = loop.time()
        second = await asyncio.wait_for(it.__anext__(), 5)
        assert loop.time() - t0 < 0.1
        assert second.index > first.index and len(second.endpoints) == 1
        await loop.run_in_executor(None, lambda: c.api.request("POST", "/v1/agent/report", {
            "machine": p["machine"], "updates": [{"placement": p["id"], "state": "running", "health": "healthy"}]}))
        third = await asyncio.wait_for(it.__anext__(), 5)
        assert len(third.endpoints) == 2


def test_dns_srv_and_a_match_http(c):
    http = c.api.request("GET", "/v1/discovery/web", query={"consistent": "1"})
    port = next(iter(c.dns_ports.values()))
    q = DNSRecord.question("web.service.raftctl", "SRV")
    reply = DNSRecord.parse(q.send("127.0.0.1", port, timeout=3))
    srv = sorted((str(r.rdata.target), r.rdata.port) for r in reply.rr if r.rtype == QTYPE.SRV)
    assert srv == sorted((f"{e['placement']}.web.service.raftctl.", e["port"]) for e in http["endpoints"])
    a = {str(r.rdata) for r in reply.ar if r.rtype == QTYPE.A}
    assert a == {e["address"] for e in http["endpoints"]}
    reply = DNSRecord.parse(DNSRecord.question("web.service.raftctl", "A").send("127.0.0.1", port, tcp=True, timeout=3))
    assert {str(r.rdata) for r in reply.rr} == {e["address"] for e in http["endpoints"]}
    reply = DNSRecord.parse(DNSRecord.question("nope.example.com", "A").send("127.0.0.1", port, timeout=3))
    assert reply.header.rcode == 5 and not reply.header.ra  # REFUSED: authoritative for service.raftctl only
    reply = DNSRecord.parse(DNSRecord.question("nope.service.raftctl", "A").send("127.0.0.1", port, timeout=3))
    assert reply.header.rcode == 3 and reply.header.aa  # NXDOMAIN


def test_last_known_good_when_every_replica_is_down(c):
    dc = SyncClient(c.urls, c.token(), timeout=1.0)
    try:
        fresh = dc.lookup("web")
        assert not fresh.stale and len(fresh.endpoints) == 2
        for p in c.servers:  # the whole control plane dies (last test of the module)
            c.kill(p, signal.SIGKILL)
        old = dc.lookup("web")
        assert old.stale and old.endpoints == fresh.endpoints and old.age_s > 0
        with pytest.raises(Unavailable):
            dc.lookup("never-seen")
    finally:
        dc.close()
