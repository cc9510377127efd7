"""GET /metrics parses with prometheus-client's parser and its figures move with the cluster."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import SPEC, agents_cluster, client_for, wait_until
from .promlint import lint

pytestmark = pytest.mark.integration


def scrape(cluster, proc) -> dict[str, list]:
    req = urllib.request.Request(proc.url + "/metrics", headers={"Authorization": f"Bearer {cluster.token()}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, **labels) -> float:
    samples = [s for fam in fams.values() for s in fam if s.name == name]
    assert samples, f"no sample {name}"
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_move(cluster):
    leader = cluster.leader()
    before = scrape(cluster, leader)
    assert value(before, "raftctl_raft_is_leader") == 1
    client_for(cluster, leader).request("PUT", "/v1/jobs/metered", {**SPEC, "name": "metered"})
    # Raft figures come from the status the tick thread publishes after each tick (raft_status no longer waits
    # on the event loop), so they may trail an acknowledged write by one tick; the leader's controllers (and their
    # families) start once its ClaimEpoch applies, which an acknowledged job write does not wait for (a fresh-clone
    # CI run scraped in between once)
    after = wait_until(lambda: (lambda f: f if value(f, "raftctl_raft_commit_index") > value(
        before, "raftctl_raft_commit_index") and "raftctl_scheduler_passes" in f else None)(scrape(cluster, leader)),
        timeout=5, what="the commit index in /metrics past the write, and the leader's controllers started")
    assert value(after, "raftctl_jobs") == value(before, "raftctl_jobs") + 1
    assert value(after, "raftctl_api_requests_total", route="PUT /v1/jobs/{name}", code="200") >= 1
    assert value(after, "raftctl_api_request_seconds_count", route="PUT /v1/jobs/{name}") >= 1
    assert "raftctl_machines_by_state" in after and "raftctl_scheduler_passes" in after
    # the leader's group commit: its batches (one fdatasync each) and the entries in them
    batches = value(after, "raftctl_raft_leader_batches_total")
    assert batches >= 1 and value(after, "raftctl_raft_leader_batch_entries_total") >= batches
    assert value(after, "raftctl_raft_leader_held_ticks_total") >= 0
    # a replica process says what its garbage collector and its connections cost (gcstats.py, admission.py)
    assert value(after, "raftctl_gc_collections_total", generation="2") >= 1   # the one before the freeze, at least
    assert value(after, "raftctl_gc_seconds_total") > 0
    assert value(after, "raftctl_gil_switch_interval_seconds") == pytest.approx(0.001)   # gil.py, not CPython's 5 ms
    assert value(after, "raftctl_event_loop_info", loop="uvloop") == 1      # aio.py's default for a replica
    assert 1 <= value(after, "raftctl_api_connections") <= value(after, "raftctl_api_connections_limit")
    # and how late its event loop wakes (looplag.py): a wake-up every 0.1 s since start, each in some bucket
    wakes = value(after, "raftctl_event_loop_lag_seconds_count")
    assert wakes >= 1 and value(after, "raftctl_event_loop_lag_seconds_bucket", le="+Inf") == wakes
    assert value(after, "raftctl_event_loop_lag_max_seconds") >= 0


def test_every_replica_family_passes_prometheus_naming_rules(cluster):
    leader = cluster.leader()
    client_for(cluster, leader).request("PUT", "/v1/jobs/linted", {**SPEC, "name": "linted"})  # API samples
    for proc in [leader, *[p for p in cluster.servers if p is not leader][:1]]:  # a leader and a follower
        req = urllib.request.Request(proc.url + "/metrics", headers={"Authorization": f"Bearer {cluster.token()}"})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        assert "raftctl_api_requests_total{" in text or proc is not leader
        assert lint(text) == [], proc.url


@pytest.fixture(scope="module")
def sim3(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "metrics-sim", agents=3, runtime="sim") as c:
        yield c


def test_figures_move_with_placements_deploys_and_machine_loss(sim3):
    c = sim3
    job = {"name": "m", "image": "sim:1", "command": ["serve"], "replicas": 3,
           "resources": {"cpu": "100m", "memory": "64Mi"}, "ports": [{"name": "http"}], "env": {"V": "1"}}

    def fams() -> dict:
        return scrape(c, wait_until(c.leader, what="a leader"))
    before = fams()
    assert value(before, "raftctl_machines_by_state", state="active") == 3
    # every machine's heartbeat age (GET /v1/status lists only the oldest few); the failover monitor learns a
    # machine at its first heartbeat or its next tick (0.2 s), so a scrape right after the third registration
    # may list two (a fresh-clone CI run did)
    def all_aged() -> dict | None:
        f = fams()
        return f if len({s.labels["machine"] for s in f["raftctl_heartbeat_age_seconds"]}) == 3 else None
    before = wait_until(all_aged, timeout=10, what="every machine's heartbeat age")
    client_for(c).request("PUT", "/v1/jobs/m", job)
    placed = wait_until(lambda: (lambda f: f if value(f, "raftctl_placements_by_state", state="running",
                                                      health="healthy") >= 3 else None)(fams()),
                        timeout=30, what="3 healthy placements in /metrics")
    assert value(placed, "raftctl_discovery_endpoints") >= 3
    def deployments(f: dict, status: str | None = None) -> float:  # the family has no sample while there is none
        return sum(x.value for x in f.get("raftctl_deployments", []) if status in (None, x.labels.get("status")))
    assert deployments(placed) == 0  # a new job is placed, not deployed
    client_for(c).request("PUT", "/v1/jobs/m", {**job, "env": {"V": "2"}})  # a rolling deploy
    wait_until(lambda: deployments(fams(), "running") == 1, timeout=30, what="the deploy running in /metrics")
    wait_until(lambda: deployments(fams(), "successful") == 1, timeout=60, what="the deploy successful in /metrics")
    victim = c.agents[0]
    c.kill(victim)
    lost = wait_until(lambda: (lambda f: f if value(f, "raftctl_machines_by_state", state="down") == 1 else None)(
        fams()), timeout=40, what="the killed machine down in /metrics")
    assert value(lost, "raftctl_machines_by_state", state="active") == 2
