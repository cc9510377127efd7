"""3 -> 5 -> 3 replicas at runtime without losing a write."""
from __future__ import annotations

import threading

import pytest

from raftctl.devcluster import LocalCluster, add_server

from .conftest import SPEC, client_for, wait_until

pytestmark = pytest.mark.integration


def test_grow_to_five_and_shrink_to_three_under_writes(tmp_path):
    cluster = LocalCluster(str(tmp_path / "c"), replicas=3)
    cluster.start(timeout=60)
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        c = client_for(cluster)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                c.request("POST", "/v1/jobs/web/scale", {"replicas": i % 1000})
                acked.append(i % 1000)
            except Exception:
                pass
    try:
        admin = client_for(cluster)
        admin.request("PUT", "/v1/jobs/web", SPEC)
        t = threading.Thread(target=writer)
        t.start()
        new = [add_server(cluster, "n4"), add_server(cluster, "n5")]
        for p in new:
            cluster.start_proc(p)
            admin.request("POST", "/v1/members", {"raft": p.raft, "api": p.url, "id": p.id})
            cluster.wait_ready(60, procs=[p])
        # each joins as a learner; the leader makes it a voter once it has caught up
        st = wait_until(lambda: (lambda s: s if len(s["members"]) == 5 and all(m["voter"] for m in s["members"])
                                 else None)(client_for(cluster, new[1]).request("GET", "/v1/status")),
                        what="5 voting members")
        assert st["leader"]
        for p in new:
            leader = wait_until(cluster.leader, what="leader")
            client = client_for(cluster, leader)
            client.request("DELETE", f"/v1/members/{p.raft}")
            cluster.kill(p)
            cluster.procs.remove(p)
        stop.set()
        t.join(30)
        assert len(acked) > 10
        last = acked[-1]
        for p in cluster.servers:
            job = client_for(cluster, p).request("GET", "/v1/jobs/web", query={"consistent": "1"})
            assert job["replicas"] == last
        st = client_for(cluster).request("GET", "/v1/status")
        assert sorted(m["raft"] for m in st["members"]) == sorted(p.raft for p in cluster.servers)
    finally:
        stop.set()
        cluster.stop()
