"""GET /v1/efficiency, raftctl top and the efficiency gauges, against 3 replicas and 3 sim agents as real
processes. Sim containers report 100m CPU and 32Mi memory each, so the figures are known."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftctl.devcluster import LocalCluster

from .conftest import agents_cluster, client_for, wait_until

pytestmark = pytest.mark.integration
Mi = 1 << 20


@pytest.fixture(scope="module")
def eff_cluster(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "eff", agents=3, runtime="sim", zones=2) as c:
        yield c


def raftctl(c: LocalCluster, *args: str) -> str:
    env = {**os.environ, "RAFTCTL_SERVER": " ".join(c.urls), "RAFTCTL_TOKEN": c.token() or "", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", *args], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_efficiency_counts_capacity_allocation_and_reported_usage(eff_cluster):
    c = eff_cluster
    job = {"name": "eff", "image": "sim:1", "command": ["serve"], "replicas": 4,
           "resources": {"cpu": "250m", "memory": "128Mi"}}
    client_for(c).request("PUT", "/v1/jobs/eff", job)
    follower = next(p for p in c.servers if p is not wait_until(c.leader, what="leader"))

    def reported():
        v = client_for(c, follower).request("GET", "/v1/efficiency")
        j = next((j for j in v["jobs"] if j["job"] == "eff"), None)
        return v if j and j["reported"] == {"cpu": 4, "memory": 4} else None
    view = wait_until(reported, timeout=60, what="usage reports for all 4 replicas")
    # usage lives on the leader: a follower forwards the read there
    assert view["usage_from"]["leader"] is True
    cl = view["cluster"]
    assert cl["machines"] == 3 and cl["placements"] == 4
    assert cl["capacity"] == {"cpu": 3 * 2000, "memory": 3 * 2048 * Mi}
    assert cl["allocated"] == {"cpu": 1000, "memory": 512 * Mi}
    j = next(j for j in view["jobs"] if j["job"] == "eff")
    assert 60 <= j["used"]["cpu"] / 4 <= 140              # the sim's 100m each, measured over real seconds
    assert j["used"]["memory"] == 4 * 32 * Mi
    assert j["utilisation"]["memory"] == 0.25
    assert cl["fit"]["lower_bound"] == 1 and cl["fit"]["first_fit_decreasing"] == 1
    zones = {d["domain"]: d for d in view["domains"]["zone"]}
    assert set(zones) == {"local/z1", "local/z2"}
    assert sum(d["allocated"]["cpu"] for d in zones.values()) == 1000
    assert sum(m["placements"] for m in view["machines"]) == 4

    # the same figures as gauges on the leader's /metrics
    leader = c.leader()
    req = urllib.request.Request(leader.url + "/metrics", headers={"Authorization": f"Bearer {c.token()}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("raftctl_efficiency_allocated", (("resource", "cpu"),))] == 1000
    assert samples[("raftctl_efficiency_capacity", (("resource", "memory"),))] == 3 * 2048 * Mi
    assert samples[("raftctl_efficiency_fit_first_fit_decreasing", ())] == 1
    assert samples[("raftctl_efficiency_used", (("resource", "memory"),))] == 4 * 32 * Mi


def test_raftctl_top_shows_domains_machines_and_jobs(eff_cluster):
    c = eff_cluster
    data = json.loads(raftctl(c, "-o", "json", "top"))
    assert {"cluster", "machines", "domains", "jobs"} <= set(data)
    out = raftctl(c, "top", "--by", "rack")
    assert "by rack" in out and "by machine" in out and "by job" in out
    assert "local/z1/r1" in out and "m1" in out and "eff" in out
    assert "could run on 1 machine(s) at best" in out
    out = raftctl(c, "top", "--no-machines")
    assert "by machine" not in out and "by zone" in out
