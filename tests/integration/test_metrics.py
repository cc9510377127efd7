"""GET /metrics parses with prometheus-client's parser and its figures move with the cluster."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import SPEC, client_for

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
    after = scrape(cluster, leader)
    assert value(after, "raftctl_jobs") == value(before, "raftctl_jobs") + 1
    assert value(after, "raftctl_raft_commit_index") > value(before, "raftctl_raft_commit_index")
    assert value(after, "raftctl_api_requests_total", route="PUT /v1/jobs/{name}", code="200") >= 1
    assert value(after, "raftctl_api_request_seconds_count", route="PUT /v1/jobs/{name}") >= 1
    assert "raftctl_machines_by_state" in after and "raftctl_scheduler_passes" in after
