"""An agent's report that did not commit is never answered as delivered, and never applies later
(jepsen-style finding 9).

Seed 3's replay: during a 35 s leader isolation the agents' reports went to the isolated replica, which
answered 200 (each update "ok": false, which the agent does not read) after 5 s; pysyncobj held the updates
while the replica knew no leader and applied them 25-35 s late at the heal, so placements that ran all along
read "pending" for the whole isolation (the web job 0 of 3 running for 38 s)."""
from __future__ import annotations

import json
import threading
import time

import pytest

from raftctl.devcluster import LocalCluster

from .conftest import client_for, raw, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    cl = LocalCluster(str(tmp_path_factory.mktemp("reports")), replicas=3)
    cl.start(timeout=60)
    yield cl
    cl.stop()


def test_a_report_to_a_replica_that_knows_no_leader_is_refused_and_never_applied(c):
    api = client_for(c)
    api.request("POST", "/v1/agent/register", {
        "machine": "m1", "address": "127.0.1.1", "fault_domain": {"region": "r", "zone": "z1"}, "labels": {},
        "resources": {"cpu": 4000, "memory": 4 << 30, "pids": 1000}, "ports": [30000, 30100], "runtime": "sim"})
    stop = threading.Event()

    def heartbeats() -> None:  # plays m1's agent while the cluster has a leader
        hc = client_for(c)
        hc.retry_for = 1
        while not stop.is_set():
            try:
                hc.request("POST", "/v1/agent/heartbeat", {"machine": "m1"})
            except Exception:
                pass
            time.sleep(0.3)
    threading.Thread(target=heartbeats, daemon=True).start()
    try:
        api.request("PUT", "/v1/jobs/rep", {"name": "rep", "image": "rep:1", "command": ["sleep", "1000"],
                                            "replicas": 1})
        def placed() -> list:
            pl = api.request("GET", "/v1/jobs/rep/placements")["placements"]
            if not pl:
                raise AssertionError(api.request("GET", "/v1/jobs/rep").get("pending_reason"))
            return pl
        pl = wait_until(placed, what="a placement")
        pid = pl[0]["id"]
        # the leader loses both followers: it steps down (leaderFallbackTimeout) and then knows no leader, as
        # the isolated n2 of seed 3's replay did
        lone = wait_until(c.leader, what="a leader")
        others = [p for p in c.servers if p is not lone]
        for p in others:
            c.kill(p)
        try:
            wait_until(lambda: raw(f"{lone.url}/v1/status", token=c.token())[1].get("leader") is None,
                       timeout=15, what=f"{lone.id} to know no leader")
            t0 = time.monotonic()
            status, body = raw(f"{lone.url}/v1/agent/report", "POST", json.dumps(
                {"machine": "m1", "updates": [{"placement": pid, "state": "starting"}]}).encode(), c.token(),
                timeout=20)
            took = time.monotonic() - t0
            print(f"\nreport to a replica that knows no leader: HTTP {status} after {took:.2f} s: {body}")
        finally:
            for p in others:
                c.start_proc(p)
            c.wait_ready(60, others)
        # before: 200 after 5 s, the update "ok": false (the agent took the batch as delivered)
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert "not committed" in body["error"]["message"] and took < 8
        wait_until(c.leader, what="a leader after the others restart")
        time.sleep(3)  # what the lone replica held, it would hand to the leader now
        states = {p["id"]: p["state"] for p in
                  api.request("GET", "/v1/jobs/rep/placements", query={"consistent": "1"})["placements"]}
        # before: "starting", applied after the replica heard a leader again
        assert states[pid] == "pending", states
    finally:
        stop.set()
