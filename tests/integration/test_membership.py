"""3 -> 5 -> 3 replicas at runtime without losing a write."""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any

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


def test_a_removed_replica_comes_back_empty_at_its_address_as_a_learner_then_a_voter(tmp_path):
    """docs/install.md section 9: a replica removed, its data dir wiped (a replacement machine), started again at
    the same address with --join and added back. It joins as a learner (voter false, counted in no majority), the
    leader promotes it once it has caught up, and the cluster then survives losing its leader with every write."""
    cluster = LocalCluster(str(tmp_path / "c"), replicas=3)
    cluster.start(timeout=60)
    try:
        admin = client_for(cluster)
        admin.request("PUT", "/v1/jobs/web", SPEC)
        leader = wait_until(cluster.leader, what="leader")
        gone = next(p for p in cluster.servers[1:] if p is not leader)   # servers[0] holds the test's token
        client_for(cluster, leader).request("DELETE", f"/v1/members/{gone.raft}")
        cluster.kill(gone)
        shutil.rmtree(gone.data_dir)
        os.makedirs(gone.data_dir)
        admin.request("POST", "/v1/jobs/web/scale", {"replicas": 7})           # committed by two replicas alone
        gone.extra_args = ["--join"]
        cluster.start_proc(gone)
        leader = wait_until(cluster.leader, what="leader")
        added = client_for(cluster, leader).request("POST", "/v1/members",
                                                    {"raft": gone.raft, "api": gone.url, "id": gone.id})
        assert added["voter"] is False
        cluster.wait_ready(60, procs=[gone])

        def promoted() -> Any:
            st = client_for(cluster, leader).request("GET", "/v1/status")
            me = [m for m in st["members"] if m["raft"] == gone.raft]
            return st if me and me[0]["voter"] and me[0].get("lag", 99) <= 1 else None
        wait_until(promoted, 30, what=f"{gone.raft} promoted to voter")
        job = client_for(cluster, gone).request("GET", "/v1/jobs/web", query={"consistent": "1"})
        assert job["replicas"] == 7
        cluster.kill(leader)                                                   # the re-added replica now counts
        survivors = [p for p in cluster.servers if p is not leader]
        new = wait_until(lambda: next((p for p in survivors if p is cluster.leader()), None), 30, what="new leader")
        client_for(cluster, new).request("POST", "/v1/jobs/web/scale", {"replicas": 3})
        for p in survivors:
            assert client_for(cluster, p).request("GET", "/v1/jobs/web", query={"consistent": "1"})["replicas"] == 3
    finally:
        cluster.stop()
