"""Three real replicas as subprocesses on loopback: writes, reads, failures, auth."""
from __future__ import annotations

import json
import signal

import pytest

from raftctl.client import ApiError
from raftctl.statemachine.state import SNAPSHOT_SCHEMA

from .conftest import SPEC, client_for, raw, wait_until

pytestmark = pytest.mark.integration


def followers(cluster):
    leader = wait_until(cluster.leader, what="a leader")
    return leader, [p for p in cluster.servers if p is not leader]


def test_write_through_follower_is_read_from_every_replica(cluster):
    leader, (f1, _) = followers(cluster)
    res = client_for(cluster, f1).request("PUT", "/v1/jobs/web", SPEC)
    assert res["version"] == 1 and res["index"] > 0
    for p in cluster.servers:
        job = client_for(cluster, p).request("GET", "/v1/jobs/web", query={"consistent": "1"})
        assert job["spec"]["image"] == "web:1" and job["version"] == 1
        assert job["spec"]["resources"]["memory"] == 64 * 1024 * 1024  # normalized by the spec validator


def requests_answered(cluster, p, route: str) -> float:
    """How many requests for ``route`` replica ``p`` has answered (raftctl_api_requests_total on its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request
    req = urllib.request.Request(p.url + "/metrics", headers={"Authorization": f"Bearer {cluster.token()}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "raftctl_api_requests_total" and s.labels.get("route") == route)


def test_a_follower_proposes_a_job_write_itself_and_answers_after_applying_it(cluster):
    """A write whose handler reads no state (put, scale, stop, rollback, tokens) is not proxied to the leader over
    HTTP: the follower proposes the command and pysyncobj carries it to the leader inside Raft. The follower
    answers once it applied the entry, so its own plain read (no ?consistent) shows the write at once."""
    leader, (f1, _) = followers(cluster)
    routes = ("PUT /v1/jobs/{name}", "POST /v1/jobs/{name}/scale")
    before = {r: requests_answered(cluster, leader, r) for r in routes}
    c = client_for(cluster, f1)
    put = c.request("PUT", "/v1/jobs/local", {**SPEC, "name": "local"})
    scaled = c.request("POST", "/v1/jobs/local/scale", {"replicas": 4})
    assert scaled["index"] > put["index"] > 0
    assert {r: requests_answered(cluster, leader, r) for r in routes} == before  # the leader saw no HTTP request
    job = c.request("GET", "/v1/jobs/local")  # this follower's own state, no barrier
    assert job["replicas"] == 4 and job["modify_index"] >= scaled["index"]
    on_leader = client_for(cluster, leader).request("GET", "/v1/jobs/local", query={"consistent": "1"})
    assert on_leader["replicas"] == 4 and on_leader["version"] == 1


def test_blocking_query_wakes_on_write(cluster):
    import threading
    import time

    c = client_for(cluster)
    c.request("PUT", "/v1/jobs/blocky", {**SPEC, "name": "blocky"})
    idx = c.request("GET", "/v1/jobs/blocky", query={"consistent": "1"})["modify_index"]
    out: dict = {}

    def watch() -> None:
        t0 = time.monotonic()
        out["job"] = c.request("GET", "/v1/jobs/blocky", query={"index": idx, "wait": "20s"}, timeout=30)
        out["took"] = time.monotonic() - t0
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.5)
    c.request("POST", "/v1/jobs/blocky/scale", {"replicas": 5})
    t.join(30)
    assert out["job"]["replicas"] == 5 and out["job"]["modify_index"] > idx
    assert out["took"] < 5


def test_bad_spec_is_400_naming_the_field_and_changes_nothing(cluster):
    c = client_for(cluster)
    before = c.request("GET", "/v1/jobs", query={"consistent": "1"})["index"]
    status, body = raw(cluster.urls[0] + "/v1/jobs/bad", "PUT",
                       json.dumps({**SPEC, "name": "bad", "resources": {"memory": "64MB"}}).encode(), cluster.token())
    assert status == 400
    assert body["error"]["field"] == "resources.memory"
    assert "64Mi" in body["error"]["message"]
    status, body = raw(cluster.urls[0] + "/v1/jobs/bad", "PUT", b"{not json", cluster.token())
    assert status == 400 and body["error"]["field"] == "body"
    after = c.request("GET", "/v1/jobs", query={"consistent": "1"})["index"]
    assert after == before  # the jobs table did not move
    with pytest.raises(ApiError) as exc:
        c.request("GET", "/v1/jobs/bad")
    assert exc.value.http_status == 404


def test_cbor_bodies_are_accepted(cluster):
    import cbor2

    status, body = raw(cluster.urls[1] + "/v1/jobs/cbor-job", "PUT", cbor2.dumps({**SPEC, "name": "cbor-job"}),
                       cluster.token(), ctype="application/cbor")
    assert status == 200 and body["version"] == 1


def test_auth_401_and_403(cluster):
    url = cluster.urls[0]
    status, body = raw(url + "/v1/jobs")
    assert status == 401 and "token" in body["error"]["message"]
    status, body = raw(url + "/v1/jobs", token="rct_not-a-real-token")
    assert status == 401 and "unknown or revoked" in body["error"]["message"]
    reader = client_for(cluster).request("POST", "/v1/tokens", {"role": "reader", "name": "ro"})["token"]
    status, _ = raw(url + "/v1/jobs", token=reader)
    assert status == 200
    status, body = raw(url + "/v1/jobs/x", "PUT", json.dumps({**SPEC, "name": "x"}).encode(), reader)
    assert status == 403
    assert "reader" in body["error"]["message"] and "deployer" in body["error"]["message"]
    status, _ = raw(url + "/healthz")
    assert status == 200
    client_for(cluster).request("DELETE", "/v1/tokens/ro")
    wait_until(lambda: raw(url + "/v1/jobs", token=reader)[0] == 401, what="revoked token refused")


def test_a_token_is_accepted_by_a_follower_that_has_not_applied_it_yet(cluster):
    """Read-your-writes for tokens: a follower that does not know a token asks the leader, not 401."""
    leader, (f1, _) = followers(cluster)
    lead = client_for(cluster, leader)
    lead.request("PUT", "/v1/jobs/tok", {**SPEC, "name": "tok"})
    f1.popen.send_signal(signal.SIGSTOP)  # f1 misses what follows; the leader and f2 still commit
    try:
        for i in range(200):  # a backlog f1 must apply before it reaches the token
            lead.request("POST", "/v1/jobs/tok/scale", {"replicas": i % 3})
        fresh = lead.request("POST", "/v1/tokens", {"role": "reader", "name": "fresh"})["token"]
    finally:
        f1.popen.send_signal(signal.SIGCONT)
    status, body = raw(f1.url + "/v1/jobs", token=fresh)
    assert status == 200, body
    status, body = raw(f1.url + "/v1/jobs", token="rct_never-issued")
    assert status == 401 and "unknown or revoked" in body["error"]["message"]  # the leader refuses it too
    client_for(cluster).request("DELETE", "/v1/tokens/fresh")
    client_for(cluster).request("DELETE", "/v1/jobs/tok")


def test_unknown_route_is_json_404(cluster):
    status, body = raw(cluster.urls[0] + "/v1/nothing-here", token=cluster.token())
    assert status == 404 and body["error"]["code"] == "not_found"


def test_kill_leader_new_leader_commits_and_restarted_replica_catches_up(cluster):
    c = client_for(cluster)
    for i in range(60):  # enough entries to pass the compaction threshold (40) more than once
        c.request("POST", "/v1/jobs/web/scale", {"replicas": i % 4})
    old = wait_until(cluster.leader, what="a leader")
    cluster.kill(old, signal.SIGKILL)
    new = wait_until(lambda: (lambda l: l if l is not None and l is not old else None)(cluster.leader()),
                     timeout=20, what="a new leader")
    assert new is not old
    res = client_for(cluster).request("POST", "/v1/jobs/web/scale", {"replicas": 7})
    assert res["replicas"] == 7
    cluster.start_proc(old)

    def same_state() -> bool:
        sts = [cluster.get(p, "/v1/status?hash=1") for p in cluster.servers]
        return len({(s["state_hash_index"], s["state_hash"]) for s in sts}) == 1 and sts[0]["index"] >= res["index"]
    wait_until(same_state, timeout=30, interval=0.3, what="all replicas at the same state hash")
    job = client_for(cluster, old).request("GET", "/v1/jobs/web")
    assert job["replicas"] == 7


def test_log_was_compacted_into_a_cbor_snapshot(cluster):
    import os

    import cbor2

    c = client_for(cluster)
    for i in range(50):
        c.request("POST", "/v1/jobs/web/scale", {"replicas": i % 3})
    snap = os.path.join(cluster.servers[0].data_dir, "raft.snapshot")
    wait_until(lambda: os.path.exists(snap), timeout=20, what="a snapshot file")
    with open(snap, "rb") as f:
        obj = cbor2.load(f)
    assert obj["format"] == 1 and len(obj["cluster"]) == 3
    st = cbor2.loads(obj["state"])
    assert st["schema"] == SNAPSHOT_SCHEMA and "web" in st["jobs"]


def test_server_refuses_to_start_without_a_secret(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", "server", "--id", "x", "--data-dir", str(tmp_path),
                        "--raft", "127.0.0.1:1", "--api", "127.0.0.1:2"], capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in __import__("os").environ.items() if k != "RAFTCTL_SECRET"})
    assert p.returncode != 0 and "no cluster secret" in p.stderr and "--insecure-dev" in p.stderr


def test_every_api_socket_listens_with_a_deep_backlog(cluster):
    """aiohttp's default backlog of 128 filled up at 10,000 simulated machines (docs/scaling.md): each replica's API
    socket is listening with min(API_BACKLOG, net.core.somaxconn), as `ss` reports it (Send-Q of a listener)."""
    import shutil
    import subprocess

    from raftctl.node.replica import API_BACKLOG
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) missing")
    want = min(API_BACKLOG, int(open("/proc/sys/net/core/somaxconn").read()))
    for p in cluster.servers:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{p.api.rsplit(':', 1)[1]}"], capture_output=True, text=True,
                             timeout=10).stdout.split()
        assert out and int(out[2]) == want, (p.api, out)
