"""Two clusters on one machine (issue 17 item 5): the same job name, the same placement ids, no shared names.

Each cluster (three replicas, one runc agent, like `raftctl up`) runs `web` at once. Placement ids are unique only
within a cluster, so both clusters' containers are called web-00001 and web-00002; each container must still sit
in a cgroup of its own cluster, and deleting the job in one cluster must leave the other's containers running,
unrestarted and healthy. Its own module: the agents use fixed loopback addresses (127.0.0.2).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from raftctl.agent.runtime import cgroups
from raftctl.agent.runtime import agent_driver as make_driver
from raftctl.clusterid import CLUSTER_ID_RE, derive_cluster_id
from raftctl.devcluster import LocalCluster
from tests.agent.conftest import root_runc  # noqa: F401  (the loud skip without root and runc)

from .conftest import client_for, raw, wait_until

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# network: host: runc agents on this machine's own network namespace; bridge mode would make bridges, routes
# and nftables rules there (tests/agent/test_bridge.py tests it in namespaces of its own)
WEB = {"name": "web", "image": "web:1", "base": "host", "network": "host",
       "command": ["python3", "-m", "http.server", "${PORT_HTTP}"], "replicas": 2,
       "resources": {"cpu": "100m", "memory": "64Mi", "pids": 64}, "ports": [{"name": "http"}],
       # 20 failed checks (6 s) before a restart: python under a 100m CPU quota needs ~0.6 s of wall time to
       # start on an idle machine and several seconds on a loaded one (3 failures restarted it forever at load 5)
       "health": {"type": "http", "port": "http", "path": "/", "interval": "300ms", "timeout": "500ms",
                  "failures": 20},
       "update": {"max_unavailable": 1, "min_healthy": "300ms", "drain_delay": "200ms", "deadline": "60s"}}


def cli(c: LocalCluster, *args: str) -> str:
    env = {**os.environ, "RAFTCTL_SERVER": " ".join(c.urls), "RAFTCTL_TOKEN": c.token() or ""}
    p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", *args], capture_output=True, text=True,
                       env=env, timeout=120, cwd=ROOT)
    assert p.returncode == 0, f"{args}: {p.stderr}"
    return p.stdout


def healthy(c: LocalCluster) -> dict[str, dict]:
    pl = client_for(c).request("GET", "/v1/jobs/web/placements")["placements"]
    return {p["id"]: p for p in pl if p["desired"] == "run" and p["state"] == "running" and p["health"] == "healthy"}


def runc_ids(c: LocalCluster) -> list[str]:
    """What runc itself holds for the cluster's agent (its state dir is under the agent's data dir)."""
    r = subprocess.run(["runc", "--root", os.path.join(c.agents[0].data_dir, "runc", "runc"), "list", "-q"],
                       capture_output=True, text=True, check=True)
    return sorted(r.stdout.split())


def containers(c: LocalCluster) -> dict[str, tuple[int, str]]:
    """The agent's running containers: id -> (init pid, the cgroupsPath runc was given)."""
    d = make_driver("runc", c.agents[0].data_dir)
    try:
        out = {}
        for cid in d.list_existing():
            obs = d.status(cid)
            if obs.state == "running":
                with open(os.path.join(d.bundle(cid), "config.json")) as f:
                    out[cid] = (obs.pid, json.load(f)["linux"]["cgroupsPath"])
        return out
    finally:
        d.close()


def procs(cgroup_path: str) -> set[int]:
    with open(os.path.join(cgroups.Cgroup.of(cgroup_path).memory_dir(), "cgroup.procs")) as f:
        return {int(x) for x in f.read().split()}


def serving(c: LocalCluster) -> list[str]:
    """The placements whose endpoint (from the cluster's discovery) answers with the page."""
    out = []
    for e in client_for(c).request("GET", "/v1/discovery/web")["endpoints"]:
        with urllib.request.urlopen(f"http://{e['address']}:{e['port']}/index.html", timeout=5) as r:
            if "Hello from a raftctl replica" in r.read().decode():
                out.append(e["placement"])
    return sorted(out)


