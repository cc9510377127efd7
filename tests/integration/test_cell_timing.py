"""A real replica's election timeout follows its machines table (issue 15, raft.cell_election_timeout): 1,200
machines registered through the API move it from 0.3-0.6 s to 0.36-0.72 s, shown in GET /v1/status."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from raftctl.devcluster import LocalCluster

from .conftest import client_for, wait_until

pytestmark = pytest.mark.integration


def test_the_election_timeout_grows_with_the_machines_table(tmp_path_factory):
    c = LocalCluster(str(tmp_path_factory.mktemp("celltiming")), replicas=1, agents=0, runtime="sim")
    c.start(timeout=60)
    try:
        lead = c.servers[0]
        wait_until(lambda: c.get(lead, "/v1/status").get("election_timeout_s") == [0.3, 0.6], timeout=15,
                   what="the base election timeout with no machine")

        def register(i: int) -> None:
            client_for(c).request("POST", "/v1/agent/register", {
                "machine": f"m{i:04d}", "address": f"127.3.{i // 250}.{i % 250 + 1}",
                "fault_domain": {"region": "r", "zone": f"z{i % 3}"}, "labels": {},
                "resources": {"cpu": 1000, "memory": 1 << 30, "pids": 100}, "ports": [30000, 30100],
                "runtime": "sim"})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, range(1200)))
        wait_until(lambda: c.get(lead, "/v1/status").get("election_timeout_s") == pytest.approx([0.36, 0.72]),
                   timeout=15, what="the election timeout of 1,200 machines")
    finally:
        c.stop()
