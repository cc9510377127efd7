"""Discovery over HTTP: published only while healthy, gone before a planned stop, watches that wake."""
from __future__ import annotations

import threading
import time

import pytest

from raftctl.devcluster import LocalCluster

from .conftest import client_for, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    cl = LocalCluster(str(tmp_path_factory.mktemp("disc")), replicas=3)
    for p in cl.servers:
        p.extra_args = ["--heartbeat-ttl", "2s"]
    cl.start(timeout=60)
    stop = threading.Event()
    cl.alive = {"ma", "mbb"}  # machines this test keeps heartbeating (it plays their agents)

    def heartbeats() -> None:
        hc = client_for(cl)
        hc.retry_for = 2
        while not stop.is_set():
            for m in list(cl.alive):
                try:
                    hc.request("POST", "/v1/agent/heartbeat", {"machine": m})
                except Exception:
                    pass
            time.sleep(0.3)
    t = threading.Thread(target=heartbeats, daemon=True)
    t.start()
    yield cl
    stop.set()
    cl.stop()


def register(c, machine: str, zone: str) -> None:
    client_for(c).request("POST", "/v1/agent/register", {
        "machine": machine, "address": f"127.0.1.{len(machine)}", "fault_domain": {"region": "r", "zone": zone},
        "labels": {}, "resources": {"cpu": 4000, "memory": 4 << 30, "pids": 1000}, "ports": [30000, 30100],
        "runtime": "sim"})


def report(c, p: dict, health: str, state: str = "running") -> None:
    client_for(c).request("POST", "/v1/agent/report", {"machine": p["machine"], "updates": [
        {"placement": p["id"], "state": state, "health": health}]})


def lookup(c, service: str, **query) -> dict:
    return client_for(c).request("GET", f"/v1/discovery/{service}", query=query or None)


def placements(c, job: str) -> list[dict]:
    return [p for p in client_for(c).request("GET", f"/v1/jobs/{job}/placements")["placements"]
            if p["desired"] == "run"]


def test_published_only_while_healthy_and_before_a_planned_stop(c):
    register(c, "ma", "z1")
    register(c, "mbb", "z2")
    client_for(c).request("PUT", "/v1/jobs/api", {"name": "api", "image": "api:1", "command": ["serve"], "replicas": 2,
                                                  "ports": [{"name": "http"}],
                                                  "spread": [{"level": "zone", "mode": "hard"}]})
    pl = wait_until(lambda: (lambda x: x if len(x) == 2 else None)(placements(c, "api")), what="2 placements")
    assert lookup(c, "api")["endpoints"] == []  # placed, not yet healthy: not published
    for p in pl:
        report(c, p, "healthy")
    eps = wait_until(lambda: (lambda d: d["endpoints"] if len(d["endpoints"]) == 2 else None)(lookup(c, "api")),
                     what="2 endpoints")
    assert {e["placement"] for e in eps} == {p["id"] for p in pl}
    assert all(e["port"] and e["address"].startswith("127.0.1.") for e in eps)
    near = lookup(c, "api", near="zone=z2")["endpoints"]
    assert near[0]["fault_domain"]["zone"] == "z2"
    report(c, pl[0], "unhealthy")
    assert [e["placement"] for e in lookup(c, "api", consistent="1")["endpoints"]] == [pl[1]["id"]]
    report(c, pl[0], "healthy")
    assert len(lookup(c, "api", consistent="1")["endpoints"]) == 2
    # scale down: the stopped replica is unpublished in the same command that asks it to stop
    client_for(c).request("POST", "/v1/jobs/api/scale", {"replicas": 1})

    def one_left():
        eps = lookup(c, "api", consistent="1")["endpoints"]
        stopping = [p for p in client_for(c).request("GET", "/v1/jobs/api/placements")["placements"]
                    if p["desired"] == "stop"]
        return stopping and len(eps) == 1 and eps[0]["placement"] != stopping[0]["id"] and stopping[0]["state"] == "running"
    wait_until(one_left, what="the stopping replica unpublished while still running")


def test_machine_loss_removes_its_endpoints(c):
    register(c, "mc", "z3")
    client_for(c).request("PUT", "/v1/jobs/solo", {"name": "solo", "image": "s:1", "command": ["serve"], "replicas": 1,
                                                   "ports": [{"name": "http"}],
                                                   "constraints": [{"attr": "id", "op": "==", "value": "mc"}]})
    (p,) = wait_until(lambda: (lambda x: x if len(x) == 1 else None)(placements(c, "solo")), what="a placement")
    report(c, p, "healthy")
    assert len(lookup(c, "solo", consistent="1")["endpoints"]) == 1
    # nobody heartbeats mc: after the TTL the failover monitor declares it down
    wait_until(lambda: lookup(c, "solo")["endpoints"] == [], timeout=15, what="endpoint removed with its machine")


def test_watch_wakes_on_its_service_only(c):
    pl = placements(c, "api")
    start = lookup(c, "api")
    result: dict = {}

    def watch() -> None:
        t0 = time.monotonic()
        result["ans"] = client_for(c).request("GET", "/v1/discovery/api",
                                              query={"index": start["index"], "wait": "5s"}, timeout=10)
        result["t"] = time.monotonic()
        result["took"] = result["t"] - t0
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    client_for(c).request("PUT", "/v1/jobs/other", {"name": "other", "image": "o:1", "command": ["x"]})
    time.sleep(0.5)
    assert "ans" not in result  # another service's change did not wake it
    report(c, pl[0], "unhealthy")
    changed = time.monotonic()
    t.join(10)
    assert result["ans"]["index"] > start["index"]
    assert result["t"] - changed < 0.1, result["t"] - changed