@pytest.mark.root
def test_two_clusters_run_the_same_job_on_one_machine_without_touching_each_other(root_runc, tmp_path):
    # host networking: the two clusters' schedulers cannot know each other's host ports, so each gets its own range
    a = LocalCluster(str(tmp_path / "a"), replicas=3, agents=1, runtime="runc",
                     agent_args=["--heartbeat", "300ms", "--ports", "21000-21999"])
    b = LocalCluster(str(tmp_path / "b"), replicas=3, agents=1, runtime="runc",
                     agent_args=["--heartbeat", "300ms", "--ports", "26000-26999"])
    cluster: dict[str, str] = {}
    try:
        for c in (a, b):
            c.start(timeout=60)
        for c in (a, b):
            c.wait_agents(60)
            cli(c, "image", "build", "examples/web", "--name", "web:1", "--base", "host")
            path = tmp_path / f"web-{os.path.basename(c.dir)}.json"
            path.write_text(json.dumps(WEB))
            cli(c, "-o", "json", "job", "run", "--detach", str(path))
        for c in (a, b):
            wait_until(lambda c=c: len(healthy(c)) == 2, timeout=60, what=f"2 healthy replicas in {c.dir}")
        ids = sorted(healthy(a))
        assert ids == sorted(healthy(b))               # the same placement ids in both clusters
        for c in (a, b):
            wait_until(lambda c=c: serving(c) == ids, timeout=20, what=f"both replicas of {c.dir} serving")

        # each container sits in a cgroup of its own, holding its own processes and none of the other cluster's
        seen = {c.dir: containers(c) for c in (a, b)}
        assert sorted(seen[a.dir]) == sorted(seen[b.dir]) == ids
        for c, other in ((a, b), (b, a)):
            for cid, (pid, path) in seen[c.dir].items():
                other_pid, other_path = seen[other.dir][cid]
                assert path != other_path, f"{cid}: both clusters' containers in {path}"
                assert pid in procs(path) and other_pid not in procs(path)

        # the names carry each cluster's identity (derived from its secret) and the machine's
        for c in (a, b):
            with open(os.path.join(c.agents[0].data_dir, "identity.json")) as f:
                ident = json.load(f)
            with open(c.secret_path) as f:
                assert ident == {"cluster": derive_cluster_id(f.read().strip()), "machine": "m1"}
            assert CLUSTER_ID_RE.match(ident["cluster"])
            cluster[c.dir] = ident["cluster"]
            for server in c.servers:                    # every replica hands out the same id
                status, ans = raw(f"{server.url}/v1/agent/assignments/m1", token=c.agent_token(c.agents[0]))
                assert status == 200 and ans["cluster"] == ident["cluster"]
            assert {p for _, p in seen[c.dir].values()} == {f"/raftctl-{ident['cluster']}/m1/{i}" for i in ids}
            assert cgroups.children(f"/raftctl-{ident['cluster']}/m1") == ids
            assert runc_ids(c) == ids
        assert cluster[a.dir] != cluster[b.dir]

        # an agent of A started on B's data dir is refused before it touches anything there
        refused = subprocess.run(
            [sys.executable, "-m", "raftctl.cli.main", "agent", "--id", "m1", "--data-dir", b.agents[0].data_dir,
             "--runtime", "runc", "--advertise", "127.0.0.9", *[x for u in a.urls for x in ("--server", u)]],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "RAFTCTL_AGENT_TOKEN": a.agent_token(a.agents[0])})
        assert refused.returncode != 0
        assert f"--data-dir: {b.agents[0].data_dir} belongs to cluster {cluster[b.dir]}" in refused.stderr, \
            refused.stderr
        assert f"the control plane is cluster {cluster[a.dir]}" in refused.stderr
        assert containers(b) == seen[b.dir]

        # B's agent killed and started again adopts its containers (same pids) under the kept names
        agent_log = os.path.join(b.agents[0].data_dir, "agent.log")
        b.kill(b.agents[0], signal.SIGKILL)
        b.start_proc(b.agents[0])
        wait_until(lambda: open(agent_log).read().count(f"cluster {cluster[b.dir]}: cgroups under") == 2,
                   timeout=30, what="B's agent started again")
        wait_until(lambda: open(agent_log).read().count("adopting running container") == 2, timeout=30,
                   what="B's containers adopted")
        assert containers(b) == seen[b.dir]

        # deleting the job in A stops A's containers only: B's keep running, unrestarted, healthy and serving
        client_for(a).request("DELETE", "/v1/jobs/web")
        wait_until(lambda: runc_ids(a) == [] and cgroups.children(f"/raftctl-{cluster[a.dir]}/m1") == [],
                   timeout=30, what="A's containers and cgroups gone")
        assert containers(b) == seen[b.dir]
        assert runc_ids(b) == ids and cgroups.children(f"/raftctl-{cluster[b.dir]}/m1") == ids
        assert sorted(healthy(b)) == ids and serving(b) == ids
    finally:
        for c in (a, b):
            c.stop()
    for c in (a, b):
        assert runc_ids(c) == []
    assert not [f"{h}/raftctl-{cid}" for h in cgroups.hierarchies() for cid in cluster.values()
                if os.path.exists(f"{h}/raftctl-{cid}")]         # no empty cgroup left behind either
