"""TLS end to end: three replicas and an agent serving HTTPS with certificates from `raftctl tls init`.

Replicas verify each other (follower -> leader write forwarding); the CLI, the
discovery client and the agent verify the control plane against the cluster's CA
and refuse a server they cannot verify; plain HTTP to a TLS port gets nothing.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from raftctl.cli.main import cli
from raftctl.client import ApiError, Client
from raftctl.devcluster import LocalCluster
from raftctl.discovery.client import Client as DiscoveryClient
from raftctl.discovery.client import SyncClient
from raftctl.errors import Unavailable
from raftctl.tls import client_context, init_tls
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("tls")
    c = LocalCluster(str(base / "cluster"), replicas=3, agents=1, runtime="sim", tls_dir=str(base / "pki"))
    c.start(timeout=90)
    c.wait_agents(60)
    yield c
    c.stop()


def run_cli(args: list[str], **env: str | None):
    clean = {k: None for k in ("RAFTCTL_SERVER", "RAFTCTL_TOKEN", "RAFTCTL_CA_CERT")}
    return CliRunner().invoke(cli, args, env={**clean, "RAFTCTL_RETRY_FOR": "3", **env})


def answered(cluster: LocalCluster, p, route: str) -> float:
    """How many requests for ``route`` (e.g. ``POST /v1/metrics/{name}``) replica ``p`` has answered (its /metrics)."""
    req = urllib.request.Request(p.url + "/metrics", headers={"Authorization": f"Bearer {cluster.token()}"})
    with urllib.request.urlopen(req, context=client_context(cluster.ca), timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "raftctl_api_requests_total" and s.labels.get("route") == route:
                total += s.value
    return total


def test_every_replica_serves_https_and_publishes_an_https_url(tls_cluster):
    c = Client(tls_cluster.urls, tls_cluster.token(), ca=tls_cluster.ca)
    st = c.request("GET", "/v1/status")
    assert len(st["members"]) == 3
    assert all(m["api"].startswith("https://127.0.0.1:") for m in st["members"]), st["members"]
    for p in tls_cluster.servers:
        assert p.url.startswith("https://")
        assert Client([p.url], tls_cluster.token(), ca=tls_cluster.ca).request("GET", "/v1/status")["node"] == p.id


def test_a_write_to_a_follower_is_forwarded_to_the_leader_over_https(tls_cluster):
    leader = wait_until(tls_cluster.leader, 30, what="a leader")
    follower = next(p for p in tls_cluster.servers if p is not leader)
    c = Client([follower.url], tls_cluster.token(), ca=tls_cluster.ca)
    out = c.request("PUT", "/v1/jobs/tls-web", {"name": "tls-web", "image": "web:1", "command": ["true"],
                                                "replicas": 1})
    assert out["name"] == "tls-web" and out["version"] == 1
    # a custom metric lives in the leader's memory (the autoscaler's input), so its route is proxied to the leader
    route = "POST /v1/metrics/{name}"
    before = answered(tls_cluster, leader, route)
    assert c.request("POST", "/v1/metrics/tls-web", {"metric": "rps", "value": 3})["value"] == 3
    # the leader answered it itself: the follower proxied it over HTTPS, verifying the leader's certificate
    assert answered(tls_cluster, leader, route) == before + 1
    with open(os.path.join(follower.data_dir, "server.log")) as f:
        assert "forward to leader" not in f.read()
    assert c.request("GET", "/v1/jobs/tls-web", query={"consistent": "1"})["name"] == "tls-web"


def test_the_cli_verifies_the_server_with_the_ca(tls_cluster):
    servers = ",".join(tls_cluster.urls)
    ok = run_cli(["--server", servers, "--tls-ca", tls_cluster.ca, "-o", "json", "cluster", "status"],
                 RAFTCTL_TOKEN=tls_cluster.token())
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["leader"]
    via_env = run_cli(["--server", servers, "job", "list"], RAFTCTL_TOKEN=tls_cluster.token(),
                      RAFTCTL_CA_CERT=tls_cluster.ca)
    assert via_env.exit_code == 0, via_env.output


def test_the_cli_refuses_a_server_it_cannot_verify(tls_cluster, tmp_path):
    servers = ",".join(tls_cluster.urls)
    no_ca = run_cli(["--server", servers, "job", "list"], RAFTCTL_TOKEN=tls_cluster.token())
    assert no_ca.exit_code == 2
    assert "certificate verify failed for https://127.0.0.1:" in no_ca.output
    assert "unable to get local issuer certificate" in no_ca.output
    assert "--tls-ca" in no_ca.output
    init_tls(str(tmp_path / "other"))
    wrong_ca = run_cli(["--server", servers, "--tls-ca", str(tmp_path / "other" / "ca.crt"), "job", "list"],
                       RAFTCTL_TOKEN=tls_cluster.token())
    assert wrong_ca.exit_code == 2
    assert "is not the CA that signed it" in wrong_ca.output
    with pytest.raises(ApiError) as err:
        Client(tls_cluster.urls, tls_cluster.token()).request("GET", "/v1/status")
    assert err.value.code == "tls_verify_failed"


def test_plain_http_to_a_tls_port_gets_no_answer(tls_cluster):
    p = tls_cluster.servers[0]
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        urllib.request.urlopen(f"http://{p.api}/healthz", timeout=5).read()
    with pytest.raises(Unavailable):
        Client([f"http://{p.api}"], tls_cluster.token(), retry_for=1).request("GET", "/v1/status")


async def test_the_discovery_client_verifies_the_control_plane(tls_cluster, tmp_path):
    async with DiscoveryClient(tls_cluster.urls, tls_cluster.token(), ssl=client_context(tls_cluster.ca)) as dc:
        ans = await dc.lookup("nothing-here")
        assert ans.endpoints == [] and not ans.stale
    async with DiscoveryClient(tls_cluster.urls, tls_cluster.token(), timeout=2) as dc:  # system trust store only
        with pytest.raises(Unavailable) as err:
            await dc.lookup("nothing-here")
        assert "CERTIFICATE_VERIFY_FAILED" in err.value.message
    init_tls(str(tmp_path / "other"))
    other = client_context(str(tmp_path / "other" / "ca.crt"))
    sync = await asyncio.to_thread(SyncClient, tls_cluster.urls, tls_cluster.token(),
                                   ssl=client_context(tls_cluster.ca))
    try:
        assert (await asyncio.to_thread(sync.lookup, "nothing-here")).endpoints == []
    finally:
        await asyncio.to_thread(sync.close)
    async with DiscoveryClient(tls_cluster.urls, tls_cluster.token(), ssl=other, timeout=2) as dc:
        with pytest.raises(Unavailable) as err:
            await dc.lookup("nothing-here")
        assert "CERTIFICATE_VERIFY_FAILED" in err.value.message


def test_the_agent_registers_over_https_and_serves_its_endpoint_over_https(tls_cluster):
    c = Client(tls_cluster.urls, tls_cluster.token(), ca=tls_cluster.ca)
    m1 = next(m for m in c.request("GET", "/v1/machines")["machines"] if m["id"] == "m1")
    assert m1["status"] == "up"
    assert m1["api"].startswith("https://127.0.0.2:"), m1["api"]
    # the agent checks the caller's token with the control plane (over HTTPS, verifying it), then answers 404
    req = urllib.request.Request(m1["api"] + "/v1/logs/no-such-placement",
                                 headers={"Authorization": f"Bearer {tls_cluster.token()}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=client_context(tls_cluster.ca), timeout=10)
    assert err.value.code == 404
    bad = urllib.request.Request(m1["api"] + "/v1/logs/no-such-placement", headers={"Authorization": "Bearer nope"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, context=client_context(tls_cluster.ca), timeout=10)
    assert err.value.code == 403


def test_a_replica_is_added_and_removed_with_the_cli_over_https(tls_cluster):
    """The install guide's procedure: start the new replica, `cluster add-member`, later `cluster remove-member`."""
    from raftctl.devcluster import add_server

    env = {"RAFTCTL_TOKEN": tls_cluster.token(), "RAFTCTL_CA_CERT": tls_cluster.ca}
    servers = ",".join(tls_cluster.urls)
    p = add_server(tls_cluster, "n4")
    try:
        tls_cluster.start_proc(p)
        out = run_cli(["--server", servers, "cluster", "add-member", "--raft", p.raft, "--api", p.url, "--id", "n4"],
                      **env)
        assert out.exit_code == 0, out.output
        tls_cluster.wait_ready(60, procs=[p])
        c = Client([p.url], tls_cluster.token(), ca=tls_cluster.ca, retry_for=30)
        wait_until(lambda: len(c.request("GET", "/v1/status")["members"]) == 4, 30, what="4 members")
        c.request("POST", "/v1/jobs/tls-web/scale", {"replicas": 2})  # through the new replica
        out = run_cli(["--server", servers, "cluster", "remove-member", p.raft], **env)
        assert out.exit_code == 0, out.output
    finally:
        tls_cluster.kill(p)
        tls_cluster.procs.remove(p)
    status = Client(tls_cluster.urls, tls_cluster.token(), ca=tls_cluster.ca)
    want = sorted(q.raft for q in tls_cluster.servers)
    # the removal is acknowledged by the leader; the replica that answers may apply it a moment later
    wait_until(lambda: sorted(m["raft"] for m in status.request("GET", "/v1/status")["members"]) == want, 10,
               what="3 members after the removal")
    job = Client(tls_cluster.urls, tls_cluster.token(), ca=tls_cluster.ca).request(
        "GET", "/v1/jobs/tls-web", query={"consistent": "1"})
    assert job["replicas"] == 2


def test_a_blob_pushed_to_one_replica_is_copied_to_the_others_over_https(tls_cluster, tmp_path):
    import hashlib

    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    first = tls_cluster.servers[1]
    out = Client([first.url], tls_cluster.token(), ca=tls_cluster.ca).push_blob(digest, str(path))
    assert out["replicas"] == 3  # the replica verified both peers' certificates and copied to each
    for p in tls_cluster.servers:
        assert Client([p.url], tls_cluster.token(), ca=tls_cluster.ca).has_blob(digest), p.id
